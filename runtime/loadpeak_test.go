package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"runtime/debug"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// A probe's peak RSS counts the version's load: loading a 64 MB model holds its bytes
// and the session being built from them at once (241 MB resident at the peak, 2 Dec),
// while its probe alone peaked at 114 MB. Before, the probe reset the kernel's mark
// and reported only its own peak, so a max_rss_mb gate passed a version the device
// had not the memory to load.
func TestProbePeakCountsTheLoad(t *testing.T) {
	if _, err := os.Stat("/proc/self/clear_refs"); err != nil {
		t.Skip("no /proc/self/clear_refs: peak RSS is not measured here")
	}
	r := newTestRuntime(t)
	model := modelgen.WideModel("1.1.0", 4096, 0)
	sizeMB := float64(len(model)) / (1 << 20)
	path := filepath.Join(t.TempDir(), "wide.onnx")
	if err := os.WriteFile(path, model, 0o600); err != nil {
		t.Fatal(err)
	}
	model = nil
	debug.FreeOSMemory()
	resetPeakRSS()
	before := peakRSSMB()
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "wide", Version: "1.0.0", Path: path, Default: true}); err != nil {
		t.Fatal(err)
	}
	ps := vibrationProbeSet(t)
	// The model's bytes and its session's copy were resident together: at least
	// twice the model above what the process held before the load.
	budget := before + 1.5*sizeMB
	rep, err := r.Probe(context.Background(), "wide", "1.0.0", ps, &artifact.Gates{MaxRSSMB: budget})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("model %.1f MB; resident before the load %.1f MB; probe: peak %.1f MB, load peak %.1f MB", sizeMB, before, rep.PeakRSSMB, rep.LoadPeakRSSMB)
	if rep.PeakRSSMB < budget || rep.Pass {
		t.Errorf("probe peak RSS %.1f MB, pass %v under max_rss_mb %.1f; want the load's peak (over %.1f MB) counted and the gate failed",
			rep.PeakRSSMB, rep.Pass, budget, budget)
	}
	if rep.LoadPeakRSSMB != rep.PeakRSSMB {
		t.Errorf("load peak %.1f MB, probe peak %.1f MB; want the load's the higher", rep.LoadPeakRSSMB, rep.PeakRSSMB)
	}
}

// vibrationProbeSet is the probe set of the vibration model 1.1.0, which every
// modelgen.WideModel classifies like.
func vibrationProbeSet(t testing.TB) *runtimeapi.ProbeSet {
	t.Helper()
	b, err := modelgen.ProbeSet("1.1.0")
	if err != nil {
		t.Fatal(err)
	}
	var ps runtimeapi.ProbeSet
	if err := json.Unmarshal(b, &ps); err != nil {
		t.Fatal(err)
	}
	return &ps
}

// A load that waits for a probe to end (the two measure peak RSS one at a time) gives
// up with its context rather than waiting on.
func TestLoadWaitingForAProbeEndsWithItsContext(t *testing.T) {
	r := newTestRuntime(t)
	release, err := r.measure(context.Background()) // a probe under way
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "wide.onnx")
	if err := os.WriteFile(path, modelgen.WideModel("1.1.0", 64, 0), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req := runtimeapi.LoadRequest{Name: "wide", Version: "1.0.0", Path: path, Default: true}
	if _, err := r.Load(ctx, req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("load while a probe runs, its context ending = %v; want DeadlineExceeded", err)
	}
	release()
	if _, err := r.Load(context.Background(), req); err != nil {
		t.Fatalf("load once the probe ended: %v", err)
	}
}
