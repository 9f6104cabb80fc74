package updater

import (
	"context"
	"errors"
	"path/filepath"
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
