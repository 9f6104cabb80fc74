package runtime

import (
	"bytes"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"testing"
)

// TestReadWholeCostsTheModelOnce checks that loading a model file allocates about its
// size once (a 1 GiB model peaked at 2.1 GiB when it was read with io.ReadAll), and that
// the bytes, an oversized file and an empty one come out right.
func TestReadWholeCostsTheModelOnce(t *testing.T) {
	dir := t.TempDir()
	want := bytes.Repeat([]byte("edgeward model bytes "), 400_000) // 8.4 MB
	path := filepath.Join(dir, "m.onnx")
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	read := func(max int64) ([]byte, error) {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		return readWhole(f, path, max)
	}
	var before, after goruntime.MemStats
	goruntime.GC()
	goruntime.ReadMemStats(&before)
	got, err := read(1 << 30)
	goruntime.ReadMemStats(&after)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("readWhole = %d bytes, %v; want the file's %d bytes", len(got), err, len(want))
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > uint64(len(want))*5/4 {
		t.Errorf("reading a %d-byte model allocated %d bytes; want about its size once", len(want), alloc)
	}
	if _, err := read(int64(len(want)) - 1); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("readWhole over the limit = %v; want refused", err)
	}
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := read(1 << 30); err != nil || len(got) != 0 {
		t.Errorf("readWhole(empty) = %d bytes, %v; want 0 bytes, no error", len(got), err)
	}
}
