package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// Enrollment challenges live in the database: one replica adds, another takes, once;
// and the bounds of issue 15 (one per EK, per source, a fair global cap) hold over
// the challenges of both replicas.
func testChallengesInTheDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	seq := 0
	ch := func(source, ek string) Challenge {
		seq++
		return Challenge{ID: fmt.Sprintf("c%03d", seq), EKID: ek, Source: source, Secret: []byte{byte(seq)}, AKPublic: []byte("ak"),
			Manufacturer: "id:41434D45", Model: "Acme", Version: "id:1", Expires: t0.Add(time.Duration(seq) * time.Second)}
	}
	add := func(st *Store, c Challenge, max, per int) error { return st.AddChallenge(ctx, c, max, per, t0) }
	taken := func(st *Store, id string) bool {
		t.Helper()
		c, err := st.TakeChallenge(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return c != nil
	}

	// Issued at a, answered at b, once.
	c1 := ch("10.0.0.1", "ek-1")
	if err := add(a, c1, 100, 10); err != nil {
		t.Fatal(err)
	}
	got, err := b.TakeChallenge(ctx, c1.ID)
	if err != nil || got == nil || got.EKID != "ek-1" || string(got.Secret) != string(c1.Secret) || got.Model != "Acme" || !got.Expires.Equal(c1.Expires) {
		t.Fatalf("TakeChallenge(at the other replica) = %+v, %v; want %+v", got, err, c1)
	}
	if taken(a, c1.ID) || taken(b, c1.ID) {
		t.Fatal("a challenge was taken twice")
	}

	// One per EK: a replayed EK certificate replaces its own pending challenge.
	first := ch("evil", "ek-public")
	add(a, first, 100, 10)
	for i := 0; i < 5; i++ {
		if err := add(b, ch("evil", "ek-public"), 100, 10); err != nil {
			t.Fatal(err)
		}
	}
	if taken(b, first.ID) {
		t.Error("the EK's first challenge survived a new one for the same EK from the same source")
	}
	// From another source it stays: one who knows a device's public EK certificate must
	// not replace the device's own challenge (which kept it from enrolling).
	victim := ch("victim", "ek-victim")
	add(a, victim, 100, 10)
	var evil Challenge
	for range 5 {
		evil = ch("evil", "ek-victim")
		if err := add(b, evil, 100, 10); err != nil {
			t.Fatal(err)
		}
	}
	if !taken(a, victim.ID) {
		t.Error("a device's challenge was replaced by another source's for its EK")
	}
	if !taken(b, evil.ID) { // (and "evil" holds one again, below)
		t.Error("the other source's own challenge is not there")
	}

	// Per source: past its bound a source loses its own oldest.
	var flood []Challenge
	for i := 0; i < 20; i++ {
		c := ch("flooder", fmt.Sprintf("ek-f%d", i))
		flood = append(flood, c)
		st := a
		if i%2 == 1 {
			st = b
		}
		if err := add(st, c, 8, 6); err != nil {
			t.Fatalf("flood %d: %v", i, err)
		}
	}
	if taken(a, flood[0].ID) {
		t.Error("the flooder's first challenge survived its per-source bound")
	}
	// Now flooder holds 5, "evil" 1 (ek-public): 6 of 8. Two more sources fill the cap.
	for i := 0; i < 2; i++ {
		if err := add(b, ch(fmt.Sprintf("other-%d", i), fmt.Sprintf("ek-o%d", i)), 8, 6); err != nil {
			t.Fatal(err)
		}
	}
	// At the cap a newcomer evicts the largest holder's oldest (flood[1]).
	newcomer := ch("device", "ek-genuine")
	if err := add(a, newcomer, 8, 6); err != nil {
		t.Fatalf("AddChallenge(newcomer at the cap) = %v; want room made", err)
	}
	if taken(b, flood[1].ID) {
		t.Error("the largest holder's oldest challenge survived the newcomer at the cap")
	}
	if !taken(b, newcomer.ID) {
		t.Error("the newcomer's challenge is not there")
	}

	// At the cap, a source holding as much as every other is refused.
	busy := func(st *Store) {
		t.Helper()
		c := ch("a", "ek-busy")
		if err := add(st, c, 2, 2); !errors.Is(err, ErrChallengesFull) {
			t.Fatalf("AddChallenge(at the cap, fair share held) = %v; want ErrChallengesFull", err)
		}
		if taken(st, c.ID) {
			t.Fatal("a refused challenge was stored")
		}
	}
	c, err := Open(ctx, db(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	add(c, ch("a", "ek-a"), 2, 2)
	add(c, ch("b", "ek-b"), 2, 2)
	busy(c)

	// Expired challenges are dropped when a new one is added, and cannot be taken
	// after that.
	old := ch("x", "ek-old")
	old.Expires = t0.Add(-time.Second)
	d, err := Open(ctx, db(t))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	add(d, old, 100, 10)
	add(d, ch("y", "ek-new"), 100, 10)
	if taken(d, old.ID) {
		t.Error("an expired challenge survived the next AddChallenge")
	}
}
