package updater

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// FuzzReadDesired: whatever desired.json an offline bundle carries, the reader neither
// panics nor reads past its bound, and what it accepts is a JSON object (or null) naming
// a target path for known kinds only.
func FuzzReadDesired(f *testing.F) {
	f.Add([]byte(`{"model": "models/iris/1.2.0.onnx", "runtime": "runtimes/ort/1.24.1.tar.gz"}`))
	f.Add([]byte(`{"probe": "probes/iris/1.0.0.json"}`))
	f.Add([]byte(`{"model": "a", "model": "b"}`))
	f.Add([]byte(`{"firmware": "x"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	// One bundle directory per fuzz process; each input overwrites its desired.json.
	dir := f.TempDir()
	path := filepath.Join(dir, DesiredFile)
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadDesired(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("ReadDesired error %q does not name the bundle", err)
			}
			return
		}
		if len(data) > maxDesiredBytes {
			t.Fatalf("ReadDesired accepted %d bytes; the bound is %d", len(data), maxDesiredBytes)
		}
		var raw map[string]string
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatalf("ReadDesired accepted %q, which is not a JSON object of strings: %v", data, err)
		}
		if len(got) != len(raw) {
			t.Fatalf("ReadDesired(%q) = %v; want the %d entries of the file", data, got, len(raw))
		}
		for k, p := range got {
			if _, err := artifact.ParseKind(string(k)); err != nil || raw[string(k)] != p {
				t.Fatalf("ReadDesired(%q) = %v: entry %s=%q is not in the file or not a kind", data, got, k, p)
			}
		}
	})
}

// TestReadDesiredBounded: a desired.json that never ends (here a link to /dev/zero, as
// a hostile stick could carry) is refused after the bound, not read into memory.
func TestReadDesiredBounded(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/dev/zero", filepath.Join(dir, DesiredFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDesired(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ReadDesired(endless desired.json) = %v; want larger than %d bytes", err, maxDesiredBytes)
	}
}
