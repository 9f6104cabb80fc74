package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
)

// What a person on the device reads about a trial that restarts interrupted, and about
// the version given up for it.
func TestStatusWriteTrialStarts(t *testing.T) {
	deadline := time.Date(2026, 1, 1, 1, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		slot SlotStatus
		want []string
		not  []string
	}{
		{"first start", SlotStatus{Kind: "model", Phase: "trial", Installing: "1.1.0", InstallSlot: "b", TrialDeadline: deadline, TrialStarts: 1},
			[]string{"trial deadline: 2026-01-01T01:00:00Z"}, []string{"trial started", "given up"}},
		{"resumed", SlotStatus{Kind: "model", Phase: "trial", Installing: "1.1.0", InstallSlot: "b", TrialDeadline: deadline, TrialStarts: 2},
			[]string{"trial started 2 times, at most 3: restarts interrupted it"}, []string{"given up"}},
		{"given up", SlotStatus{Kind: "model", Phase: "rolled_back", Active: "a", Version: "1.0.0", Abandoned: "1.1.0",
			LastResult: "trial interrupted by a restart of the agent or device 3 times: the version may be taking the device down"},
			[]string{"model: rolled_back (the last install; 1.0.0 still serves)", "last result: trial interrupted by a restart", "given up: 1.1.0, refused and reported"}, []string{"trial started"}},
		{"failed on a full disk, the committed version serving", SlotStatus{Kind: "model", Phase: "failed", Active: "a", Version: "1.0.0",
			LastResult: "download: no space left on device"}, []string{"model: failed (the last install; 1.0.0 still serves)"}, nil},
		{"failed with nothing installed", SlotStatus{Kind: "model", Phase: "failed", LastResult: "download: no space left on device"},
			[]string{"model: failed\n", "active slot: none"}, []string{"still serves"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			Status{Slots: []SlotStatus{tc.slot}}.Write(&b)
			for _, w := range tc.want {
				if !strings.Contains(b.String(), w) {
					t.Errorf("status lacks %q:\n%s", w, b.String())
				}
			}
			for _, n := range tc.not {
				if strings.Contains(b.String(), n) {
					t.Errorf("status says %q:\n%s", n, b.String())
				}
			}
		})
	}
}

// TestStatusWriteIsInert: what a server said (its reasons, its error body) reaches the
// terminal escaped and bounded: a hostile server's escape sequences retitled the window,
// cleared the screen and wrote the clipboard of whoever ran 'edgeward-agent status', in
// 2 MiB of text (found from outside, 2 Dec).
func TestStatusWriteIsInert(t *testing.T) {
	evil := "\x1b]0;owned\x07\x1b[2J\x1b[31mFAKE: healthy\x1b]52;c;ZXZpbA==\x07" + strings.Repeat("A", 2<<20)
	var b strings.Builder
	Status{
		Slots:             []SlotStatus{{Kind: "model", Phase: "rolled_back", LastResult: evil}},
		LastCheckIn:       time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC),
		LastCheckInResult: "answered, but untrusted: " + evil,
		LastError:         &wire.UpdateError{Kind: "install", At: time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC), Message: evil},
	}.Write(&b)
	out := b.String()
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("status printed raw control characters:\n%q", out[:min(len(out), 300)])
	}
	if !strings.Contains(out, `\x1b]0;owned\x07`) {
		t.Errorf("status does not show the escapes as text:\n%q", out[:min(len(out), 300)])
	}
	if len(out) > 20<<10 {
		t.Errorf("status printed %d bytes for three 2 MiB messages; want them bounded", len(out))
	}
}
