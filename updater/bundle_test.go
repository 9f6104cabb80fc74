package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
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
	c, m := offlineDevice(t, r)
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

// offlineDevice is a device's TUF client, pinned to r's root v1, and its slots; the
// device is offline: its repository URL leads nowhere.
func offlineDevice(t *testing.T, r *tuftest.Repo) (*TUF, *rollback.Manager) {
	t.Helper()
	state := t.TempDir()
	mdir := filepath.Join(state, "tuf")
	PinRoot(mdir, r.RootBytes(1))
	c, err := NewTUF(TUFConfig{MetadataDir: mdir, MetadataURL: "http://127.0.0.1:1/metadata", Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(context.Background(), rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return c, m
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// TestBundleRetriedAfterAPassingFailure: a bundle whose install failed for a passing
// reason (here another version's trial was under way: "another install is in
// progress") is tried again after a backoff, without its desired.json changing, and
// installs once the trial is over. It used to be marked done at the first attempt and
// never tried again until someone touched desired.json or restarted the agent.
func TestBundleRetriedAfterAPassingFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := tuftest.New(t)
	p0, _ := r.AddModel("iris", "0.5.0", 0)
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
	defer m.Close()
	// 0.5.0 in its trial, installed through another (online) client of the repository.
	online := filepath.Join(t.TempDir(), "tuf")
	PinRoot(online, r.RootBytes(1))
	oc := newClient(t, r, online)
	x, _, err := oc.Resolve(ctx, artifact.KindModel, p0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.InstallFrom(ctx, artifact.KindModel, x, oc.SlotFetcher()); err != nil {
		t.Fatal(err)
	}
	if s, err := m.BeginTrial(ctx, artifact.KindModel, time.Hour); err != nil || s.Phase != rollback.Trial {
		t.Fatalf("BeginTrial = %v, %v", s.Phase, err)
	}
	a, err := NewAgent(AgentConfig{TUF: c, Slots: m, Director: &director{offline: true}, Judge: judge{}, Interval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	watch, staging := t.TempDir(), t.TempDir()
	r.WriteBundle(filepath.Join(staging, "usb1"), map[string]string{"model": p1})
	if err := os.Rename(filepath.Join(staging, "usb1"), filepath.Join(watch, "usb1")); err != nil {
		t.Fatal(err)
	}
	results := make(chan error, 100)
	go a.WatchBundles(ctx, watch, func(_ string, err error) { results <- err })
	wait := func() error {
		select {
		case err := <-results:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("no bundle attempt within 30s")
			return nil
		}
	}
	if err := wait(); !errors.Is(err, rollback.ErrBusy) {
		t.Fatalf("bundle during another trial = %v; want ErrBusy", err)
	}
	if err := wait(); !errors.Is(err, rollback.ErrBusy) { // tried again, still busy
		t.Fatalf("second attempt = %v; want ErrBusy again", err)
	}
	if _, err := m.Confirm(ctx, artifact.KindModel, true, ""); err != nil { // the trial ends
		t.Fatal(err)
	}
	for attempt := 3; ; attempt++ {
		err := wait()
		if err == nil {
			break
		}
		if !errors.Is(err, rollback.ErrBusy) || attempt > 8 {
			t.Fatalf("attempt %d: %v", attempt, err)
		}
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Current == nil || s.Current.Version != "1.0.0" {
		t.Fatalf("after the retry: %+v; want 1.0.0 committed", s)
	}
}

// bundleLookupJudge looks the trial's target up again through the client the trial
// names, as the runtime judge looks a probe set up, and records what it found.
type bundleLookupJudge struct {
	found []string
	errs  []error
}

func (j *bundleLookupJudge) Judge(ctx context.Context, tr Trial) Verdict {
	if tr.TUF == nil {
		j.errs = append(j.errs, errors.New("the trial names no TUF client"))
		return Verdict{Pass: true}
	}
	if tf, err := tr.TUF.Target(ctx, tr.Target.Path); err != nil {
		j.errs = append(j.errs, err)
	} else {
		j.found = append(j.found, tf.Path)
	}
	return Verdict{Pass: true}
}

// TestBundleTrialLooksUpThroughTheBundle: a trial of a bundle's target gets the
// bundle's TUF client, whose verified metadata lists what the bundle carries (its probe
// set), offline; the judge used the online client, which knows nothing offline (or an
// older snapshot), and a bundle's probe set could not be found.
func TestBundleTrialLooksUpThroughTheBundle(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	c, m := offlineDevice(t, r)
	j := &bundleLookupJudge{}
	a, err := NewAgent(AgentConfig{TUF: c, Slots: m, Director: &director{offline: true}, Judge: j})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	r.WriteBundle(dir, map[string]string{"model": p1})
	if err := a.InstallBundle(ctx, dir); err != nil {
		t.Fatal(err)
	}
	if len(j.errs) > 0 || len(j.found) != 1 || j.found[0] != p1 {
		t.Fatalf("lookups through the trial's client: found %v, errors %v; want %s", j.found, j.errs, p1)
	}
}
