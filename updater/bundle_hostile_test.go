//go:build unix

package updater

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestReadDesiredSparse replays issue 15 item 5: a 1 GiB sparse desired.json raised the
// agent's RSS by a GiB. It is refused from its size, with next to nothing allocated.
func TestReadDesiredSparse(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, DesiredFile)
	if err := os.WriteFile(p, []byte(`{"model": "models/iris/1.0.0.onnx"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(p, 1<<30); err != nil {
		t.Fatal(err)
	}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := ReadDesired(dir)
	runtime.ReadMemStats(&after)
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ReadDesired(1 GiB sparse desired.json) = %v; want larger than %d bytes", err, maxDesiredBytes)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 2*maxDesiredBytes {
		t.Fatalf("ReadDesired(1 GiB sparse desired.json) allocated %d bytes; want at most %d", grew, 2*maxDesiredBytes)
	}
}

// hostileAgent is an offline agent with a pinned root and a committed 1.0.0, and a
// bundle of 2.0.0 in staging ready to be tampered with.
func hostileAgent(t *testing.T) (*Agent, string) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	state := t.TempDir()
	mdir := filepath.Join(state, "tuf")
	PinRoot(mdir, r.RootBytes(1))
	c, err := NewTUF(TUFConfig{MetadataDir: mdir, MetadataURL: "http://127.0.0.1:1/metadata", Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	a, err := NewAgent(AgentConfig{TUF: c, Slots: m, Director: &director{offline: true}, Judge: judge{}})
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(t.TempDir(), "usb")
	r.WriteBundle(bundle, map[string]string{"model": p1})
	return a, bundle
}

// within runs f and fails the test if it has not returned after d. A FIFO that f is stuck
// on is then opened for writing, so the goroutine ends with the test.
func within(t *testing.T, d time.Duration, what, fifo string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		if w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
			w.Close()
		}
		t.Fatalf("%s still blocked after %v", what, d)
		return nil
	}
}

// TestBundleFIFO replays issue 15 item 5: a FIFO in place of desired.json (or of any
// other file of the bundle) blocked the install, and the online loop behind the same
// lock, forever. It is refused at once and the online loop goes on.
func TestBundleFIFO(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{DesiredFile, "metadata/timestamp.json", "metadata/2.root.json"} {
		t.Run(name, func(t *testing.T) {
			a, bundle := hostileAgent(t)
			fifo := filepath.Join(bundle, filepath.FromSlash(name))
			os.Remove(fifo)
			if err := syscall.Mkfifo(fifo, 0o644); err != nil {
				t.Fatal(err)
			}
			err := within(t, 10*time.Second, "InstallBundle(FIFO "+name+")", fifo, func() error { return a.InstallBundle(ctx, bundle) })
			if err == nil {
				t.Fatalf("InstallBundle(FIFO %s) = nil; want a refusal", name)
			}
			if name == DesiredFile && !errors.Is(err, ErrNotRegular) {
				t.Fatalf("InstallBundle(FIFO %s) = %v; want ErrNotRegular", name, err)
			}
			// The online loop takes the same lock: it must not be held.
			within(t, 10*time.Second, "Step after a FIFO bundle", fifo, func() error { return a.Step(ctx) })
			s, err := a.cfg.Slots.State(ctx, artifact.KindModel)
			if err != nil || s.Current != nil {
				t.Fatalf("after FIFO %s: current %+v, %v; want nothing installed", name, s.Current, err)
			}
		})
	}
}

// TestBundleFIFOConcurrent: while a FIFO bundle is being installed, the online loop
// still proceeds (the lock is never held across opening a path from the bundle).
func TestBundleFIFOConcurrent(t *testing.T) {
	ctx := context.Background()
	a, bundle := hostileAgent(t)
	fifo := filepath.Join(bundle, DesiredFile)
	os.Remove(fifo)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	go a.InstallBundle(ctx, bundle)
	for i := 0; i < 3; i++ {
		within(t, 10*time.Second, "Step while a FIFO bundle installs", fifo, func() error { return a.Step(ctx) })
	}
}

// TestBundleDevice: a desired.json that is a symlink to a device is refused before a
// byte is read.
func TestBundleDevice(t *testing.T) {
	dir := t.TempDir()
	if err := os.Symlink("/dev/zero", filepath.Join(dir, DesiredFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadDesired(dir); !errors.Is(err, ErrNotRegular) {
		t.Fatalf("ReadDesired(desired.json → /dev/zero) = %v; want ErrNotRegular", err)
	}
}

// TestBundleSymlinksStayInside: a bundle's file may be a symlink to another file of the
// bundle, but not out of it. A target symlinked to a root-only file elsewhere is refused
// before a byte of it is read, and nothing of it reaches the slots (before, it was read,
// hashed, its digest queued in a report and its last block kept in the partial file's
// hash state); one symlinked to /proc/kmsg hung the round, in the file transport's
// sniffing read, past the stall timer and SIGTERM (found by an outside audit, 1 Dec).
// The same bundle with the target restored installs.
func TestBundleSymlinksStayInside(t *testing.T) {
	ctx := context.Background()
	for _, to := range []string{"secret", "/proc/self/status", "inside"} {
		t.Run(filepath.Base(to), func(t *testing.T) {
			a, bundle := hostileAgent(t)
			// The target, under each of its hash prefixes.
			targets, err := filepath.Glob(filepath.Join(bundle, "targets", "models", "iris", "*.onnx"))
			if err != nil || len(targets) == 0 {
				t.Fatalf("bundle targets %v, %v; want some", targets, err)
			}
			good, err := os.ReadFile(targets[0])
			if err != nil {
				t.Fatal(err)
			}
			marker := []byte("TOPSECRET-MARKER-1234")
			switch to {
			case "secret":
				secret := filepath.Join(t.TempDir(), "shadow")
				os.WriteFile(secret, append(bytes.Repeat([]byte{'x'}, len(good)-len(marker)), marker...), 0o600)
				to = secret
			case "inside":
				// A symlink that stays in the bundle is followed.
				if err := os.WriteFile(filepath.Join(bundle, "moved.onnx"), good, 0o644); err != nil {
					t.Fatal(err)
				}
				to = "../../../moved.onnx"
			}
			for _, target := range targets {
				os.Remove(target)
				if err := os.Symlink(to, target); err != nil {
					t.Fatal(err)
				}
			}
			err = within(t, 10*time.Second, "InstallBundle(target → "+to+")", "", func() error { return a.InstallBundle(ctx, bundle) })
			s, _ := a.cfg.Slots.State(ctx, artifact.KindModel)
			if to == "../../../moved.onnx" {
				if err != nil || s.Current == nil {
					t.Fatalf("InstallBundle(target symlinked inside the bundle) = %v, current %+v; want it installed", err, s.Current)
				}
				return
			}
			if err == nil || s.Current != nil {
				t.Fatalf("InstallBundle(target → %s) = %v, current %+v; want it refused, nothing installed", to, err, s.Current)
			}
			// Every file of the test but the bundle and the secret: the agent's state.
			filepath.WalkDir(filepath.Dir(t.TempDir()), func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() && !strings.HasPrefix(p, bundle+string(filepath.Separator)) && p != to {
					if b, _ := os.ReadFile(p); bytes.Contains(b, marker) || bytes.Contains(b, []byte("TracerPid")) {
						t.Errorf("%s holds bytes of the file outside the bundle", p)
					}
				}
				return nil
			})
			for _, target := range targets {
				os.Remove(target)
				if err := os.WriteFile(target, good, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := a.InstallBundle(ctx, bundle); err != nil {
				t.Fatalf("InstallBundle once the target is restored = %v", err)
			}
		})
	}
}

// TestReadRegular: a file named on the command line (enroll --root) is read only if it
// is a regular file within the bound, and no further than its size when opened: a FIFO
// is refused without blocking (it hung `enroll` past SIGTERM), /dev/zero before a byte
// is read (it took `enroll` to 3.3 GB), a procfs file reads as the empty file it says it
// is (found by an outside audit, 1 Dec).
func TestReadRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "root.fifo")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big.json")
	os.WriteFile(big, make([]byte, 2048), 0o644)
	good := filepath.Join(dir, "root.json")
	os.WriteFile(good, []byte(`{"signed":{}}`), 0o644)
	for _, c := range []struct {
		path string
		want error // nil: read
		data string
	}{
		{fifo, ErrNotRegular, ""},
		{"/dev/zero", ErrNotRegular, ""},
		{dir, ErrNotRegular, ""},
		{"/proc/self/status", nil, ""},
		{big, errors.New("more than"), ""},
		{good, nil, `{"signed":{}}`},
	} {
		var b []byte
		var err error
		within(t, 10*time.Second, "ReadRegular("+c.path+")", fifo, func() error { b, err = ReadRegular(c.path, 1024); return err })
		switch {
		case c.want == nil && (err != nil || string(b) != c.data):
			t.Errorf("ReadRegular(%s) = %q, %v; want %q", c.path, b, err, c.data)
		case c.want == ErrNotRegular && !errors.Is(err, ErrNotRegular):
			t.Errorf("ReadRegular(%s) = %v; want ErrNotRegular", c.path, err)
		case c.want != nil && c.want != ErrNotRegular && (err == nil || !strings.Contains(err.Error(), c.want.Error())):
			t.Errorf("ReadRegular(%s) = %v; want %v", c.path, err, c.want)
		}
	}
}

// TestBundleWatchBounded: 500 directories dropped at once cost one scan per burst, not
// one per event (2,000 took 36 s of CPU, quadratic), and only the first 64 by name are
// considered and watched (each inotify watch comes from a budget the system shares;
// found by an outside audit, 1 Dec): a bundle among them installs, one past them does
// not.
func TestBundleWatchBounded(t *testing.T) {
	bundle, watch, results := watchingAgent(t)
	for i := range 500 {
		if err := os.Mkdir(filepath.Join(watch, fmt.Sprintf("junk-%03d", i)), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Rename(bundle, filepath.Join(watch, "000-usb")); err != nil {
		t.Fatal(err)
	}
	if b := nextBundle(t, results, "the bundle among the first 64 directories"); b != "000-usb" {
		t.Fatalf("processed %s first; want 000-usb", b)
	}
	late := filepath.Join(t.TempDir(), "zzz-usb")
	if err := os.Mkdir(late, 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(late, DesiredFile), []byte(`{"model":"models/iris/1.0.0.onnx"}`), 0o644)
	os.Rename(late, filepath.Join(watch, "zzz-usb"))
	select {
	case b := <-results:
		t.Fatalf("processed %s, past the first 64 directories", b)
	case <-time.After(2 * time.Second):
	}
}

// TestBundleWatchRecreatedDir: a bundle directory removed and made again under the same
// name is watched again, so a desired.json copied into it later is seen; and bundles
// already done do not count against the bound on pending ones (found by review: the
// watch was added once per name, and the bound counted every directory).
func TestBundleWatchRecreatedDir(t *testing.T) {
	bundle, watch, results := watchingAgent(t)
	usb := filepath.Join(watch, "usb")
	if err := os.Mkdir(usb, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // scanned (and watched) while empty
	if err := os.Remove(usb); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if err := os.Mkdir(usb, 0o755); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // scanned again, empty
	// The bundle's files arrive in the directory, desired.json last.
	entries, _ := os.ReadDir(bundle)
	for _, e := range entries {
		if e.Name() != DesiredFile {
			if err := os.Rename(filepath.Join(bundle, e.Name()), filepath.Join(usb, e.Name())); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := os.Rename(filepath.Join(bundle, DesiredFile), filepath.Join(usb, DesiredFile)); err != nil {
		t.Fatal(err)
	}
	if b := nextBundle(t, results, "desired.json copied into a directory made again"); b != "usb" {
		t.Fatalf("processed %s; want usb", b)
	}
}

// watchingAgent is hostileAgent watching a directory of its own for bundles, until the
// test ends: it returns the bundle (not in the watched directory yet), the watched
// directory, and the names of the bundles processed, in order.
func watchingAgent(t *testing.T) (bundle, watch string, results <-chan string) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	a, bundle := hostileAgent(t)
	watch = t.TempDir()
	done := make(chan string, 16)
	go a.WatchBundles(ctx, watch, func(b string, _ error) { done <- filepath.Base(b) })
	return bundle, watch, done
}

// nextBundle is the name of the next bundle processed; the test fails if none is
// within 30 s.
func nextBundle(t *testing.T, results <-chan string, what string) string {
	t.Helper()
	select {
	case b := <-results:
		return b
	case <-time.After(30 * time.Second):
		t.Fatalf("%s was not processed within 30 s", what)
		return ""
	}
}
