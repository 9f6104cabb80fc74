package artifact

import (
	"os"
	"path/filepath"
	goruntime "runtime"
	"testing"
)

func TestFileSHA256(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("abc"), 0o644); err != nil {
		t.Fatal(err)
	}
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
	if got, err := FileSHA256(p); err != nil || got != want {
		t.Errorf("FileSHA256(abc) = %q, %v; want %q", got, err, want)
	}
	if _, err := FileSHA256(filepath.Join(t.TempDir(), "missing")); !os.IsNotExist(err) {
		t.Errorf("FileSHA256(missing) = %v; want a not-exist error", err)
	}
}

func TestHostHardware(t *testing.T) {
	want := map[string]string{"amd64": "x86_64", "arm64": "aarch64"}[goruntime.GOARCH]
	if want == "" {
		want = goruntime.GOARCH
	}
	if got := HostHardware(); got != want {
		t.Errorf("HostHardware() = %q on %s; want %q", got, goruntime.GOARCH, want)
	}
}
