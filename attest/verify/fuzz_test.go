package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/reference"
)

// FuzzVerify: any evidence a device can send decodes and verifies without
// panicking, and evidence is trusted only if it is the genuine quote, AK
// certificate and log (extra chain certificates aside).
func FuzzVerify(f *testing.F) {
	ca, maker := newCA(f)
	d := enrolledDevice(f, ca, maker)
	nonce := bytes.Repeat([]byte{3}, 32)
	genuine := d.evidence(f, nonce)
	d.tpm.Close()
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)}}
	now := time.Now()
	if v := verify.Verify(policy, genuine, nonce, now); !v.Trusted {
		f.Fatalf("genuine evidence not trusted: %v", v.Reasons)
	}
	seed, _ := json.Marshal(genuine)
	f.Add(seed)
	f.Add([]byte(`{"ak_cert":"MAA=","quote":{"attest":"/1RDRw==","signature":"AAA=","pcrs":{"16":"AA=="}},"log":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var ev verify.Evidence
		if err := json.Unmarshal(b, &ev); err != nil {
			return
		}
		v := verify.Verify(policy, ev, nonce, now)
		if !v.Trusted {
			if len(v.Reasons) == 0 {
				t.Fatal("untrusted verdict without reasons")
			}
			return
		}
		if !bytes.Equal(ev.AKCert, genuine.AKCert) || !bytes.Equal(ev.Quote.Attest, genuine.Quote.Attest) ||
			!bytes.Equal(ev.Quote.Signature, genuine.Quote.Signature) || !slices.Equal(ev.Log, genuine.Log) {
			t.Fatalf("mutated evidence trusted: %s", b)
		}
	})
}

// BenchmarkVerify measures the server's cost per check-in quote.
func BenchmarkVerify(b *testing.B) {
	ca, maker := newCA(b)
	d := enrolledDevice(b, ca, maker)
	nonce := bytes.Repeat([]byte{3}, 32)
	ev := d.evidence(b, nonce)
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)}}
	now := time.Now()
	for b.Loop() {
		if v := verify.Verify(policy, ev, nonce, now); !v.Trusted {
			b.Fatal(v.Reasons)
		}
	}
}

// BenchmarkVerifyBootIMA is BenchmarkVerify with measured boot and runtime integrity:
// a real boot event log (Ubuntu 21.04, 105 events) replayed against PCRs 0–7 under a
// boot policy, and a 1,000-entry IMA list replayed against PCR 10 under an enforcing
// runtime policy that allows every entry (the whole list is read and judged).
func BenchmarkVerifyBootIMA(b *testing.B) {
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		b.Fatal(err)
	}
	ca, maker := newCA(b)
	d := enrolledDevice(b, ca, maker)
	ctx := context.Background()
	if err := attesttest.ReplayBootLog(ctx, d.tpm, log); err != nil {
		b.Fatal(err)
	}
	rt := reference.Runtime{Enforce: true}
	pcrs, err := d.tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if err != nil {
		b.Fatal(err)
	}
	agg, _ := ima.BootAggregate(pcrs, 9)
	list := []ima.Entry{ima.NG("boot_aggregate", agg)}
	if err := d.tpm.Extend(ctx, ima.PCR, list[0].ExtendDigest()); err != nil {
		b.Fatal(err)
	}
	for i := range 999 {
		sum := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		e := ima.NG(fmt.Sprintf("/usr/lib/x86_64-linux-gnu/lib%d.so", i), sum)
		if err := d.tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			b.Fatal(err)
		}
		list = append(list, e)
		rt.Allowed = append(rt.Allowed, e.DigestHex())
	}
	nonce := bytes.Repeat([]byte{3}, 32)
	evp, err := d.tpm.Evidence(ctx, d.akCert, nonce, imaPCRs, slices.Clone(d.log))
	if err != nil {
		b.Fatal(err)
	}
	ev := *evp
	ev.BootLog, ev.IMALog = log, ima.Marshal(list)
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)},
		Boot: &reference.Boot{BootApplications: []string{
			"6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526", "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"}},
		Runtime: &rt}
	now := time.Now()
	for b.Loop() {
		if v := verify.Verify(policy, ev, nonce, now); !v.Trusted {
			b.Fatal(v.Reasons)
		}
	}
}
