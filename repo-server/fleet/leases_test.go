package fleet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgeward/edgeward/policy"
)

// One holder at a time: a lease is renewed by its holder, refused to others until it
// expires, then taken with a new token; a release hands it over at once; and a store
// fenced with an old grant writes nothing once another replica holds the lease.
func testLeases(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoStores(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	ttl := 6 * time.Second
	cur := t0 // the leases' clock, driven by hand
	a.UseLeaseClock(func() time.Time { return cur })
	b.UseLeaseClock(func() time.Time { return cur })
	acquire := func(st *Store, holder string, at time.Duration) Lease {
		t.Helper()
		cur = t0.Add(at)
		l, err := st.AcquireLease(ctx, "leader", holder, ttl, t0.Add(at))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	want := func(l Lease, holder string, token int64) {
		t.Helper()
		if l.Holder != holder || l.Token != token {
			t.Fatalf("lease = %s token %d; want %s token %d", l.Holder, l.Token, holder, token)
		}
	}
	la := acquire(a, "replica-a", 0)
	want(la, "replica-a", 1)
	want(acquire(b, "replica-b", 0), "replica-a", 1)
	la = acquire(a, "replica-a", 4*time.Second) // renewed until 10 s
	want(la, "replica-a", 1)
	want(acquire(b, "replica-b", 9*time.Second), "replica-a", 1)
	if !la.Held("replica-a", t0.Add(9*time.Second)) || la.Held("replica-a", t0.Add(10*time.Second)) {
		t.Fatalf("Held: lease until %v", la.Expires)
	}

	// replica-a dies (renews no more): at its expiry replica-b takes over.
	lb := acquire(b, "replica-b", 10*time.Second)
	want(lb, "replica-b", 2)
	// The dead holder, back from a pause, cannot renew it, and its fenced writes fail.
	want(acquire(a, "replica-a", 11*time.Second), "replica-b", 2)
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(`version: 1
rollouts:
  - id: r1
    target: {kind: model, name: m, version: 1.0.0}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Fenced(la).PlanRollouts(ctx, pol, t0.Add(11*time.Second)); !errors.Is(err, ErrLeaseLost) {
		t.Fatalf("PlanRollouts(fenced with the lost lease) = %v; want ErrLeaseLost", err)
	}
	if _, err := b.Fenced(lb).PlanRollouts(ctx, pol, t0.Add(11*time.Second)); err != nil {
		t.Fatalf("PlanRollouts(fenced with the held lease) = %v", err)
	}

	// A release hands over at once, with a new token.
	if err := b.ReleaseLease(ctx, lb); err != nil {
		t.Fatal(err)
	}
	want(acquire(a, "replica-a", 12*time.Second), "replica-a", 3)
	// Releasing a lease one no longer holds changes nothing.
	if err := b.ReleaseLease(ctx, lb); err != nil {
		t.Fatal(err)
	}
	want(acquire(b, "replica-b", 13*time.Second), "replica-a", 3)
}

// testLeasesUseTheDatabaseClock: expiry is judged by the database's clock, not by the
// callers': a replica whose clock runs 7 s ahead does not take a lease still held, and
// a holder whose clock runs 10 s behind is not taken over early; once the lease's time
// has really passed, it is taken. (With each caller's clock, both used to happen.)
func testLeasesUseTheDatabaseClock(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoStores(t, db)
	ttl := 2 * time.Second
	behind := time.Now().Add(-10 * time.Second)
	la, err := a.AcquireLease(ctx, "publish", "cli-behind", ttl, behind)
	if err != nil || la.Holder != "cli-behind" {
		t.Fatalf("lease = %+v, %v", la, err)
	}
	if !la.Held("cli-behind", behind) {
		t.Fatalf("Held in the holder's own clock: expires %v, its now %v", la.Expires, behind)
	}
	lb, err := b.AcquireLease(ctx, "publish", "replica-ahead", ttl, time.Now().Add(7*time.Second))
	if err != nil || lb.Holder != "cli-behind" || lb.Token != la.Token {
		t.Fatalf("a replica 7 s ahead, with the lease 2 s old at most = %+v, %v; want it still cli-behind's", lb, err)
	}
	time.Sleep(ttl + 500*time.Millisecond)
	lb, err = b.AcquireLease(ctx, "publish", "replica-ahead", ttl, time.Now().Add(7*time.Second))
	if err != nil || lb.Holder != "replica-ahead" || lb.Token != la.Token+1 {
		t.Fatalf("after the lease's time = %+v, %v; want it taken by replica-ahead", lb, err)
	}
}

// twoStores opens two stores (two replicas) on one fresh database of db, closed when
// the test ends.
func twoStores(t *testing.T, db opener) (a, b *Store) {
	t.Helper()
	where := db(t)
	for _, st := range []**Store{&a, &b} {
		s, err := Open(context.Background(), where)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		*st = s
	}
	return a, b
}
