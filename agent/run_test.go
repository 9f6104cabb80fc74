package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// committedDevice enrolls a state directory with the repository r and commits the
// vibration-anomaly model 1.0.0 (real ONNX bytes) into its model slot, as a device that
// restarts after an earlier commit finds it.
func committedDevice(t *testing.T, ctx context.Context, tpm *attest.TPM) StateDir {
	t.Helper()
	r := tuftest.New(t)
	model, err := modelgen.Model("1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	p := artifact.TargetPath(artifact.KindModel, "vibration-anomaly", "1.0.0", ".onnx")
	r.AddTarget(p, model, artifact.Meta{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: "1.0.0", Format: "onnx"})
	r.Publish()
	dir, st := enrolledState(t, ctx, r, tpm)
	defer st.Close()
	commitTarget(t, ctx, st, artifact.KindModel, p)
	return dir
}

// enrolledState enrolls a new state directory with repository r and opens it,
// recovered and refreshed.
func enrolledState(t *testing.T, ctx context.Context, r *tuftest.Repo, tpm *attest.TPM) (StateDir, *State) {
	t.Helper()
	dir := StateDir(t.TempDir())
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), TPM: "sim"}); err != nil {
		t.Fatal(err)
	}
	st, err := OpenState(ctx, StateConfig{Dir: dir, TPM: tpm})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Slots.Recover(ctx); err != nil {
		st.Close()
		t.Fatal(err)
	}
	if err := st.TUF.Refresh(ctx); err != nil {
		st.Close()
		t.Fatal(err)
	}
	return dir, st
}

// commitTarget installs the target at path into its slot and commits it, as a passed
// trial does, and returns it.
func commitTarget(t *testing.T, ctx context.Context, st *State, kind artifact.Kind, path string) rollback.Target {
	t.Helper()
	target, _, err := st.TUF.Resolve(ctx, kind, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Slots.Install(ctx, kind, target); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Slots.BeginTrial(ctx, kind, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Slots.Confirm(ctx, kind, true, ""); err != nil {
		t.Fatal(err)
	}
	return target
}

func servesDefault(ctx context.Context, rc *runtimeapi.Client, name, version string) bool {
	idx, err := rc.Index(ctx)
	if err != nil {
		return false
	}
	for _, e := range idx {
		if e.Name == name && e.Version == version && e.Default {
			return true
		}
	}
	return false
}

// TestRunServesFirst restarts a device whose server refuses it: Run serves the committed
// model (loaded and measured) before its first request to the server, keeps retrying
// with a backoff capped at the check-in interval, and returns nil when stopped.
func TestRunServesFirst(t *testing.T) {
	lib := ortLibrary(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	dir := committedDevice(t, ctx, tpm)

	rt, err := runtime.New(runtime.Config{LibraryPath: lib})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	control := httptest.NewServer(rt.ControlHandler())
	defer control.Close()
	rc := &runtimeapi.Client{BaseURL: control.URL}

	// The server is down for maintenance. Its first request records whether the
	// committed model was serving by then.
	var mu sync.Mutex
	requests, servingAtFirst := 0, false
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		requests++
		if requests == 1 {
			servingAtFirst = servesDefault(r.Context(), rc, "vibration-anomaly", "1.0.0")
		}
		mu.Unlock()
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer server.Close()

	var waits []time.Duration
	sleep := func(ctx context.Context, d time.Duration) error {
		waits = append(waits, d)
		if len(waits) == 5 {
			cancel()
			return ctx.Err()
		}
		return nil
	}
	err = Run(ctx, Config{StateDir: dir, Server: server.URL, TPM: tpm, RuntimeControl: control.URL,
		Interval: 3 * time.Second, Sleep: sleep})
	if err != nil {
		t.Fatalf("Run stopped while retrying = %v; want nil", err)
	}
	mu.Lock()
	n, serving := requests, servingAtFirst
	mu.Unlock()
	if n == 0 || !serving {
		t.Errorf("server requests = %d, committed model serving at the first = %v; want it serving before any network work", n, serving)
	}
	want := []time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second, 3 * time.Second}
	if len(waits) != len(want) || waits[0] != want[0] || waits[1] != want[1] || waits[2] != want[2] || waits[4] != want[4] {
		t.Errorf("connection retries waited %v; want %v (doubling, capped at the interval)", waits, want)
	}
	b, err := os.ReadFile(dir.Measurements())
	if err != nil || !strings.Contains(string(b), `"vibration-anomaly"`) {
		t.Errorf("measurement log %s = %s, %v; want the committed model measured", dir.Measurements(), b, err)
	}

	// With Once the first refusal is the answer, after serving.
	err = Run(context.Background(), Config{StateDir: dir, Server: server.URL, TPM: tpm, RuntimeControl: control.URL, Once: true})
	if err == nil || !strings.Contains(err.Error(), "enroll with the attestation CA") {
		t.Errorf("Run once against a refusing server = %v; want the enrollment error", err)
	}
}

// TestRunNeedsTPM checks that a device with a server but no TPM is refused before it
// starts anything.
func TestRunNeedsTPM(t *testing.T) {
	r := tuftest.New(t)
	dir := StateDir(t.TempDir())
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: r.MetadataURL()}); err != nil {
		t.Fatal(err)
	}
	err := Run(context.Background(), Config{StateDir: dir, Server: "http://127.0.0.1:1", Listen: "127.0.0.1:0"})
	if !errors.Is(err, ErrNoTPM) {
		t.Fatalf("Run without a TPM = %v; want ErrNoTPM", err)
	}
	if err := Run(context.Background(), Config{StateDir: dir, Once: true}); err == nil || !strings.Contains(err.Error(), "Director is required") {
		t.Fatalf("Run without a server or a director = %v; want an error", err)
	}
}

// TestRunStoppedWhileStarting checks that a stop asked for while the agent is still
// starting (here: before it opened anything) is a clean stop, as the doc of Run says,
// and that a real start-up error (no director) is still one when nothing was stopped.
// `edgeward-agent run` exited 1 when SIGTERM arrived while it opened its outbox.
func TestRunStoppedWhileStarting(t *testing.T) {
	r := tuftest.New(t)
	dir := StateDir(t.TempDir())
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: r.MetadataURL()}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Run(ctx, Config{StateDir: dir, Director: Static{}, Interval: time.Hour}); err != nil {
		t.Fatalf("Run stopped before it started = %v; want nil (a stop, not a failure)", err)
	}
	if err := Run(ctx, Config{StateDir: dir, Director: Static{}, Once: true}); err == nil {
		t.Errorf("Run --once with its context already ended = nil; want the interruption reported")
	}
	if err := Run(context.Background(), Config{StateDir: dir, Interval: time.Hour}); err == nil || !strings.Contains(err.Error(), "Director is required") {
		t.Errorf("Run without a director = %v; want the start-up error", err)
	}
}
