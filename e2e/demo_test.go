package e2e

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestDemo runs `edgeward demo` (the whole story: enrollment, three model rollouts, a
// failed canary that pauses its rollout, a tampered device, a runtime update, a device
// booting an unreviewed kernel, the audit log) and checks its outcome in the server's fleet store, independently of what the
// demo printed.
func TestDemo(t *testing.T) {
	need(t)
	dir := filepath.Join(t.TempDir(), "demo")
	var out bytes.Buffer
	cmd := exec.Command(bins.Edgeward, "demo", "--dir", dir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("edgeward demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{"Every step held", "QUARANTINED", "paused", "edgeward audit verify: ok", "agents/edgeward-agent/0.1.0", "boot_policy: boot application 1 (PCR 4)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
	ctx := context.Background()
	st, err := fleet.Open(ctx, filepath.Join(dir, "repo", "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	devs, err := st.Devices(ctx, fleet.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Five devices, and a sixth that booted another boot loader/kernel (a real boot log
	// with GRUB's digest swapped, replayed into its swtpm): quarantined by measured boot.
	if len(devs) != 6 {
		t.Fatalf("%d devices in the fleet; want 6", len(devs))
	}
	quarantined, rogue := 0, 0
	for _, d := range devs {
		if d.Quarantined && strings.Contains(d.QuarantineReason, "boot_policy: boot application 1 (PCR 4)") {
			rogue++
			if d.Slots[artifact.KindModel].Version != "" || d.Verdict != policy.VerdictUntrusted {
				t.Errorf("the device with the unreviewed kernel: verdict %s, model %q; want untrusted with nothing installed", d.Verdict, d.Slots[artifact.KindModel].Version)
			}
			continue
		}
		if d.Slots[artifact.KindModel].Version != "1.1.0" {
			t.Errorf("device %s runs model %q; want 1.1.0", d.ID, d.Slots[artifact.KindModel].Version)
		}
		if d.Boot == nil || len(d.Boot.BootApplications) != 2 {
			t.Errorf("device %s: boot state %+v; want the replayed Ubuntu boot (shim, GRUB)", d.ID, d.Boot)
		}
		if d.Quarantined {
			quarantined++
			if d.Slots[artifact.KindRuntime].Version != "" {
				t.Errorf("quarantined device %s got runtime %s", d.ID, d.Slots[artifact.KindRuntime].Version)
			}
			continue
		}
		if d.Verdict != policy.VerdictTrusted || d.Slots[artifact.KindRuntime].Version != "1.24.3" {
			t.Errorf("device %s: verdict %s, runtime %q; want trusted with runtime 1.24.3", d.ID, d.Verdict, d.Slots[artifact.KindRuntime].Version)
		}
	}
	if quarantined != 1 || rogue != 1 {
		t.Errorf("%d tampered devices and %d with an unreviewed kernel quarantined; want 1 and 1", quarantined, rogue)
	}
	rs, err := st.RolloutState(ctx, "vib-2.0.0")
	if err != nil || rs.Status != policy.StatusPaused {
		t.Errorf("rollout vib-2.0.0: %+v, %v; want paused", rs, err)
	}
	// Completed rollouts show what the devices' probes measured (ONNX Runtime on each
	// device), not "—".
	states, err := st.RolloutStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	completed := 0
	for id, rs := range states {
		if rs.Status != policy.StatusCompleted {
			continue
		}
		completed++
		reps, err := st.Reports(ctx, fleet.ReportFilter{RolloutID: id})
		if err != nil {
			t.Fatal(err)
		}
		k := fleet.ComputeRollout(id, rs.Started, reps)
		if k.MeanAccuracy <= 0 || k.MeanAccuracy > 1 || k.MeanP99Ms <= 0 || k.MeanPeakRSSMB <= 0 {
			t.Errorf("completed rollout %s: mean accuracy %v, p99 %v ms, peak RSS %v MB; want measured figures", id, k.MeanAccuracy, k.MeanP99Ms, k.MeanPeakRSSMB)
		}
	}
	if completed < 3 {
		t.Errorf("%d completed rollouts; want the demo's two models and its runtime", completed)
	}
	reps, err := st.Reports(ctx, fleet.ReportFilter{RolloutID: "vib-2.0.0"})
	if err != nil || len(reps) != 1 || reps[0].Outcome != wire.OutcomeProbeFailed {
		t.Errorf("reports of vib-2.0.0 = %+v, %v; want one probe failure (the canary's)", reps, err)
	}
}
