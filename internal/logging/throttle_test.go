package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestThrottle: a thousand failures in a minute are three lines, not a thousand: the
// first at once, one per period after it saying how many were not logged, and one when
// they stop, saying how many there were and for how long.
func TestThrottle(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	th := &Throttle{Logger: slog.New(slog.NewTextHandler(&buf, nil)), Period: 30 * time.Second, Now: func() time.Time { return now }}
	th.Recovered("answering again") // nothing failed: nothing to say
	for range 1000 {
		th.Failed("check-in refused", "err", "database is not answering")
		now = now.Add(50 * time.Millisecond)
	}
	th.Recovered("answering again")
	th.Recovered("answering again") // said once
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("%d lines for 1000 failures over 50 s and a recovery; want 3:\n%s", len(lines), buf.String())
	}
	for i, want := range []string{
		"level=ERROR msg=\"check-in refused\" err=\"database is not answering\"",
		"not_logged_since_last=599",
		"level=INFO msg=\"answering again\" failures=1000 for=50s",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %s; want it to contain %s", i+1, lines[i], want)
		}
	}
	// A new outage is logged at once again.
	buf.Reset()
	th.Failed("check-in refused")
	if !strings.Contains(buf.String(), "level=ERROR") {
		t.Errorf("first failure of a new outage not logged: %q", buf.String())
	}
}
