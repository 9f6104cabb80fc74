package reposerver

import (
	"fmt"
	"testing"
	"time"
)

// TestReopenKeepsTheBound: while the audit log fails, summaries are put back into their
// windows; when new sources filled the windows meanwhile, the put-back ones are folded
// into the overflow window, so the windows held never pass maxRefusalWindows + 1 and
// no refusal is lost from the counts.
func TestReopenKeepsTheBound(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := &refusals{interval: time.Minute}
	key := func(i int) refusalKey {
		return refusalKey{source: fmt.Sprintf("10.0.%d.%d", i/256, i%256), device: "d", reason: "bad quote"}
	}
	for i := range maxRefusalWindows {
		r.note(key(i), t0, false)
		r.note(key(i), t0.Add(time.Second), false) // one more each: every window has a summary
	}
	// The windows close; the log fails, so they are all put back...
	r.mu.Lock()
	closed := r.closeLocked(t0.Add(2*time.Minute), false)
	r.mu.Unlock()
	if len(closed) != maxRefusalWindows {
		t.Fatalf("closed %d windows; want %d", len(closed), maxRefusalWindows)
	}
	// ...after new sources opened as many windows meanwhile.
	for i := range maxRefusalWindows {
		r.note(key(maxRefusalWindows+i), t0.Add(2*time.Minute), false)
	}
	r.reopen(closed)
	if n := len(r.open); n > maxRefusalWindows+1 {
		t.Fatalf("%d windows held after reopen; want at most %d", n, maxRefusalWindows+1)
	}
	counted := 0
	for _, w := range r.open {
		counted += w.count
	}
	if counted != maxRefusalWindows {
		t.Errorf("windows count %d refusals after reopen; want the %d put back", counted, maxRefusalWindows)
	}
	if w := r.open[overflowKey("")]; w == nil || w.count != maxRefusalWindows || !w.from.Equal(t0) {
		t.Errorf("overflow window %+v; want the %d put-back refusals from %v", w, maxRefusalWindows, t0)
	}
}

// TestAuthenticatedRefusalsKeepTheirWindow: once strangers fill every window, their
// next refusals share the overflow window (recorded once), but a device the server
// authenticated (a decommissioned one) still gets a window, and so a record, of its own.
func TestAuthenticatedRefusalsKeepTheirWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	r := &refusals{interval: time.Minute}
	for i := range maxRefusalWindows {
		if first, _, _ := r.note(refusalKey{source: fmt.Sprintf("10.0.%d.%d", i/256, i%256), device: fmt.Sprintf("junk-%d", i), reason: "bad quote"}, t0, false); !first {
			t.Fatalf("stranger %d: not the first of its window", i)
		}
	}
	stranger := refusalKey{source: "10.9.9.9", device: "junk-x", reason: "bad quote"}
	if first, _, _ := r.note(stranger, t0, false); !first {
		t.Fatal("the first overflowing stranger opens the overflow window")
	}
	if first, _, _ := r.note(refusalKey{source: "10.9.9.8", device: "junk-y", reason: "bad quote"}, t0, false); first {
		t.Fatal("a second overflowing stranger was recorded on its own; want it counted in the overflow")
	}
	dev := refusalKey{source: "192.0.2.7", device: "dev-decommissioned", reason: "device decommissioned"}
	if first, _, _ := r.note(dev, t0, true); !first {
		t.Fatal("an authenticated refusal was folded into the overflow window")
	}
	if _, ok := r.open[dev]; !ok {
		t.Fatal("the authenticated refusal has no window of its own")
	}
}

// TestOneSourceHasItsOwnBound: one source naming ever new devices or EKs (random EK
// public areas cost nothing) opens at most maxWindowsPerSource windows, then shares one
// window of its own: it adds about 2 × (maxWindowsPerSource+1) records an interval, and
// leaves the other windows to other sources. (It took every window before: 771 records
// in 130 s from one client, found from outside, 2 Dec.) The overflow windows keep their
// kind: enrollment refusals are summarised as enrollment refusals.
func TestOneSourceHasItsOwnBound(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	r := &refusals{interval: time.Minute}
	firsts := 0
	for i := range 10000 {
		if first, _, _ := r.note(refusalKey{kind: "enrollment.rejected", source: "203.0.113.9", device: fmt.Sprintf("urn:ek:sha256:%d", i), reason: "EK certificate: missing"}, t0, false); first {
			firsts++
		}
	}
	if firsts != maxWindowsPerSource+1 {
		t.Fatalf("one source naming 10,000 EKs: %d first records; want %d", firsts, maxWindowsPerSource+1)
	}
	own := sourceOverflowKey("enrollment.rejected", "203.0.113.9")
	if w := r.open[own]; w == nil || w.count != 10000-firsts {
		t.Fatalf("the source's own overflow window = %+v; want %d refusals counted", w, 10000-firsts)
	}
	if first, _, _ := r.note(refusalKey{kind: "enrollment.rejected", source: "198.51.100.1", device: "urn:ek:sha256:x", reason: "EK certificate: missing"}, t0, false); !first {
		t.Fatal("another source's refusal was not a first")
	}
	r.mu.Lock()
	closed := r.closeLocked(t0.Add(2*time.Minute), false)
	r.mu.Unlock()
	if len(closed) != 1 || closed[0].Kind != "enrollment.rejected" || closed[0].Source != "203.0.113.9" || closed[0].Device != "*" {
		t.Fatalf("summaries %+v; want the source's overflow, as an enrollment refusal", closed)
	}
	if len(r.open) != 0 || len(r.perSource) != 0 {
		t.Fatalf("after every window closed: %d open, per source %v", len(r.open), r.perSource)
	}
	// Past the total, each kind has its own overflow window.
	for i := range maxRefusalWindows {
		r.note(refusalKey{source: fmt.Sprintf("10.1.%d.%d", i/256, i%256), device: "d", reason: "bad quote"}, t0, false)
	}
	r.note(refusalKey{kind: "enrollment.challenge", source: "10.2.0.1", device: "e", reason: ""}, t0, false)
	if _, ok := r.open[overflowKey("enrollment.challenge")]; !ok {
		t.Fatal("an enrollment refusal past the total went to another kind's overflow window")
	}
}

// TestForgetTheWindowCounted: a refusal folded into an overflow window whose first
// record could not be written forgets that window (the one it was counted in), not the
// key it came with: the overflow's next refusal is then a first again, recorded on its
// own, rather than counted into a summary that says the first had its record.
func TestForgetTheWindowCounted(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	r := &refusals{interval: time.Minute}
	for i := range maxWindowsPerSource {
		r.note(refusalKey{source: "203.0.113.9", device: fmt.Sprint("d", i), reason: "bad quote"}, t0, false)
	}
	k := refusalKey{source: "203.0.113.9", device: "d-next", reason: "bad quote"}
	first, _, used := r.note(k, t0, false)
	if !first || used != sourceOverflowKey("", "203.0.113.9") {
		t.Fatalf("note = %v, %+v; want the first of the source's overflow window", first, used)
	}
	r.forget(used, t0) // its record failed
	if first, _, _ := r.note(k, t0, false); !first {
		t.Fatal("after the overflow's first record failed, the next refusal is not a first")
	}
}
