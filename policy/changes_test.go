package policy

import (
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
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
