package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
)

// TestBootReplayMismatchSaysWhere: when a boot log does not replay, the reason is what
// an operator needs to find the edit: how many of the log's events extend the PCR, what
// they replay to, and what the TPM quoted. (Issue 21: every part of this detail could
// be wrong without a test noticing.)
func TestBootReplayMismatchSaysWhere(t *testing.T) {
	d, log, policy := bootDevice(t, attesttest.BootLogUbuntu)
	head, events, err := attesttest.SplitBootLog(log)
	if err != nil {
		t.Fatal(err)
	}
	el, err := goattest.ParseEventLog(log)
	if err != nil {
		t.Fatal(err)
	}
	parsed := el.Events(goattest.HashSHA256)
	var pcr4 []int // raw events extending PCR 4 (none of them EV_NO_ACTION)
	for i, e := range events {
		if attesttest.BootLogEventPCR(e) == 4 {
			if attesttest.BootLogEventType(e) == 3 {
				t.Fatalf("event %d: EV_NO_ACTION in PCR 4; the test counts every PCR 4 event", i)
			}
			pcr4 = append(pcr4, i)
		}
	}
	if len(pcr4) < 2 || len(parsed) != len(events) {
		t.Fatalf("%d PCR 4 events, %d parsed of %d; the test needs two and one parsed event per raw one", len(pcr4), len(parsed), len(events))
	}
	// Flip one bit of the last PCR 4 event's SHA-256 digest.
	last := pcr4[len(pcr4)-1]
	edited := make([][]byte, len(events))
	for i, e := range events {
		edited[i] = slices.Clone(e)
	}
	at := bytes.Index(edited[last], parsed[last].Digest)
	edited[last][at] ^= 1
	// What the edited log replays PCR 4 to, computed from the genuine digests.
	var want [32]byte
	for _, i := range pcr4 {
		dg := [32]byte(parsed[i].Digest)
		if i == last {
			dg[0] ^= 1
		}
		want = sha256.Sum256(append(want[:], dg[:]...))
	}
	nonce := bytes.Repeat([]byte{6}, 32)
	ev := d.bootEvidence(t, nonce, attesttest.JoinBootLog(head, edited))
	v := verify.Verify(policy, ev, nonce, time.Now())
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.BootReplayMismatch}) {
		t.Fatalf("Verify(one PCR 4 digest edited) = %v; want one %s", v.Reasons, verify.BootReplayMismatch)
	}
	wantDetail := fmt.Sprintf("PCR 4: the log's %d events replay to %x, the TPM quoted %x", len(pcr4), want, ev.Quote.PCRs[4])
	if v.Reasons[0].Detail != wantDetail {
		t.Errorf("reason = %q\nwant     %q", v.Reasons[0].Detail, wantDetail)
	}
}

// TestBootLogSizeLimit: a boot log of exactly wire.MaxBootLogBytes is read and verified
// (the agent sends logs up to that size); one byte more is refused, unread, with a
// reason that names the limit. The padding is an event of PCR 9, which boot loaders
// use for the files they read and which the boot verdict does not replay.
func TestBootLogSizeLimit(t *testing.T) {
	boot := []attesttest.BootEvent{
		{PCR: 4, Type: attesttest.EvEFIAction, Data: []byte("Calling EFI Application from Boot Option")},
	}
	for pcr := 0; pcr < 8; pcr++ {
		boot = append(boot, attesttest.BootEvent{PCR: pcr, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}})
	}
	boot = append(boot, attesttest.BootEvent{PCR: 4, Type: attesttest.EvBootApplication, Data: []byte("vmlinuz")})
	logOf := func(pad int) []byte {
		return attesttest.BuildBootLog(append(slices.Clone(boot), attesttest.BootEvent{PCR: 9, Type: 0x0D /* EV_IPL */, Data: make([]byte, pad)}))
	}
	pad := wire.MaxBootLogBytes - len(logOf(0))
	atLimit, over := logOf(pad), logOf(pad+1)
	if len(atLimit) != wire.MaxBootLogBytes || len(over) != wire.MaxBootLogBytes+1 {
		t.Fatalf("logs of %d and %d bytes; want %d and one more", len(atLimit), len(over), wire.MaxBootLogBytes)
	}

	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, atLimit); err != nil {
		t.Fatal(err)
	}
	policy := verify.Policy{Roots: ca.Roots(), PermanentIdentifier: d.akCert.PermanentIdentifier}
	nonce := bytes.Repeat([]byte{8}, 32)
	v := verify.Verify(policy, d.bootEvidence(t, nonce, atLimit), nonce, time.Now())
	if !v.Trusted || v.Boot == nil || len(v.Boot.BootApplications) != 1 {
		t.Errorf("Verify(boot log of exactly the limit) = %v, boot %+v; want trusted, one boot application", v.Reasons, v.Boot)
	}
	v = verify.Verify(policy, d.bootEvidence(t, nonce, over), nonce, time.Now())
	limit := fmt.Sprintf("%d bytes, limit %d", len(over), wire.MaxBootLogBytes)
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.BootLogMalformed}) || !strings.Contains(v.Reasons[0].Detail, limit) || v.Boot != nil {
		t.Errorf("Verify(boot log one byte over the limit) = %v, boot %+v; want only %s naming %q", v.Reasons, v.Boot, verify.BootLogMalformed, limit)
	}
}

// TestBootLogSpecIDBounded: a boot log whose Spec ID event lists more hash algorithms
// than exist, one of them twice, or a registered one with another digest size is
// refused before it is parsed. go-attestation matches every digest against every
// algorithm listed, allocating for each match: a 1 MiB log listing SHA-256 131,070
// times cost 97 s of CPU per check-in and was trusted (found from outside, 2 Dec).
// The genuine log, whose Spec ID lists SHA-256 once, is trusted.
func TestBootLogSpecIDBounded(t *testing.T) {
	boot := []attesttest.BootEvent{{PCR: 4, Type: attesttest.EvEFIAction, Data: []byte("Calling EFI Application from Boot Option")}}
	for pcr := 0; pcr < 8; pcr++ {
		boot = append(boot, attesttest.BootEvent{PCR: pcr, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}})
	}
	genuine := attesttest.BuildBootLog(boot)
	head, events, err := attesttest.SplitBootLog(genuine)
	if err != nil {
		t.Fatal(err)
	}
	// withAlgs is the genuine log with its Spec ID event listing algs (ID, size pairs)
	// instead of its one (SHA-256, 32).
	withAlgs := func(algs ...[2]uint16) []byte {
		const pre = 4 + 4 + 20 + 4
		spec := slices.Clone(head[pre:])
		var list []byte
		for _, a := range algs {
			list = binary.LittleEndian.AppendUint16(list, a[0])
			list = binary.LittleEndian.AppendUint16(list, a[1])
		}
		spec = slices.Concat(spec[:24], binary.LittleEndian.AppendUint32(nil, uint32(len(algs))), list, spec[32:])
		h := slices.Concat(head[:28], binary.LittleEndian.AppendUint32(nil, uint32(len(spec))), spec)
		return attesttest.JoinBootLog(h, events)
	}
	if got := withAlgs([2]uint16{0x000B, 32}); !bytes.Equal(got, genuine) {
		t.Fatal("withAlgs(SHA-256) does not rebuild the genuine log: the test shows nothing")
	}
	many := make([][2]uint16, 131_070)
	for i := range many {
		many[i] = [2]uint16{0x000B, 32}
	}
	distinct := [][2]uint16{{0x0004, 20}, {0x000B, 32}, {0x000C, 48}, {0x000D, 64}, {0x0012, 32}, {0x0027, 32}, {0x0028, 48}, {0x0029, 64}, {0x1234, 32}}

	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, genuine); err != nil {
		t.Fatal(err)
	}
	policy := verify.Policy{Roots: ca.Roots(), PermanentIdentifier: d.akCert.PermanentIdentifier}
	nonce := bytes.Repeat([]byte{9}, 32)
	if v := verify.Verify(policy, d.bootEvidence(t, nonce, genuine), nonce, time.Now()); !v.Trusted {
		t.Fatalf("Verify(genuine) = %v", v.Reasons)
	}
	for _, tc := range []struct {
		name   string
		log    []byte
		detail string
	}{
		{"SHA-256 listed 131,070 times", withAlgs(many...), "131070 hash algorithms"},
		{"SHA-256 listed twice", withAlgs([2]uint16{0x000B, 32}, [2]uint16{0x000B, 32}), "twice"},
		{"nine algorithms", withAlgs(distinct...), "9 hash algorithms"},
		{"SHA-256 with 1-byte digests", withAlgs([2]uint16{0x000B, 1}), "1-byte digests"},
		{"no algorithm", withAlgs(), "0 hash algorithms"},
	} {
		v := verify.Verify(policy, d.bootEvidence(t, nonce, tc.log), nonce, time.Now())
		if got := codes(v); !slices.Equal(got, []verify.Code{verify.BootLogMalformed}) || !strings.Contains(v.Reasons[0].Detail, tc.detail) {
			t.Errorf("%s: Verify = %v; want only %s naming %q", tc.name, v.Reasons, verify.BootLogMalformed, tc.detail)
		}
	}
}

// TestBootApplicationsKeptBounded: a boot log of 100 boot applications keeps the first
// reference.MaxBootApplications in the verdict's boot state (which goes into the audit
// log and the device's row at every check-in) and counts the rest; every one is still
// checked against the allow-list. 20,000 of them put 1.3 MB into the audit log at every
// check-in (found from outside, 2 Dec).
func TestBootApplicationsKeptBounded(t *testing.T) {
	var boot []attesttest.BootEvent
	for pcr := 0; pcr < 8; pcr++ {
		boot = append(boot, attesttest.BootEvent{PCR: pcr, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}})
	}
	var apps []string
	for i := range 100 {
		data := []byte(fmt.Sprintf("app %d", i))
		boot = append(boot, attesttest.BootEvent{PCR: 4, Type: attesttest.EvBootApplication, Data: data})
		sum := sha256.Sum256(data)
		apps = append(apps, hex.EncodeToString(sum[:]))
	}
	log := attesttest.BuildBootLog(boot)
	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, log); err != nil {
		t.Fatal(err)
	}
	policy := verify.Policy{Roots: ca.Roots(), PermanentIdentifier: d.akCert.PermanentIdentifier}
	nonce := bytes.Repeat([]byte{7}, 32)
	v := verify.Verify(policy, d.bootEvidence(t, nonce, log), nonce, time.Now())
	if !v.Trusted || v.Boot == nil || len(v.Boot.BootApplications) != reference.MaxBootApplications || v.Boot.MoreBootApplications != 100-reference.MaxBootApplications {
		t.Fatalf("Verify = %v, boot %d applications kept, %d more; want trusted, %d kept, %d more", v.Reasons, len(v.Boot.BootApplications), v.Boot.MoreBootApplications, reference.MaxBootApplications, 100-reference.MaxBootApplications)
	}
	// The last one, not kept, is still judged.
	policy.Boot = &reference.Boot{BootApplications: apps[:99]}
	v = verify.Verify(policy, d.bootEvidence(t, nonce, log), nonce, time.Now())
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.BootPolicyViolated}) || !strings.Contains(v.Reasons[0].Detail, apps[99]) {
		t.Errorf("Verify with the 100th not allowed = %v; want boot_policy naming it", v.Reasons)
	}
}
