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

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
)

// The boot applications (PCR 4) of go-attestation's Ubuntu 21.04 boot log.
const (
	ubuntuShim = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526"
	ubuntuGrub = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"
)

// TestMeasuredBootQuarantine: three devices (swtpm + edgeward-agent processes) boot:
// their swtpm's PCRs 0–7 are extended with a real boot event log before the agent
// starts, as firmware would, and their PCR 10 with an IMA list (boot_aggregate of
// those PCRs, then the agent and runtime binaries), as the kernel would; the agent
// sends both (--boot-log, --ima-log) with every check-in. The trusted agent and
// runtime builds are the lab's real binaries published as agent targets
// (agents/edgeward-agent/…, signed by the runtimes role), not a list in the policy.
// device-1 boots the real Ubuntu 21.04 log and runs the published builds: trusted.
// device-2 boots the same log with another boot loader/kernel in place of GRUB:
// quarantined, the reason naming PCR 4 and the digest. device-3 boots genuinely but
// runs a modified agent: quarantined, the reason naming the agent's file.
func TestMeasuredBootQuarantine(t *testing.T) {
	f := newFleet(t, 3)
	good, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err != nil {
		t.Fatal(err)
	}
	otherKernel := sha256.Sum256([]byte("a kernel nobody reviewed"))
	bad, err := lab.BootApplicationSwapped(good, ubuntuGrub, otherKernel)
	if err != nil {
		t.Fatal(err)
	}
	pol := fmt.Sprintf("version: 1\nattestation:\n  required: true\n  max_age: 5m\n  boot:\n    - boot_applications: [%s, %s]\n  runtime:\n    enforce: true\n", ubuntuShim, ubuntuGrub)
	if _, err := policy.Parse(policy.File{Name: "00-attestation.yaml", Data: []byte(pol)}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.repo.PolicyDir, "00-attestation.yaml"), []byte(pol), 0o644); err != nil {
		t.Fatal(err)
	}
	published, err := f.repo.PublishAgent(f.ctx, "0.1.0", bins.Agent, bins.Runtime)
	if err != nil {
		t.Fatal(err)
	}
	sums := map[string]string{}
	for _, res := range published {
		sums[filepath.Base(filepath.Dir(res.Path))] = res.SHA256
	}
	agentSum, err := artifact.FileSHA256(bins.Agent)
	if err != nil || agentSum != sums[artifact.AgentBinary] {
		t.Fatalf("published agent target %v; want the agent binary's digest %s (%v)", sums, agentSum, err)
	}
	b, err := os.ReadFile(bins.Agent)
	if err != nil {
		t.Fatal(err)
	}
	modified := sha256.Sum256(append(b, 0))
	for i, dev := range []struct {
		boot  []byte
		agent string
	}{{good, agentSum}, {bad, agentSum}, {good, hex.EncodeToString(modified[:])}} {
		d := f.devs[i]
		if err := d.Boot(f.ctx, dev.boot); err != nil {
			t.Fatal(err)
		}
		if err := d.RunIMA(f.ctx, [][2]string{{"/usr/bin/edgeward-agent", dev.agent}, {"/usr/bin/edgeward-runtime", sums[artifact.RuntimeBinary]}}); err != nil {
			t.Fatal(err)
		}
	}
	f.startAgents()
	err = lab.WaitFor(f.ctx, wait, "device-1 trusted, device-2 quarantined for its kernel, device-3 for its agent", func(ctx context.Context) (bool, string, error) {
		fds, err := f.srv.Devices(ctx, f.devs)
		if err != nil {
			return false, "", err
		}
		d1, d2, d3 := fds["device-1"], fds["device-2"], fds["device-3"]
		ok := d1.Verdict == policy.VerdictTrusted && !d1.Quarantined &&
			d2.Quarantined && strings.Contains(d2.QuarantineReason, "boot_policy: boot application 1 (PCR 4) "+hex.EncodeToString(otherKernel[:])) &&
			d3.Quarantined && strings.Contains(d3.QuarantineReason, "ima_untrusted_file") && strings.Contains(d3.QuarantineReason, "/usr/bin/edgeward-agent has digest "+hex.EncodeToString(modified[:]))
		return ok, fmt.Sprintf("device-1 %s quarantined=%v (%s); device-2 %s quarantined=%v (%s); device-3 %s quarantined=%v (%s)",
			d1.Verdict, d1.Quarantined, d1.QuarantineReason, d2.Verdict, d2.Quarantined, d2.QuarantineReason, d3.Verdict, d3.Quarantined, d3.QuarantineReason), nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
