package durable

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

func TestWriteFileReplacesWithPerm(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	for _, tc := range []struct {
		data string
		perm os.FileMode
	}{{"first", 0o600}, {"second, longer", 0o644}, {"", 0o640}} {
		if err := WriteFile(path, []byte(tc.data), tc.perm); err != nil {
			t.Fatalf("WriteFile(%q) = %v", tc.data, err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != tc.data {
			t.Errorf("after WriteFile(%q): read %q, %v", tc.data, got, err)
		}
		fi, _ := os.Stat(path)
		if fi.Mode().Perm() != tc.perm {
			t.Errorf("WriteFile(perm %o): mode %o", tc.perm, fi.Mode().Perm())
		}
	}
	assertOnly(t, dir, "state.json")
}

type failingReader struct{ n int }

func (r *failingReader) Read(p []byte) (int, error) {
	if r.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	k := min(len(p), r.n)
	for i := range p[:k] {
		p[i] = 'x'
	}
	r.n -= k
	return k, nil
}

// A write that fails half-way leaves the old file whole and no temporary file behind.
func TestWriteFromFailureLeavesOldFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "blob")
	if err := WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := WriteFrom(path, &failingReader{n: 3 << 20}, 0o644)
	if err == nil {
		t.Fatalf("WriteFrom(failing reader) = %d, nil; want an error", n)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("after failed WriteFrom: %q; want %q", got, "old")
	}
	assertOnly(t, dir, "blob")

	n, err = WriteFrom(path, io.LimitReader(&failingReader{n: 5 << 20}, 2<<20), 0o644)
	if err != nil || n != 2<<20 {
		t.Fatalf("WriteFrom = %d, %v; want %d, nil", n, err, 2<<20)
	}
}

// Readers racing a writer see one whole version or the other, never a mix or a prefix.
func TestWriteFileNoPartialFileVisible(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "model")
	a := bytes.Repeat([]byte("a"), 1<<20)
	b := bytes.Repeat([]byte("b"), 1<<20+7)
	if err := WriteFile(path, a, 0o644); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 40; i++ {
			data := a
			if i%2 == 0 {
				data = b
			}
			if err := WriteFile(path, data, 0o644); err != nil {
				t.Error(err)
				break
			}
		}
		close(stop)
	}()
	reads := 0
	for done := false; !done; reads++ {
		select {
		case <-stop:
			done = true
		default:
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read during writes: %v", err)
		}
		if !bytes.Equal(got, a) && !bytes.Equal(got, b) {
			t.Fatalf("read %d bytes that are neither version", len(got))
		}
	}
	wg.Wait()
	t.Logf("%d reads, all whole", reads)
	assertOnly(t, dir, "model")
}

func TestWriteFileReadOnlyDir(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "f")
	if err := WriteFile(path, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	readOnly(t, dir)
	err := WriteFile(path, []byte("new"), 0o644)
	if !errors.Is(err, os.ErrPermission) {
		t.Errorf("WriteFile in read-only dir = %v; want ErrPermission", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("after refused write: %q; want %q", got, "old")
	}
	if err := WriteFile(filepath.Join(dir, "missing", "f"), nil, 0o644); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("WriteFile in missing dir = %v; want ErrNotExist", err)
	}
}

func TestRenameAcrossDirs(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "staging", "x")
	dst := filepath.Join(dir, "blobs", "x")
	os.Mkdir(filepath.Dir(src), 0o755)
	os.Mkdir(filepath.Dir(dst), 0o755)
	if err := WriteFile(src, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Rename(src, dst); err != nil {
		t.Fatalf("Rename = %v", err)
	}
	if got, err := os.ReadFile(dst); err != nil || string(got) != "x" {
		t.Errorf("after Rename: %q, %v", got, err)
	}
	if _, err := os.Stat(src); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("source still there: %v", err)
	}
	if err := Rename(src, dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Rename(missing) = %v; want ErrNotExist", err)
	}
}

func assertOnly(t *testing.T, dir string, names ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(names) {
		t.Errorf("directory holds %q; want only %q (a temporary file was left behind?)", got, names)
	}
}

// readOnly makes dir refuse new entries: mode 0500, or, for root (whom modes do not
// stop), the immutable attribute.
func readOnly(t *testing.T, dir string) {
	t.Helper()
	if os.Geteuid() != 0 {
		if err := os.Chmod(dir, 0o500); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod(dir, 0o700) })
		return
	}
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("running as root and cannot make %s immutable: %v %s (EDGEWARD_REQUIRE_DEPS=1)", dir, err, out)
		}
		t.Skipf("running as root and cannot make %s immutable: %v %s", dir, err, out)
	}
	t.Cleanup(func() { exec.Command("chattr", "-i", dir).Run() })
}

// TestMkdirAll: missing directories are made (their parents fsynced, which a test
// cannot see short of a power cut: the audit that found their absence traced the
// syscalls), existing ones are left, and a file in the way is an error.
func TestMkdirAll(t *testing.T) {
	dir := t.TempDir()
	deep := filepath.Join(dir, "a", "b", "c")
	if err := MkdirAll(deep, 0o700); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(deep); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("Stat(%s) = %v, %v; want a 0700 directory", deep, fi, err)
	}
	if err := MkdirAll(deep, 0o700); err != nil {
		t.Fatalf("MkdirAll of an existing directory: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := MkdirAll(filepath.Join(dir, "f", "g"), 0o700); err == nil {
		t.Fatal("MkdirAll through a file succeeded")
	}
}
