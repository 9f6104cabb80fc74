package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/reference"
)

// imaDevice is a booted simulator device (kernelBootedDevice) and a helper that runs a
// file on it the way the kernel does: the file is measured into PCR 10 and appended to
// the IMA list. boot is the kernel's first entry, boot_aggregate; the kernel has not
// measured it yet.
func imaDevice(t *testing.T) (d *device, policy verify.Policy, run func(path string) string, list *[]ima.Entry, boot ima.Entry) {
	t.Helper()
	ca, maker := newCA(t)
	d, agg9 := kernelBootedDevice(t, ca, maker)
	list = new([]ima.Entry)
	extend := func(e ima.Entry) {
		t.Helper()
		if err := d.tpm.Extend(context.Background(), ima.PCR, e.ExtendDigest()); err != nil {
			t.Fatal(err)
		}
		*list = append(*list, e)
	}
	run = func(path string) string {
		t.Helper()
		sum := sha256.Sum256([]byte("the contents of " + path))
		extend(ima.NG(path, sum))
		return hex.EncodeToString(sum[:])
	}
	return d, verify.Policy{Roots: ca.Roots(), PermanentIdentifier: d.akCert.PermanentIdentifier}, run, list, ng(t, "boot_aggregate", agg9)
}

// measureBoot has the kernel write its first entry, boot_aggregate, as it does at boot.
func (d *device) measureBoot(t *testing.T, list *[]ima.Entry, boot ima.Entry) {
	t.Helper()
	if err := d.tpm.Extend(context.Background(), ima.PCR, boot.ExtendDigest()); err != nil {
		t.Fatal(err)
	}
	*list = append(*list, boot)
}

func (d *device) imaEvidence(t *testing.T, nonce []byte, list []ima.Entry) verify.Evidence {
	t.Helper()
	ev, err := d.tpm.Evidence(context.Background(), d.akCert, nonce, imaPCRs, slices.Clone(d.log))
	if err != nil {
		t.Fatal(err)
	}
	ev.IMALog = ima.Marshal(list)
	return *ev
}

// TestIMAListReadAfterAQuoteOfNothing: the device quoted PCR 10 before the kernel had
// measured anything (PCR 10 still zero) and read the list after. The quote covers none
// of the list: nothing in it is read or judged, not even an entry that could not be
// IMA's, and a policy that requires the agent says the agent is not among the 0 covered
// entries (not that the list fails to replay).
func TestIMAListReadAfterAQuoteOfNothing(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	nonce := bytes.Repeat([]byte{4}, 32)
	ev, err := d.tpm.Evidence(context.Background(), d.akCert, nonce, imaPCRs, slices.Clone(d.log))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ev.Quote.PCRs[ima.PCR], make([]byte, 32)) {
		t.Fatalf("PCR 10 of a fresh simulator = %x; the test needs it zero", ev.Quote.PCRs[ima.PCR])
	}
	d.measureBoot(t, list, boot) // measured after the quote, as everything below
	run("/usr/lib/x86_64-linux-gnu/libc.so.6")
	later := ima.NG("/usr/bin/not-ima", sha256.Sum256([]byte("x")))
	later.PCR = 11
	ev.IMALog = ima.Marshal(append(slices.Clone(*list), later))

	v := verify.Verify(policy, *ev, nonce, time.Now())
	if !v.Trusted || v.Runtime == nil || v.Runtime.Entries != 0 {
		t.Errorf("Verify(list entirely after the quote) = %v, runtime %+v; want trusted, 0 entries covered", v.Reasons, v.Runtime)
	}
	policy.Runtime = &reference.Runtime{Agent: []string{strings.Repeat("ab", 32)}}
	v = verify.Verify(policy, *ev, nonce, time.Now())
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.IMAAgentNotMeasure}) || !strings.Contains(v.Reasons[0].Detail, "the 0 entries") {
		t.Errorf("Verify(agent required, list entirely after the quote) = %v; want only %s for the 0 covered entries", v.Reasons, verify.IMAAgentNotMeasure)
	}
}

// TestIMAPolicyWithoutAgentBuilds: a runtime policy that lists no agent builds does not
// require an agent in the list (a fleet that pins only its libraries); one that lists
// them does.
func TestIMAPolicyWithoutAgentBuilds(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	d.measureBoot(t, list, boot)
	libc := run("/usr/lib/x86_64-linux-gnu/libc.so.6")
	nonce := bytes.Repeat([]byte{2}, 32)
	ev := d.imaEvidence(t, nonce, *list)
	policy.Runtime = &reference.Runtime{Allowed: []string{libc}, Enforce: true}
	if v := verify.Verify(policy, ev, nonce, time.Now()); !v.Trusted || v.Runtime == nil || v.Runtime.Entries != 2 {
		t.Errorf("Verify(no agent builds listed, no agent ran) = %v, runtime %+v; want trusted, 2 entries", v.Reasons, v.Runtime)
	}
	policy.Runtime.Agent = []string{strings.Repeat("ab", 32)}
	v := verify.Verify(policy, ev, nonce, time.Now())
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.IMAAgentNotMeasure}) {
		t.Errorf("Verify(agent builds listed, no agent ran) = %v; want only %s", v.Reasons, verify.IMAAgentNotMeasure)
	}
}

// TestIMAUnknownFilesAreCapped: in audit mode a device that ran many files the policy
// does not know is trusted, and its verdict lists the first 100 of them, in the order
// they ran, so that a verdict stays small.
func TestIMAUnknownFilesAreCapped(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	d.measureBoot(t, list, boot)
	var unknown []string
	for i := range 103 {
		p := fmt.Sprintf("/usr/bin/tool-%03d", i)
		unknown = append(unknown, p+" "+run(p))
	}
	policy.Runtime = &reference.Runtime{} // audit: report, do not refuse
	nonce := bytes.Repeat([]byte{1}, 32)
	v := verify.Verify(policy, d.imaEvidence(t, nonce, *list), nonce, time.Now())
	if !v.Trusted || v.Runtime == nil {
		t.Fatalf("Verify(audit mode, 103 unknown files) = %v, runtime %+v; want trusted", v.Reasons, v.Runtime)
	}
	if v.Runtime.Entries != 104 || !slices.Equal(v.Runtime.Unknown, unknown[:100]) {
		t.Errorf("runtime state: %d entries, %d unknown (first %q, last %q); want 104 entries and the first 100 unknown files",
			v.Runtime.Entries, len(v.Runtime.Unknown), v.Runtime.Unknown[0], v.Runtime.Unknown[len(v.Runtime.Unknown)-1])
	}
}

// TestIMABootAggregateInImaSig: a kernel booted with ima_template=ima-sig writes its
// first entry, boot_aggregate, in that template too; it is the same boot_aggregate and
// the list is trusted.
func TestIMABootAggregateInImaSig(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	d.measureBoot(t, list, ima.Sig("boot_aggregate", [32]byte(boot.Digest), nil))
	libc := run("/usr/lib/x86_64-linux-gnu/libc.so.6")
	policy.Runtime = &reference.Runtime{Allowed: []string{libc}, Enforce: true}
	nonce := bytes.Repeat([]byte{6}, 32)
	if v := verify.Verify(policy, d.imaEvidence(t, nonce, *list), nonce, time.Now()); !v.Trusted || v.Runtime == nil || v.Runtime.Entries != 2 {
		t.Errorf("Verify(boot_aggregate in ima-sig) = %v, runtime %+v; want trusted, 2 entries", v.Reasons, v.Runtime)
	}
}

// TestIMARuntimeSlotNotLoadedSaysWhat: when the runtime slot's library is not among
// those the device loaded, the reason counts the ONNX Runtime libraries it did load
// and the entries the quote covers, which is what an operator reads to tell "another
// build" from "none at all".
func TestIMARuntimeSlotNotLoadedSaysWhat(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	d.measureBoot(t, list, boot)
	old := run("/var/lib/edgeward/slots/runtime/a/libonnxruntime.so.1.23.2")
	other := run("/opt/onnxruntime/lib/libonnxruntime.so.1")
	policy.Runtime = &reference.Runtime{} // audit
	policy.RuntimeLibraries = []string{old, other}
	policy.RuntimeSlot = strings.Repeat("ef", 32)
	nonce := bytes.Repeat([]byte{7}, 32)
	v := verify.Verify(policy, d.imaEvidence(t, nonce, *list), nonce, time.Now())
	want := "is not among the 2 ONNX Runtime libraries in the 3 entries the quote covers"
	if got := codes(v); !slices.Equal(got, []verify.Code{verify.IMARuntimeNotLoaded}) || !strings.Contains(v.Reasons[0].Detail, want) {
		t.Errorf("Verify(slot library not loaded, 2 others) = %v; want only %s saying %q", v.Reasons, verify.IMARuntimeNotLoaded, want)
	}
}

// TestIMAReasonsAndPathsAreBounded: a device chooses its list, so what a verdict repeats
// of it is bounded. In enforce mode 150 files not allowed give 64 reasons, the last
// saying how many more there were, by code (before: one reason each, 20,900 of them a
// 2.6 MB answer and audit record at every check-in); a path of 4 KB is listed cut, with
// its length (before: 100 such paths made a 410 KB record for a trusted device).
func TestIMAReasonsAndPathsAreBounded(t *testing.T) {
	d, policy, run, list, boot := imaDevice(t)
	d.measureBoot(t, list, boot)
	long := "/opt/" + strings.Repeat("x", 4000)
	run(long)
	for i := range 149 {
		run(fmt.Sprintf("/usr/bin/tool-%03d", i))
	}
	nonce := bytes.Repeat([]byte{5}, 32)
	ev := d.imaEvidence(t, nonce, *list)
	policy.Runtime = &reference.Runtime{Enforce: true}
	v := verify.Verify(policy, ev, nonce, time.Now())
	if v.Trusted || len(v.Reasons) != 64 {
		t.Fatalf("Verify(enforce, 150 files not allowed) = trusted %v, %d reasons; want untrusted, 64", v.Trusted, len(v.Reasons))
	}
	last := v.Reasons[63]
	if last.Code != verify.IMAUntrustedFile || last.Detail != "87 more reasons not listed: ima_untrusted_file ×87" {
		t.Errorf("the last reason = %v; want the 87 more counted", last)
	}
	first := v.Reasons[0].Detail
	if len(first) > 512 || !strings.Contains(first, "…(4005 bytes)") {
		t.Errorf("the long path's reason (%d bytes) = %.120q…; want it cut, with its length", len(first), first)
	}
	policy.Runtime = &reference.Runtime{} // audit mode: listed as unknown, cut too
	v = verify.Verify(policy, ev, nonce, time.Now())
	if !v.Trusted || v.Runtime == nil || len(v.Runtime.Unknown) != 100 || len(v.Runtime.Unknown[0]) > 512 || !strings.Contains(v.Runtime.Unknown[0], "…(4005 bytes)") {
		t.Errorf("audit mode: trusted %v, runtime %+v; want trusted, 100 unknown, the long path cut", v.Trusted, v.Runtime != nil)
	}
}
