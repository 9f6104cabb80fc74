package runtime

import (
	"context"
	"os"
	"path/filepath"
	goruntime "runtime"
	"runtime/debug"
	"testing"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestLoadReturnsTheModelBytes: once a model of some 17 MB is loaded, the runtime's heap
// no longer holds its bytes from the system. Before, they stayed as garbage until the
// heap doubled or the two-minute collection, and were returned slowly after that: a
// runtime serving a 268 MB model kept 570 MB resident, 309 MB with the bytes returned
// (found from outside under a memory cgroup, 2 Dec).
func TestLoadReturnsTheModelBytes(t *testing.T) {
	r := newTestRuntime(t)
	model := modelgen.WideModel("1.1.0", 2048, 0)
	size := len(model)
	if size < 2*releaseAfter {
		t.Fatalf("the model is %d bytes; the test needs one well over %d", size, releaseAfter)
	}
	path := filepath.Join(t.TempDir(), "wide.onnx")
	if err := os.WriteFile(path, model, 0o600); err != nil {
		t.Fatal(err)
	}
	model = nil
	// Kept from the system by the Go heap: in use (live or garbage not yet collected) or
	// idle but not yet released.
	kept := func() uint64 {
		var m goruntime.MemStats
		goruntime.ReadMemStats(&m)
		return m.HeapSys - m.HeapReleased
	}
	debug.FreeOSMemory()
	before := kept()
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "wide", Version: "1.0.0", Path: path, Default: true}); err != nil {
		t.Fatal(err)
	}
	after := kept()
	if grew := int64(after) - int64(before); grew > int64(size)/4 {
		t.Errorf("after loading a %d-byte model the Go heap keeps %d bytes more from the system (%d before, %d after); want the model's bytes returned", size, grew, before, after)
	}
	// The model serves from its session, not from the bytes returned.
	ps := vibrationProbeSet(t)
	rep, err := r.Probe(context.Background(), "wide", "1.0.0", ps, nil)
	if err != nil || rep.Accuracy < 0.85 {
		t.Fatalf("probe after the load: accuracy %v, %v", rep.Accuracy, err)
	}
}
