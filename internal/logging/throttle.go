package logging

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Throttle logs a recurring failure once per period rather than once per occurrence:
// during an outage of a dependency every request fails the same way, and a line per
// request (one per refused device check-in, at fleet scale) buries everything else.
// The first failure is logged at once; later ones within Period are counted, and the
// next line logged says how many were not; Recovered logs once that the failures
// stopped, with the count since the last line. Safe for concurrent use. The zero
// value logs to slog.Default once a minute.
type Throttle struct {
	Logger *slog.Logger
	Period time.Duration    // 0: a minute
	Now    func() time.Time // nil: time.Now

	mu         sync.Mutex
	failing    bool
	lastLogged time.Time
	suppressed int
	total      int
	since      time.Time
}

// Failed logs msg with args at ERROR, unless a failure was logged within Period: then
// it is only counted.
func (t *Throttle) Failed(msg string, args ...any) {
	now := t.now()
	t.mu.Lock()
	if !t.failing {
		t.failing, t.since, t.total = true, now, 0
	}
	t.total++
	if !t.lastLogged.IsZero() && now.Sub(t.lastLogged) < t.period() {
		t.suppressed++
		t.mu.Unlock()
		return
	}
	n := t.suppressed
	t.suppressed, t.lastLogged = 0, now
	t.mu.Unlock()
	if n > 0 {
		args = append(args, "not_logged_since_last", n)
	}
	t.logger().Log(context.Background(), slog.LevelError, msg, args...)
}

// Recovered logs msg at INFO once after failures (how many, and for how long), and
// nothing when there were none since the last Recovered.
func (t *Throttle) Recovered(msg string, args ...any) {
	t.mu.Lock()
	if !t.failing {
		t.mu.Unlock()
		return
	}
	total, since := t.total, t.since
	t.failing, t.suppressed, t.lastLogged, t.total = false, 0, time.Time{}, 0
	t.mu.Unlock()
	args = append(args, "failures", total, "for", t.now().Sub(since).Round(time.Second).String())
	t.logger().Info(msg, args...)
}

func (t *Throttle) now() time.Time {
	if t.Now != nil {
		return t.Now()
	}
	return time.Now()
}

func (t *Throttle) period() time.Duration {
	if t.Period > 0 {
		return t.Period
	}
	return time.Minute
}

func (t *Throttle) logger() *slog.Logger {
	if t.Logger != nil {
		return t.Logger
	}
	return slog.Default()
}
