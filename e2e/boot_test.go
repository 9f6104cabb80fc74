package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
)

// TestMeasuredBootQuarantine: two devices (swtpm + edgeward-agent processes) boot: their
// swtpm's PCRs 0–7 are extended with a boot event log before the agent starts, as
// firmware would, and the agent sends that log (--boot-log) with every check-in. The
// first boots the real Ubuntu 21.04 log, whose boot loaders the policy allows; the
// second boots the same shim and another "kernel" (a boot application digest no one
// allowed). The first is trusted; the second is quarantined, the reason naming the
// digest.
func TestMeasuredBootQuarantine(t *testing.T) {
	f := newFleet(t, 2)
	good, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	const shim = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526"
	const grub = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"
	shimSum, _ := hex.DecodeString(shim)
	otherKernel := sha256.Sum256([]byte("a kernel nobody reviewed"))
	bad := attesttest.BuildBootLog([]attesttest.BootEvent{
		{PCR: 4, Type: attesttest.EvEFIAction, Data: []byte("Calling EFI Application from Boot Option")},
		{PCR: 0, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}},
		{PCR: 4, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}},
		{PCR: 7, Type: attesttest.EvSeparator, Data: []byte{0, 0, 0, 0}},
		{PCR: 4, Type: attesttest.EvBootApplication, Data: []byte("shim"), Digest: [32]byte(shimSum)},
		{PCR: 4, Type: attesttest.EvBootApplication, Data: []byte("vmlinuz"), Digest: otherKernel},
	})
	pol := fmt.Sprintf("version: 1\nattestation:\n  required: true\n  max_age: 5m\n  boot:\n    - boot_applications: [%s, %s]\n", shim, grub)
	if _, err := policy.Parse(policy.File{Name: "00-attestation.yaml", Data: []byte(pol)}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.repo.PolicyDir, "00-attestation.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	for i, log := range [][]byte{good, bad} {
		d := f.devs[i]
		tpm, err := attest.Open(f.ctx, d.TPMURL())
		if err != nil {
			t.Fatal(err)
		}
		err = attesttest.ReplayBootLog(f.ctx, tpm, log)
		tpm.Close() // swtpm serves one connection: the agent's, from now on
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(f.lab.Dir, d.Name+"-binary_bios_measurements")
		if err := os.WriteFile(path, log, 0o600); err != nil {
			t.Fatal(err)
		}
		d.AgentArgs = append(d.AgentArgs, "--boot-log", path)
	}
	f.startAgents()
	err = lab.WaitFor(f.ctx, wait, "device-1 trusted and device-2 quarantined for its kernel", func(ctx context.Context) (bool, string, error) {
		fds, err := f.srv.Devices(ctx, f.devs)
		if err != nil {
			return false, "", err
		}
		d1, d2 := fds["device-1"], fds["device-2"]
		ok := d1.Verdict == policy.VerdictTrusted && !d1.Quarantined &&
			d2.Quarantined && strings.Contains(d2.QuarantineReason, "boot_policy") && strings.Contains(d2.QuarantineReason, hex.EncodeToString(otherKernel[:]))
		return ok, fmt.Sprintf("device-1 %s quarantined=%v (%s); device-2 %s quarantined=%v (%s)", d1.Verdict, d1.Quarantined, d1.QuarantineReason, d2.Verdict, d2.Quarantined, d2.QuarantineReason), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
