package updater

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// FuzzReadDesired: whatever desired.json an offline bundle carries, the reader neither
// panics nor accepts more than its bound, and what it accepts is a JSON object (or null) naming
// a target path for known kinds only.
func FuzzReadDesired(f *testing.F) {
	f.Add([]byte(`{"model": "models/iris/1.2.0.onnx", "runtime": "runtimes/ort/1.24.1.tar.gz"}`))
	f.Add([]byte(`{"probe": "probes/iris/1.0.0.json"}`))
	f.Add([]byte(`{"model": "a", "model": "b"}`))
	f.Add([]byte(`{"firmware": "x"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`[]`))
	// The file read is ReadDesired's only I/O (TestReadDesiredBounded covers it); the
	// fuzzer feeds the bytes straight to the decoder, without a disk write per input.
	const dir = "/media/usb/bundle"
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := decodeDesired(dir, bytes.NewReader(data))
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("decodeDesired error %q does not name the bundle", err)
			}
			return
		}
		if len(data) > maxDesiredBytes {
			t.Fatalf("decodeDesired accepted %d bytes; the bound is %d", len(data), maxDesiredBytes)
		}
		var raw map[string]string
		if err := json.Unmarshal(data, &raw); err != nil {
			t.Fatalf("decodeDesired accepted %q, which is not a JSON object of strings: %v", data, err)
		}
		if len(got) != len(raw) {
			t.Fatalf("decodeDesired(%q) = %v; want the %d entries of the file", data, got, len(raw))
		}
		for k, p := range got {
			if _, err := artifact.ParseKind(string(k)); err != nil || raw[string(k)] != p {
				t.Fatalf("decodeDesired(%q) = %v: entry %s=%q is not in the file or not a kind", data, got, k, p)
			}
		}
	})
}

// TestReadDesiredBounded: a desired.json one byte over the bound is refused, not read
// into memory (devices and FIFOs are refused earlier: TestBundleDevice, TestBundleFIFO).
func TestReadDesiredBounded(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, DesiredFile), make([]byte, maxDesiredBytes+1), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDesired(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ReadDesired(oversized desired.json) = %v; want larger than %d bytes", err, maxDesiredBytes)
	}
}
