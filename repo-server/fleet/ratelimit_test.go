package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// testRateLimitsInTheDatabase: two stores on one database (two replicas) count into
// the same bucket; a refused attempt takes nothing; the bucket refills with time,
// expires once full, and past Max buckets the one used longest ago is forgotten.
func testRateLimitsInTheDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	where := db(t)
	var st [2]*Store
	for i := range st {
		s, err := Open(ctx, where)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		st[i] = s
	}
	l := Limit{Burst: 3, Every: time.Minute, Max: 3}
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	take := func(s *Store, key string, at time.Time) (bool, time.Duration) {
		t.Helper()
		ok, wait, err := s.TakeAttempt(ctx, key, l, at)
		if err != nil {
			t.Fatal(err)
		}
		return ok, wait
	}
	rows := func() int {
		var n int
		if err := st[0].DB().QueryRowContext(ctx, `SELECT count(*) FROM rate_limits`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The burst, taken at both replicas, is one burst.
	for i, s := range []*Store{st[0], st[1], st[0]} {
		if ok, _ := take(s, "signin:198.51.100.7", t0); !ok {
			t.Fatalf("attempt %d of the burst refused", i+1)
		}
	}
	for i, s := range st {
		if ok, wait := take(s, "signin:198.51.100.7", t0.Add(time.Second)); ok || wait.Round(time.Second) != 59*time.Second {
			t.Errorf("replica %d: attempt past the burst = %v, wait %v; want refused, 59s", i, ok, wait)
		}
		if ok, wait, err := s.AttemptsLeft(ctx, "signin:198.51.100.7", l, t0.Add(time.Second)); ok || wait.Round(time.Second) != 59*time.Second || err != nil {
			t.Errorf("replica %d: AttemptsLeft = %v, %v, %v; want none left for 59s", i, ok, wait, err)
		}
	}
	// Another source has its own bucket.
	if ok, _ := take(st[1], "signin:198.51.100.8", t0.Add(time.Second)); !ok {
		t.Error("another source refused")
	}
	// One attempt a minute comes back; refused attempts took nothing.
	if ok, _ := take(st[1], "signin:198.51.100.7", t0.Add(time.Minute)); !ok {
		t.Error("the refilled attempt refused")
	}
	if ok, _ := take(st[0], "signin:198.51.100.7", t0.Add(time.Minute+time.Second)); ok {
		t.Error("a second attempt within the minute allowed")
	}
	// Bounded: a fourth source forgets the one used longest ago (198.51.100.8 at t0+1s,
	// unless .7 at t0+1m is older: it is not).
	take(st[0], "signin:198.51.100.9", t0.Add(2*time.Minute))
	take(st[0], "signin:198.51.100.10", t0.Add(2*time.Minute))
	if n := rows(); n != 3 {
		t.Errorf("%d buckets; want at most Max = 3", n)
	}
	if ok, _, _ := st[1].AttemptsLeft(ctx, "signin:198.51.100.8", Limit{Burst: 1, Every: time.Hour}, t0.Add(2*time.Minute)); !ok {
		t.Error("the forgotten source's bucket is still there")
	}
	// Expiring: once every bucket would be full again, the next take drops them all.
	take(st[1], "bearer:203.0.113.1", t0.Add(time.Hour))
	if n := rows(); n != 1 {
		t.Errorf("%d buckets an hour later; want only the new one (the full ones expired)", n)
	}
	for i := range 10 {
		take(st[i%2], fmt.Sprintf("bearer:203.0.113.%d", i+2), t0.Add(time.Hour))
	}
	if n := rows(); n != 3 {
		t.Errorf("%d buckets after 11 sources; want Max = 3", n)
	}
}
