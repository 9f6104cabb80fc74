package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	goattest "github.com/google/go-attestation/attest"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
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
