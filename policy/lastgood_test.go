package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestNewWatcherStartsFromLastGood: a directory that does not load at start does not
// stop the watcher when it kept a copy of the last good policy: it starts from that
// copy with the directory's error in its status and metrics, as a running watcher keeps
// the last good policy. NewWatcher failed, and with it the server's start, for one
// typo in one file (found from outside).
func TestNewWatcherStartsFromLastGood(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	last := filepath.Join(state, "last-good.json")
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	w, err := NewWatcher(WatcherConfig{Dir: dir, LastGood: last})
	if err != nil {
		t.Fatal(err)
	}
	good := w.Policy().Digest
	w.Close()

	// A typo: a soak without a unit.
	writeFile(t, filepath.Join(dir, "20-typo.yaml"), "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n")
	if _, err := NewWatcher(WatcherConfig{Dir: dir}); err == nil {
		t.Fatalf("NewWatcher(invalid directory, no copy) = nil error; want the directory's")
	}
	reg := prometheus.NewRegistry()
	w, err = NewWatcher(WatcherConfig{Dir: dir, LastGood: last, Registerer: reg})
	if err != nil {
		t.Fatalf("NewWatcher(invalid directory, last good copy) = %v; want it to start from the copy", err)
	}
	defer w.Close()
	st := w.Status()
	if w.Policy().Digest != good || rolloutID(w) != "a" {
		t.Errorf("policy in force = %s; want the last good one, %s", w.Policy().Digest, good)
	}
	if st.Err == nil || !strings.Contains(st.Error, "20-typo.yaml:4:") || st.Failures != 1 || st.Digest != good {
		t.Errorf("Status = %+v; want the directory's error (20-typo.yaml:4), one failure, the last good digest", st)
	}
	if v := metric(t, reg, "edgeward_policy_valid", ""); v != 0 {
		t.Errorf("edgeward_policy_valid = %v; want 0", v)
	}

	// Fixed: the directory loads and becomes the copy.
	writeFile(t, filepath.Join(dir, "20-typo.yaml"), "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10m}]\n")
	if err := w.Reload(); err != nil || w.Status().Err != nil || len(w.Policy().Rollouts) != 2 {
		t.Fatalf("Reload(fixed) = %v, %+v", err, w.Status())
	}
	fixed := w.Policy().Digest
	writeFile(t, filepath.Join(dir, "20-typo.yaml"), "rollouts: {}\n")
	w2, err := NewWatcher(WatcherConfig{Dir: dir, LastGood: last})
	if err != nil || w2.Policy().Digest != fixed {
		t.Fatalf("NewWatcher after the fix = %v; want the fixed policy %s from the copy", err, fixed)
	}
	w2.Close()

	// A copy of another directory's policy is not started from.
	other := t.TempDir()
	writeFile(t, filepath.Join(other, "fleet.yaml"), "rollouts: {}\n")
	if _, err := NewWatcher(WatcherConfig{Dir: other, LastGood: last}); err == nil || !strings.Contains(err.Error(), "not of "+other) {
		t.Errorf("NewWatcher(another directory's copy) = %v; want a refusal", err)
	}
}

// TestLastGoodKnowsItsDirectoryByAnyPath: the copy saved for a directory named by a
// relative path serves a start that names it by its absolute path (a relative --repo,
// then an absolute one: the copy was refused, found in review).
func TestLastGoodKnowsItsDirectoryByAnyPath(t *testing.T) {
	base := t.TempDir()
	t.Chdir(base)
	if err := os.Mkdir("policy", 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(base, "policy", "fleet.yaml"), policyV1)
	last := filepath.Join(base, "last-good.json")
	w, err := NewWatcher(WatcherConfig{Dir: "policy", LastGood: last})
	if err != nil {
		t.Fatal(err)
	}
	good := w.Policy().Digest
	w.Close()
	writeFile(t, filepath.Join(base, "policy", "20-typo.yaml"), "rollouts: [\n")
	w, err = NewWatcher(WatcherConfig{Dir: filepath.Join(base, "policy"), LastGood: last})
	if err != nil {
		t.Fatalf("start by the absolute path from the copy saved by the relative one: %v", err)
	}
	defer w.Close()
	if w.Policy().Digest != good {
		t.Errorf("policy in force %s; want the copy's %s", w.Policy().Digest, good)
	}
}

// TestRejectedSinceStays: the time a rejected directory is shown "since" is that of
// its first failed load, not of the latest attempt (another edit still wrong, or a
// retry), and a restart does not move it to the restart: it is then the directory's
// last change. Before, every attempt reset it, and a restart made a directory rejected
// for days read "since" the restart.
func TestRejectedSinceStays(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	last := filepath.Join(state, "last-good.json")
	base := time.Now().Truncate(time.Second)
	now := base.Add(-3 * time.Hour)
	clock := func() time.Time { return now }
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	if err := os.Chtimes(filepath.Join(dir, "fleet.yaml"), base.Add(-4*time.Hour), base.Add(-4*time.Hour)); err != nil {
		t.Fatal(err)
	}
	w, err := NewWatcher(WatcherConfig{Dir: dir, LastGood: last, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	typo := filepath.Join(dir, "20-typo.yaml")
	edit := func(at time.Time, content string) {
		t.Helper()
		writeFile(t, typo, content)
		for _, p := range []string{typo, dir} {
			if err := os.Chtimes(p, at, at); err != nil {
				t.Fatal(err)
			}
		}
	}
	first := now
	edit(first, "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n")
	if err := w.Reload(); err == nil || !w.Status().ErrAt.Equal(first) {
		t.Fatalf("Reload(typo) = %v, rejected since %v; want an error since %v", err, w.Status().ErrAt, first)
	}
	now = base.Add(-2 * time.Hour)
	second := now
	edit(second, "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10x}]\n")
	if err := w.Reload(); err == nil || !w.Status().ErrAt.Equal(first) {
		t.Errorf("Reload(another typo) = %v, rejected since %v; want still since the first failure, %v", err, w.Status().ErrAt, first)
	}
	w.Close()

	now = base // the restart
	w, err = NewWatcher(WatcherConfig{Dir: dir, LastGood: last, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if st := w.Status(); st.Err == nil || !st.ErrAt.Equal(second) {
		t.Errorf("after a restart, rejected since %v (%v); want the directory's last change, %v, not the restart %v", st.ErrAt, st.Err, second, now)
	}

	edit(now, "rollouts: []\n")
	if err := w.Reload(); err != nil || !w.Status().ErrAt.IsZero() {
		t.Fatalf("Reload(fixed) = %v, since %v; want no error and no time", err, w.Status().ErrAt)
	}
	now = base.Add(time.Minute)
	edit(now, "rollouts: [\n")
	if err := w.Reload(); err == nil || !w.Status().ErrAt.Equal(now) {
		t.Errorf("Reload(broken again) = %v, since %v; want since %v", err, w.Status().ErrAt, now)
	}
}
