package updater

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// server acknowledges reports when up, and remembers IDs so duplicates are ignored.
type server struct {
	up   bool
	seen map[string]int
	drop int // acknowledge all but the first drop messages of the next batch
}

func (s *server) Send(_ context.Context, msgs []Message) ([]string, error) {
	if !s.up {
		return nil, errors.New("network unreachable")
	}
	var acked []string
	for i, m := range msgs {
		s.seen[m.ID]++
		if i < s.drop {
			continue
		}
		acked = append(acked, m.ID)
	}
	s.drop = 0
	return acked, nil
}

func TestOutboxStoreAndForward(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "outbox.db")
	o, err := OpenOutbox(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	srv := &server{seen: map[string]int{}}
	b := Backoff{Base: time.Minute, Max: time.Hour}
	zero := func() float64 { return 0 }
	// Three days offline: reports accumulate, each flush fails and backs off.
	for i := range 5 {
		if _, err := o.Put(ctx, "install", map[string]any{"n": i}, now); err != nil {
			t.Fatal(err)
		}
		if n, err := o.Flush(ctx, srv, now, b, zero); err == nil || n != 0 {
			t.Fatalf("Flush offline = %d, %v; want an error", n, err)
		}
		now = now.Add(18 * time.Hour)
	}
	// The agent restarts: nothing is lost.
	o.Close()
	if o, err = OpenOutbox(ctx, path); err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if n, _ := o.Len(ctx); n != 5 {
		t.Fatalf("after a restart the outbox holds %d reports; want 5", n)
	}
	srv.up, srv.drop = true, 2
	if n, err := o.Flush(ctx, srv, now, b, zero); n != 3 || err != nil {
		t.Fatalf("Flush with two unacknowledged = %d, %v; want 3", n, err)
	}
	if due, _ := o.Due(ctx, now, 10); len(due) != 0 {
		t.Errorf("unacknowledged reports due again at once: %d", len(due))
	}
	now = now.Add(time.Hour)
	if n, err := o.Flush(ctx, srv, now, b, zero); n != 2 || err != nil {
		t.Fatalf("retry Flush = %d, %v; want 2", n, err)
	}
	if n, _ := o.Len(ctx); n != 0 {
		t.Errorf("outbox holds %d after every report was acknowledged", n)
	}
	for id, c := range srv.seen {
		if c > 2 {
			t.Errorf("report %s sent %d times", id, c)
		}
	}
	if _, err := o.Put(ctx, "install", string(make([]byte, MaxMessageBytes)), now); err == nil {
		t.Errorf("Put of an oversized report succeeded")
	}
}

// refusing is a server that refuses the messages whose body contains "poison": by ID
// (named), or, whole, the entire request carrying one.
type refusing struct {
	whole bool
	sends [][]string
	down  bool // fail with a network error from the next single send on
}

func (s *refusing) Send(_ context.Context, msgs []Message) ([]string, error) {
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	s.sends = append(s.sends, ids)
	if s.down && len(msgs) == 1 {
		return nil, errors.New("network unreachable")
	}
	re := &RefusedError{Reasons: map[string]string{}, Whole: s.whole}
	var acked []string
	for _, m := range msgs {
		if strings.Contains(string(m.Body), "poison") {
			re.Reasons[m.ID] = "unknown outcome"
		} else {
			acked = append(acked, m.ID)
		}
	}
	switch {
	case len(re.Reasons) == 0:
		return acked, nil
	case s.whole:
		for _, m := range msgs {
			re.Reasons[m.ID] = "bad request"
		}
		return nil, re
	}
	return acked, re
}

// TestOutboxSetsAsidePoison: a report the server refuses goes to the dead letters and
// the others of its batch are delivered, whether the server names it or refuses the
// whole request (then the batch is sent again one report at a time); a network failure
// while isolating leaves the rest for the next flush.
func TestOutboxSetsAsidePoison(t *testing.T) {
	ctx := context.Background()
	b := Backoff{Base: time.Minute, Max: time.Hour}
	for _, tc := range []struct {
		name        string
		whole, down bool
		sends       int
		sent, dead  int
	}{
		{"named", false, false, 1, 3, 1},
		{"whole request", true, false, 1 + 4, 3, 1},
		{"whole request, then the network fails", true, true, 1 + 1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o, err := OpenOutbox(ctx, filepath.Join(t.TempDir(), "outbox.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer o.Close()
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			for i, body := range []string{"a", "b", "poison", "c"} {
				if _, err := o.Put(ctx, "install", body, now.Add(time.Duration(i))); err != nil {
					t.Fatal(err)
				}
			}
			s := &refusing{whole: tc.whole, down: tc.down}
			n, err := o.Flush(ctx, s, now.Add(time.Second), b, nil) // all four due
			var re *RefusedError
			if n != tc.sent || len(s.sends) != tc.sends || (tc.dead > 0) != errors.As(err, &re) {
				t.Fatalf("Flush = %d, %v after %d sends; want %d sent after %d sends", n, err, len(s.sends), tc.sent, tc.sends)
			}
			dead, _ := o.DeadLetters(ctx)
			if len(dead) != tc.dead || (tc.dead > 0 && (string(dead[0].Body) != `"poison"` || len(re.Reasons) != 1)) {
				t.Errorf("dead letters = %+v, refused %v; want %d, the poison report", dead, re, tc.dead)
			}
			if w, _ := o.Len(ctx); w != 4-tc.sent-tc.dead {
				t.Errorf("outbox holds %d; want %d", w, 4-tc.sent-tc.dead)
			}
		})
	}
}

// TestOutboxDueAtAWholeSecond: a report due at a whole second is due half a second
// later. Times were stored as RFC3339Nano text, which trims trailing zeros, and the
// database compares text: "…:00Z" sorted after "…:00.5Z", so the report was not due
// until the next whole second passed.
func TestOutboxDueAtAWholeSecond(t *testing.T) {
	ctx := context.Background()
	o, err := OpenOutbox(ctx, filepath.Join(t.TempDir(), "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if _, err := o.Put(ctx, "install", map[string]any{"n": 1}, at); err != nil {
		t.Fatal(err)
	}
	if _, err := o.Put(ctx, "install", map[string]any{"n": 2}, at.Add(250*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	msgs, err := o.Due(ctx, at.Add(500*time.Millisecond), 10)
	if err != nil || len(msgs) != 2 {
		t.Fatalf("Due half a second after two reports = %d, %v; want both", len(msgs), err)
	}
	if !msgs[0].Created.Equal(at) || !msgs[1].Created.Equal(at.Add(250*time.Millisecond)) {
		t.Errorf("created = %v, %v; want oldest first, as stored", msgs[0].Created, msgs[1].Created)
	}
}
