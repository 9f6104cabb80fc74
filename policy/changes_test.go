package policy

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Issue 15 item 9: an attestation-policy reload (for example to required: false) left
// no record. OnChange sees every change with a summary, and a change it cannot record
// is not put in force.
func TestWatcherReportsChangesAndFailsClosed(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "attestation: {required: true}\n"+policyV1)
	var mu sync.Mutex
	var seen []map[string]any
	refuse := false
	w, err := NewWatcher(WatcherConfig{Dir: dir, OnChange: func(old, new *Policy) error {
		mu.Lock()
		defer mu.Unlock()
		if refuse {
			return errors.New("audit log unavailable")
		}
		seen = append(seen, Changes(old, new))
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	first := w.Policy().Digest
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "attestation: {required: false}\n"+policyV2)
	if err := w.Reload(); err != nil {
		t.Fatal(err)
	}
	if err := w.Reload(); err != nil { // same digest: not reported again
		t.Fatal(err)
	}
	mu.Lock()
	if len(seen) != 2 {
		t.Fatalf("OnChange calls = %d (%v); want 2 (the start and the change)", len(seen), seen)
	}
	c := seen[1]
	mu.Unlock()
	if c["previous_digest"] != first || c["attestation_required"] != false || c["attestation_required_was"] != true ||
		!slices.Equal(c["rollouts_added"].([]string), []string{"b"}) || !slices.Equal(c["rollouts_removed"].([]string), []string{"a"}) {
		t.Errorf("Changes = %v; want the digests, attestation required true→false, b added, a removed", c)
	}

	// A change that cannot be recorded stays out of force.
	mu.Lock()
	refuse = true
	mu.Unlock()
	before := w.Policy().Digest
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "attestation: {required: false}\n"+policyV1)
	if err := w.Reload(); err == nil || !strings.Contains(err.Error(), "audit log unavailable") {
		t.Errorf("Reload with OnChange failing = %v; want its error", err)
	}
	if w.Policy().Digest != before || w.Status().Err == nil {
		t.Errorf("policy in force = %s, status %+v; want the previous one and the error", w.Policy().Digest, w.Status())
	}
}

// TestChangesSummary: the audit record of a policy reload says exactly what changed, and
// names nothing that did not: an auditor reading "max age 30m → 1h" or "rollout b
// changed" must be able to trust both the entries and their absence.
func TestChangesSummary(t *testing.T) {
	parse := func(s string) *Policy {
		t.Helper()
		p, err := Parse(File{Name: "fleet.yaml", Data: []byte(s)})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	const rollouts = "rollouts:\n" +
		"  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector: {labels: {line: press}}\n" +
		"  - id: b\n    target: {kind: model, name: n, version: 1.0.0}\n"
	base := parse("attestation: {required: true, max_age: 30m}\ngates: {min_accuracy: 0.9}\n" + rollouts)
	keys := func(m map[string]any) []string {
		var out []string
		for k := range m {
			out = append(out, k)
		}
		slices.Sort(out)
		return out
	}
	always := []string{"attestation_required", "digest", "previous_digest", "rollouts"}
	for _, tc := range []struct {
		name string
		new  string
		want map[string]any // besides always
	}{
		{"nothing but the file's comments", "# reformatted\n" + "attestation: {required: true, max_age: 30m}\ngates: {min_accuracy: 0.9}\n" + rollouts, nil},
		{"max age", "attestation: {required: true, max_age: 1h}\ngates: {min_accuracy: 0.9}\n" + rollouts,
			map[string]any{"attestation_max_age": []string{"30m0s", "1h0m0s"}, "attestation_changed": true}},
		{"default gates", "attestation: {required: true, max_age: 30m}\ngates: {min_accuracy: 0.95}\n" + rollouts,
			map[string]any{"default_gates_changed": true}},
		{"a rollout's selector", "attestation: {required: true, max_age: 30m}\ngates: {min_accuracy: 0.9}\n" + strings.Replace(rollouts, "press", "paint", 1),
			map[string]any{"rollouts_changed": []string{"a"}}},
	} {
		c := Changes(base, parse(tc.new))
		want := slices.Clone(always)
		for k := range tc.want {
			want = append(want, k)
		}
		slices.Sort(want)
		if got := keys(c); !slices.Equal(got, want) {
			t.Errorf("%s: Changes names %v; want %v (%v)", tc.name, got, want, c)
			continue
		}
		for k, v := range tc.want {
			if !reflect.DeepEqual(c[k], v) {
				t.Errorf("%s: Changes[%q] = %v; want %v", tc.name, k, c[k], v)
			}
		}
		if c["previous_digest"] != base.Digest || c["rollouts"] != 2 || c["attestation_required"] != true {
			t.Errorf("%s: Changes = %v; want the previous digest, 2 rollouts, attestation required", tc.name, c)
		}
	}
}

// TestPolicyNotRecordedIsLoadedAgain: a policy that loaded but that OnChange could not
// record (the audit log's disk full) is loaded again by Run after a backoff, with no
// change to the directory, and goes into force once it can be recorded. Before, it
// stayed out of force until the directory changed again or the server restarted
// (found from outside, 2 Dec). A policy rejected for its files is not loaded again.
func TestPolicyNotRecordedIsLoadedAgain(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	var mu sync.Mutex
	full, calls := false, 0
	w, err := NewWatcher(WatcherConfig{Dir: dir, Debounce: 10 * time.Millisecond, RetryAfter: 50 * time.Millisecond, OnChange: func(old, new *Policy) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if full {
			return errors.New("database or disk is full")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	before := w.Policy().Digest
	mu.Lock()
	full = true
	mu.Unlock()
	changed := w.Changed()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV2)
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no load after the change")
	}
	if w.Policy().Digest != before || w.Status().Err == nil {
		t.Fatalf("with the audit log full: policy %s, status %+v; want the old policy and the error", w.Policy().Digest, w.Status())
	}
	time.Sleep(300 * time.Millisecond) // retried meanwhile, still full
	mu.Lock()
	retried := calls
	full = false
	mu.Unlock()
	if retried < 3 {
		t.Errorf("OnChange called %d times while full; want the load retried", retried)
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.Policy().Digest == before {
		if time.Now().After(deadline) {
			t.Fatalf("the policy was not put in force after the disk had room again: status %+v", w.Status())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if w.Status().Err != nil {
		t.Errorf("status after it went into force: %+v", w.Status())
	}
	// A file the parser rejects is not retried: only its next change loads it again.
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "rollouts: [\n")
	time.Sleep(300 * time.Millisecond)
	n := w.Status().Reloads
	time.Sleep(300 * time.Millisecond)
	if again := w.Status().Reloads; again != n {
		t.Errorf("a rejected file was loaded %d more times without a change", again-n)
	}
}
