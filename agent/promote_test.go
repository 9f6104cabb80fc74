package agent

import (
	"context"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestCommittedRuntimeStartsAfresh: when a runtime's commit finds no passed trial
// process to switch traffic to (the agent restarted since the trial, or a retry of
// Committed after a failed switch), or one that cannot take traffic, the committed
// runtime starts afresh from its slot with the committed model, measured; the process
// that could not take traffic is stopped, not left running held. Before, Committed
// failed on every retry ("committed without a passed trial process") and a process
// whose switch failed stayed behind.
func TestCommittedRuntimeStartsAfresh(t *testing.T) {
	lib := ortLibrary(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	libBytes, err := os.ReadFile(lib)
	if err != nil {
		t.Fatal(err)
	}
	model, err := modelgen.Model("1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	r := tuftest.New(t)
	mp := artifact.TargetPath(artifact.KindModel, "vibration-anomaly", "1.0.0", ".onnx")
	r.AddTarget(mp, model, artifact.Meta{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: "1.0.0", Format: "onnx"})
	rp := artifact.TargetPath(artifact.KindRuntime, "onnxruntime", "1.24.3", ".so")
	r.AddTarget(rp, libBytes, artifact.Meta{Kind: artifact.KindRuntime, Name: "onnxruntime", Version: "1.24.3", Format: "so"})
	r.Publish()

	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	dir, st := enrolledState(t, ctx, r, tpm)
	defer st.Close()
	commitTarget(t, ctx, st, artifact.KindModel, mp)
	rt := commitTarget(t, ctx, st, artifact.KindRuntime, rp)

	bin := filepath.Join(t.TempDir(), "edgeward-runtime")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgeward-runtime").CombinedOutput(); err != nil {
		t.Fatalf("go build edgeward-runtime: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mlog, err := OpenMeasurementLog(ctx, filepath.Join(string(dir), "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	rts := &Runtimes{Binary: bin, Listener: ln.(*net.TCPListener), Dir: t.TempDir(), Stderr: io.Discard}
	defer rts.Close()
	j := &RuntimeJudge{Runtimes: rts, Slots: st.Slots, TUF: st.TUF, Log: mlog, WorkDir: t.TempDir()}

	servesCommitted := func(what string) *RuntimeProc {
		t.Helper()
		p := rts.Current()
		if p == nil {
			t.Fatalf("%s: no runtime serves", what)
		}
		if p.SHA256 != rt.SHA256 {
			t.Fatalf("%s: the serving runtime runs library %s; committed %s", what, p.SHA256, rt.SHA256)
		}
		if !servesDefault(ctx, p.Client, "vibration-anomaly", "1.0.0") {
			t.Fatalf("%s: the committed model is not served", what)
		}
		log := mlog.Log()
		if n := len(log); n < 2 || log[n-2].Kind != string(artifact.KindRuntime) || log[n-2].SHA256 != rt.SHA256 ||
			log[n-1].Kind != string(artifact.KindModel) || log[n-1].Version != "1.0.0" {
			t.Fatalf("%s: the measurements end %+v; want the committed runtime, then the committed model", what, log)
		}
		return p
	}

	// No trial process: an agent restarted between the trial and the commit's outcome.
	if err := j.Committed(ctx, artifact.KindRuntime, rt, artifact.Meta{}); err != nil {
		t.Fatalf("Committed without a trial process: %v", err)
	}
	first := servesCommitted("without a trial process")

	// A passed trial process that cannot take traffic: its control socket is gone.
	sealed, err := SealLibrary(st.Slots.Payload(artifact.KindRuntime, mustActive(t, ctx, st.Slots)))
	if err != nil {
		t.Fatal(err)
	}
	defer sealed.Close()
	held, err := rts.Start(ctx, sealed, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(held.sock); err != nil {
		t.Fatal(err)
	}
	held.Client.HTTPClient.CloseIdleConnections() // the socket file is gone: no new connection
	if held.killed() {
		t.Fatal("the held process died")
	}
	j.mu.Lock()
	j.pending = held
	j.mu.Unlock()
	if err := j.Committed(ctx, artifact.KindRuntime, rt, artifact.Meta{}); err != nil {
		t.Fatalf("Committed with a trial process that cannot serve: %v", err)
	}
	select {
	case <-held.done:
	case <-time.After(20 * time.Second):
		t.Fatal("the trial process that could not take traffic is still running")
	}
	if p := servesCommitted("after a failed switch"); p == first || p == held {
		t.Fatal("the runtime was not started afresh")
	}
}

func mustActive(t *testing.T, ctx context.Context, m *rollback.Manager) rollback.Slot {
	t.Helper()
	st, err := m.State(ctx, artifact.KindRuntime)
	if err != nil || st.Active == "" {
		t.Fatalf("runtime slot state: %+v, %v", st, err)
	}
	return st.Active
}
