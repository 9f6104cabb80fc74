package verify_test

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
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
