package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/runtime"
)

// TestRunRemovesInterruptedWrites: the temporary files that writes interrupted by a
// crash or a power cut left in the state directory (beside the measurement log, in the
// TUF metadata, in a model slot) are removed when the agent starts; the files they were
// to replace are not. Before, nothing removed them: one more at every such loss, for
// the life of the device (found from outside, 2 Dec).
func TestRunRemovesInterruptedWrites(t *testing.T) {
	lib := ortLibrary(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	dir := committedDevice(t, ctx, tpm)
	left := []string{
		filepath.Join(string(dir), ".measurements.json.tmp-3141592"),
		filepath.Join(dir.TUF(), ".timestamp.json.tmp-2718281"),
		filepath.Join(string(dir), "slots", "model", ".current.tmp-1414213"),
	}
	past := time.Now().Add(-time.Hour)
	for _, p := range left {
		if err := os.WriteFile(p, []byte("partial"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}
	enrollment, err := os.ReadFile(dir.Enrollment())
	if err != nil {
		t.Fatal(err)
	}

	rt, err := runtime.New(runtime.Config{LibraryPath: lib})
	if err != nil {
		t.Fatal(err)
	}
	defer rt.Close(ctx)
	control := httptest.NewServer(rt.ControlHandler())
	defer control.Close()
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	defer server.Close()
	stop := func(ctx context.Context, d time.Duration) error { cancel(); return ctx.Err() }
	if err := Run(ctx, Config{StateDir: dir, Server: server.URL, TPM: tpm, RuntimeControl: control.URL, Interval: time.Second, Sleep: stop}); err != nil {
		t.Fatalf("Run = %v", err)
	}
	for _, p := range left {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s, left by an interrupted write: still there after the agent started (%v)", p, err)
		}
	}
	if b, err := os.ReadFile(dir.Enrollment()); err != nil || string(b) != string(enrollment) {
		t.Errorf("agent.json changed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(string(dir), "slots", "model", "current")); err != nil {
		t.Errorf("the committed slot's current file: %v", err)
	}
}
