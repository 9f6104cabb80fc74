package ui

import (
	"net"
	"net/http"
	"sync"
	"time"
)

// limiter is a token bucket per source address: burst attempts at once, then one per
// every. It tracks at most max sources; when full, the source seen longest ago is
// forgotten (a forgotten source starts again with a full bucket, which is no worse
// than the burst). Safe for concurrent use.
type limiter struct {
	burst int
	every time.Duration
	max   int

	mu sync.Mutex
	m  map[string]*bucket
}

type bucket struct {
	tokens float64
	at     time.Time
}

func newLimiter(burst int, every time.Duration, max int) *limiter {
	return &limiter{burst: burst, every: every, max: max, m: map[string]*bucket{}}
}

// allow takes one attempt for src at now; when none is left it returns false and how
// long until the next one.
func (l *limiter) allow(src string, now time.Time) (bool, time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[src]
	if b == nil {
		if len(l.m) >= l.max {
			var oldest string
			for k, v := range l.m {
				if oldest == "" || v.at.Before(l.m[oldest].at) {
					oldest = k
				}
			}
			delete(l.m, oldest)
		}
		b = &bucket{tokens: float64(l.burst), at: now}
		l.m[src] = b
	}
	if el := now.Sub(b.at); el > 0 {
		b.tokens = min(float64(l.burst), b.tokens+float64(el)/float64(l.every))
	}
	b.at = now
	if b.tokens < 1 {
		return false, time.Duration((1 - b.tokens) * float64(l.every))
	}
	b.tokens--
	return true, 0
}

// source is the address a request came from (the peer, not a header a client sets).
func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
