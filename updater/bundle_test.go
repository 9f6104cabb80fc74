package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestOfflineBundles installs bundles dropped into a watched directory while the
// repository is unreachable, verified against the device's pinned root.
func TestOfflineBundles(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	state := t.TempDir()
	mdir := filepath.Join(state, "tuf")
	PinRoot(mdir, r.RootBytes(1))
	// The device is offline: its repository URL leads nowhere.
	c, err := NewTUF(TUFConfig{MetadataDir: mdir, MetadataURL: "http://127.0.0.1:1/metadata", Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	a, err := NewAgent(AgentConfig{TUF: c, Slots: m, Director: &director{offline: true}, Judge: judge{}})
	if err != nil {
		t.Fatal(err)
	}
	watch := t.TempDir()
	results := make(chan error, 10)
	go a.WatchBundles(ctx, watch, func(_ string, err error) { results <- err })
	wait := func() error {
		select {
		case err := <-results:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("no bundle processed within 30s")
			return nil
		}
	}
	current := func() string {
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil {
			return ""
		}
		return s.Current.Version
	}

	// A bundle with the root rotated and 1.0.0.
	r.RotateRoot()
	staging := t.TempDir()
	r.WriteBundle(filepath.Join(staging, "usb1"), map[string]string{"model": p1})
	os.Rename(filepath.Join(staging, "usb1"), filepath.Join(watch, "usb1"))
	if err := wait(); err != nil || current() != "1.0.0" {
		t.Fatalf("bundle 1: %v, committed %q; want 1.0.0", err, current())
	}

	// A bundle whose target bytes were swapped is refused; nothing changes.
	p2, d2 := r.AddModel("iris", "2.0.0", 0)
	evil := filepath.Join(staging, "usb2")
	r.WriteBundle(evil, map[string]string{"model": p2})
	for _, h := range []string{sha256Hex(d2)} {
		os.WriteFile(filepath.Join(evil, "targets", "models", "iris", h+".2.0.0.onnx"), make([]byte, len(d2)), 0o644)
	}
	os.Rename(evil, filepath.Join(watch, "usb2"))
	if err := wait(); err == nil || current() != "1.0.0" {
		t.Fatalf("tampered bundle: %v, committed %q; want an error and 1.0.0", err, current())
	}

	// A bundle signed by a key the device does not trust is refused.
	other := tuftest.New(t)
	op, _ := other.AddModel("iris", "3.0.0", 0)
	other.WriteBundle(filepath.Join(staging, "usb3"), map[string]string{"model": op})
	os.Rename(filepath.Join(staging, "usb3"), filepath.Join(watch, "usb3"))
	if err := wait(); err == nil || current() != "1.0.0" {
		t.Fatalf("foreign bundle: %v, committed %q; want an error and 1.0.0", err, current())
	}
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
