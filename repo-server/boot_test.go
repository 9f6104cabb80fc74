package reposerver

import (
	"context"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/policy"
)

// The boot applications (PCR 4) of go-attestation's Ubuntu 21.04 boot log: shim, then
// GRUB.
const (
	ubuntuShim = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526"
	ubuntuGrub = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"
)

const bootPolicy = `version: 1
attestation:
  required: true
  max_age: 30m
  boot:
    - hardware: [x86_64]
      boot_applications: [` + ubuntuShim + `, ` + ubuntuGrub + `]
rollouts:
  - id: vib-1.0.0
    target: {kind: model, name: vibration, version: 1.0.0}
    selector: {labels: {line: press}}
    waves: [{percent: 100}]
`

func mustHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestMeasuredBootCheckIn: a device whose TPM's boot PCRs hold a real boot and which
// sends that boot's event log is trusted under a boot policy that allows its boot
// loaders; its boot state is recorded with the verdict. The same device sending a log
// with one event edited, or none, is untrusted, says which PCR, and is quarantined
// with an audit record.
func TestMeasuredBootCheckIn(t *testing.T) {
	f, d := newDeviceFixtureWith(t, bootPolicy)
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	if err := attesttest.ReplayBootLog(context.Background(), d.tpm, log); err != nil {
		t.Fatal(err)
	}

	d.bootLog = log
	resp, err := d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Trusted {
		t.Fatalf("check-in with the genuine boot log = %+v; want trusted", resp)
	}

	// No boot log: the policy requires one.
	d.bootLog = nil
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Trusted || !resp.Quarantined || !strings.Contains(strings.Join(resp.Reasons, " "), "boot_log_missing") {
		t.Fatalf("check-in without a boot log = %+v; want untrusted (boot_log_missing) and quarantined", resp)
	}
	if err := f.store.SetQuarantine(context.Background(), d.id, false, ""); err != nil {
		t.Fatal(err)
	}

	// One PCR 4 event edited (GRUB's digest swapped for another): the log no longer
	// replays to the quoted PCR 4.
	head, events, err := attesttest.SplitBootLog(log)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range events {
		if j := strings.Index(string(e), string(mustHex(t, ubuntuGrub))); j >= 0 {
			events[i] = []byte(strings.Replace(string(e), string(mustHex(t, ubuntuGrub)), string(mustHex(t, ubuntuShim)), 1))
		}
	}
	d.bootLog = attesttest.JoinBootLog(head, events)
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	reasons := strings.Join(resp.Reasons, " ")
	if resp.Trusted || !resp.Quarantined || !strings.Contains(reasons, "boot_replay_mismatch: PCR 4") {
		t.Fatalf("check-in with an edited boot log = %+v; want untrusted (boot_replay_mismatch: PCR 4) and quarantined", resp)
	}
	dev, err := f.store.Device(context.Background(), d.id)
	if err != nil || dev.Verdict != policy.VerdictUntrusted || !dev.Quarantined {
		t.Fatalf("stored device = %+v, %v; want untrusted and quarantined", dev, err)
	}
	kinds := strings.Join(auditKinds(t, f.fixture, d.id), ",")
	if strings.Count(kinds, "device.quarantine") < 2 {
		t.Fatalf("audit records = %s; want a device.quarantine per quarantine", kinds)
	}
}
