package policy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

const policyV1 = "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n"
const policyV2 = "rollouts:\n  - id: b\n    target: {kind: model, name: m, version: 2.0.0}\n"

// startWatcher writes policyV1 to dir/fleet.yaml and runs a Watcher on dir.
func startWatcher(t *testing.T) (*Watcher, string, *prometheus.Registry) {
	t.Helper()
	return startWatcherAt(t, nil)
}

// startWatcherAt is startWatcher with the watcher's clock (nil: time.Now).
func startWatcherAt(t *testing.T, now func() time.Time) (*Watcher, string, *prometheus.Registry) {
	t.Helper()
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	reg := prometheus.NewRegistry()
	w, err := NewWatcher(WatcherConfig{Dir: dir, Registerer: reg, Debounce: 20 * time.Millisecond, Now: now})
	if err != nil {
		t.Fatalf("NewWatcher = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	})
	return w, dir, reg
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitFor waits until cond holds, re-checking after each load attempt.
func waitFor(t *testing.T, w *Watcher, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		ch := w.Changed()
		if cond() {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("%s: not within %v (status %+v)", what, timeout, w.Status())
		}
	}
}

func rolloutID(w *Watcher) string { return w.Policy().Rollouts[0].ID }

func metric(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && !hasLabel(m, label) {
				continue
			}
			if m.Gauge != nil {
				return m.Gauge.GetValue()
			}
			return m.Counter.GetValue()
		}
	}
	t.Fatalf("metric %s{%s} not found", name, label)
	return 0
}

func hasLabel(m *dto.Metric, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetValue() == value {
			return true
		}
	}
	return false
}

func TestWatchValidEdit(t *testing.T) {
	started := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	edited := started.Add(time.Minute)
	var clock atomic.Int64
	clock.Store(started.UnixNano())
	w, dir, reg := startWatcherAt(t, func() time.Time { return time.Unix(0, clock.Load()).UTC() })
	if st := w.Status(); !st.LoadedAt.Equal(started) {
		t.Fatalf("initial LoadedAt = %v; want %v", st.LoadedAt, started)
	}
	if rolloutID(w) != "a" || metric(t, reg, "edgeward_policy_valid", "") != 1 {
		t.Fatalf("initial policy: %s", rolloutID(w))
	}
	// No wall-clock bound (a loaded machine may take seconds): the edit must be applied
	// by the reload its file event triggers, which the watcher's clock stamps.
	clock.Store(edited.UnixNano())
	before := w.Status().Reloads
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV2)
	waitFor(t, w, 5*time.Second, "edit applied", func() bool { return rolloutID(w) == "b" })
	st := w.Status()
	if st.Err != nil || st.Digest != w.Policy().Digest {
		t.Errorf("status = %+v", st)
	}
	if !st.LoadedAt.Equal(edited) {
		t.Errorf("LoadedAt = %v; want the time of the edit %v (the load that applied it)", st.LoadedAt, edited)
	}
	if st.Reloads-before < 1 {
		t.Errorf("reloads after the edit = %d; want >= 1", st.Reloads-before)
	}
	// The metrics count the same loads as the status. os.WriteFile truncates before it
	// writes, so the watcher may have read the file empty in between (a failed load,
	// the last good policy kept) and may still be loading: read the counters, the
	// status and the counters again until no load came in between.
	for i := 0; ; i++ {
		ok := metric(t, reg, "edgeward_policy_reloads_total", "success")
		bad := metric(t, reg, "edgeward_policy_reloads_total", "failure")
		st = w.Status()
		if ok == metric(t, reg, "edgeward_policy_reloads_total", "success") && bad == metric(t, reg, "edgeward_policy_reloads_total", "failure") {
			if ok != float64(st.Reloads-st.Failures) || bad != float64(st.Failures) {
				t.Errorf("reloads: success %v, failure %v; the status says %d loads, %d failed", ok, bad, st.Reloads, st.Failures)
			}
			break
		}
		if i == 100 {
			t.Fatal("the policy kept reloading")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got := metric(t, reg, "edgeward_policy_rollouts", ""); got != 1 {
		t.Errorf("rollouts gauge = %v", got)
	}
}

func TestWatchInvalidEditKeepsLastGood(t *testing.T) {
	w, dir, reg := startWatcher(t)
	good := w.Policy()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1+"    wavez: []\n")
	waitFor(t, w, 5*time.Second, "invalid edit rejected", func() bool { return w.Status().Err != nil })
	st := w.Status()
	if want := "fleet.yaml:4: unknown field wavez"; !strings.Contains(st.Error, want) {
		t.Errorf("status error = %q; want it to contain %q", st.Error, want)
	}
	if w.Policy() != good {
		t.Errorf("policy changed after an invalid edit")
	}
	if v := metric(t, reg, "edgeward_policy_valid", ""); v != 0 {
		t.Errorf("edgeward_policy_valid = %v; want 0", v)
	}
	if v := metric(t, reg, "edgeward_policy_reloads_total", "failure"); v < 1 {
		t.Errorf("failures = %v; want >= 1", v)
	}
	// Fixing the file clears the error.
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV2)
	waitFor(t, w, 5*time.Second, "fix applied", func() bool { return rolloutID(w) == "b" && w.Status().Err == nil })
	if v := metric(t, reg, "edgeward_policy_valid", ""); v != 1 {
		t.Errorf("edgeward_policy_valid = %v; want 1", v)
	}
}

func TestWatchRemoveAndRecreate(t *testing.T) {
	w, dir, _ := startWatcher(t)
	path := filepath.Join(dir, "fleet.yaml")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "removal noticed", func() bool { return w.Status().Err != nil })
	if !strings.Contains(w.Status().Error, "no policy files") || rolloutID(w) != "a" {
		t.Errorf("after removal: status %q, rollout %s; want an error and the old policy", w.Status().Error, rolloutID(w))
	}
	writeFile(t, path, policyV2)
	waitFor(t, w, 5*time.Second, "recreated file loaded", func() bool { return rolloutID(w) == "b" && w.Status().Err == nil })
}

func TestWatchDirectoryReplaced(t *testing.T) {
	w, dir, _ := startWatcher(t)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "removal noticed", func() bool { return w.Status().Err != nil })
	if rolloutID(w) != "a" {
		t.Errorf("policy changed when its directory went away")
	}
	// A deploy that recreates the directory (rm -r, then copy) is picked up.
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV2)
	waitFor(t, w, 5*time.Second, "recreated directory loaded", func() bool { return rolloutID(w) == "b" && w.Status().Err == nil })
	// And it is watched again.
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	waitFor(t, w, 5*time.Second, "edit in recreated directory", func() bool { return rolloutID(w) == "a" })
}

func TestWatchEditorRenames(t *testing.T) {
	w, dir, _ := startWatcher(t)
	path := filepath.Join(dir, "fleet.yaml")
	// Atomic save (VS Code, many tools): write a temporary file, rename it over the original.
	tmp := filepath.Join(dir, ".fleet.yaml.tmp123")
	writeFile(t, tmp, policyV2)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "rename-over applied", func() bool { return rolloutID(w) == "b" })

	// vim with backupcopy=no: move the original to a backup, write a new file, delete the backup.
	if err := os.Rename(path, path+"~"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, policyV1)
	if err := os.Remove(path + "~"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "backup-and-write applied", func() bool { return rolloutID(w) == "a" && w.Status().Err == nil })

	// Kubernetes ConfigMap: files are symlinks through ..data, swapped by a rename.
	for _, d := range []string{"..v1", "..v2"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(t, filepath.Join(dir, "..v1", "k8s.yaml"), "windows:\n  - {name: w1, days: [all], from: '01:00', to: '02:00'}\n")
	writeFile(t, filepath.Join(dir, "..v2", "k8s.yaml"), "windows:\n  - {name: w2, days: [all], from: '01:00', to: '02:00'}\n")
	if err := os.Symlink("..v1", filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "k8s.yaml"), filepath.Join(dir, "k8s.yaml")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "symlinked file loaded", func() bool { return w.Policy().Windows["w1"] != nil })
	if err := os.Symlink("..v2", filepath.Join(dir, "..data_tmp")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "ConfigMap swap applied", func() bool { return w.Policy().Windows["w2"] != nil })
}

func TestNewWatcherRejectsInvalidStart(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "rollouts: {}\n")
	if _, err := NewWatcher(WatcherConfig{Dir: dir}); err == nil || !strings.Contains(err.Error(), "fleet.yaml:1:") {
		t.Errorf("NewWatcher(invalid) = %v; want an error with file and line", err)
	}
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	reg := prometheus.NewRegistry()
	w, err := NewWatcher(WatcherConfig{Dir: dir, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if _, err := NewWatcher(WatcherConfig{Dir: dir, Registerer: reg}); err == nil {
		t.Errorf("second watcher on the same registry: want a registration error")
	}
}
