package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// TestSealLibrary: the sealed copy has the file's bytes and digest, and nothing can
// change it afterwards: not a write through its descriptor, not a write through a new
// one, not a change of the file it came from.
func TestSealLibrary(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lib.so")
	if err := os.WriteFile(path, []byte("the library's bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	want, err := artifact.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	lib, err := SealLibrary(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lib.Close()
	if lib.SHA256 != want || lib.Path != path {
		t.Fatalf("sealed %s %s; want %s %s", lib.Path, lib.SHA256, path, want)
	}
	if _, err := lib.f.WriteAt([]byte("X"), 0); !errors.Is(err, syscall.EPERM) {
		t.Errorf("write through the sealed descriptor = %v; want EPERM", err)
	}
	if err := lib.f.Truncate(1); !errors.Is(err, syscall.EPERM) {
		t.Errorf("truncate = %v; want EPERM", err)
	}
	if f, err := os.OpenFile(fmt.Sprintf("/proc/self/fd/%d", lib.f.Fd()), os.O_WRONLY, 0); err == nil {
		_, err = f.Write([]byte("X"))
		f.Close()
		if err == nil {
			t.Error("a write through a new descriptor of the memfd succeeded")
		}
	}
	if err := os.WriteFile(path, []byte("other bytes, written in place"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(fmt.Sprintf("/proc/self/fd/%d", lib.f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "the library's bytes" {
		t.Errorf("the sealed copy reads %q after the file changed", got)
	}
	if _, err := SealLibrary(filepath.Join(t.TempDir(), "missing.so")); err == nil {
		t.Error("SealLibrary of a missing file succeeded")
	}
}

// TestRuntimeRunsTheSealedBytes: a runtime started with a sealed library loads those
// bytes, not what is at the path by then. The library file is replaced (by rename, as
// an attacker with write access to the slot would) after it was hashed and before the
// runtime starts: the runtime still starts on the measured bytes and maps them from the
// memfd. Loaded from the path, it would have loaded the replacement (here garbage, so
// it would not start at all).
func TestRuntimeRunsTheSealedBytes(t *testing.T) {
	orig := ortLibrary(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "libonnxruntime.so.1")
	src, err := os.Open(orig)
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	src.Close()
	dst.Close()
	want, err := artifact.FileSHA256(path)
	if err != nil {
		t.Fatal(err)
	}
	lib, err := SealLibrary(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lib.Close()

	swap := filepath.Join(dir, "swap")
	if err := os.WriteFile(swap, []byte("not a shared object"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(swap, path); err != nil {
		t.Fatal(err)
	}

	bin := filepath.Join(dir, "edgeward-runtime")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgeward-runtime").CombinedOutput(); err != nil {
		t.Fatalf("go build edgeward-runtime: %v\n%s", err, out)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	r := &Runtimes{Binary: bin, Listener: ln.(*net.TCPListener), Dir: dir, Stderr: io.Discard}
	defer r.Close()
	p, err := r.Start(context.Background(), lib, true)
	if err != nil {
		t.Fatalf("Start with the sealed library after the file was swapped: %v", err)
	}
	if p.SHA256 != want || p.Lib != path {
		t.Errorf("runtime started with %s %s; want %s %s", p.Lib, p.SHA256, path, want)
	}
	maps, err := os.ReadFile(fmt.Sprintf("/proc/%d/maps", p.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(maps), "/memfd:edgeward-ort") {
		t.Errorf("the runtime does not map the sealed library:\n%s", maps)
	}
	if strings.Contains(string(maps), path) {
		t.Errorf("the runtime maps the file at the slot's path")
	}
}
