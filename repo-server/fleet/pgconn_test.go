package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// TestStalledReplicaReleasesTheWriterLock: a replica that took the writer lock (every
// write transaction does) and then went silent (its link to the database dark, the
// process stopped) holds it no longer than the database's idle-in-transaction timeout:
// another replica's write then goes through. Before 2 Dec every replica's writes waited
// behind it until the database's TCP stack gave the connection up (hours; found from
// outside). The default is IdleInTransactionTimeout; here the URL sets 1 s.
func TestStalledReplicaReleasesTheWriterLock(t *testing.T) {
	ctx := context.Background()
	url := pg.Database(t)
	db, err := OpenPostgres(url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var setting string
	if err := db.QueryRowContext(ctx, `SHOW idle_in_transaction_session_timeout`).Scan(&setting); err != nil || setting != "30s" {
		t.Fatalf("idle_in_transaction_session_timeout = %q, %v; want 30s on every connection", setting, err)
	}

	short := url + "&idle_in_transaction_session_timeout=1000"
	s, err := Open(ctx, short)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	stalled, err := OpenPostgres(short)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	tx, err := stalled.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, writerLock); err != nil {
		t.Fatal(err)
	}
	// The stalled replica says nothing more. The other's write waits, then goes through.
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	c := Challenge{ID: "c1", EKID: "ek-1", Source: "10.0.0.1", Secret: []byte{1}, AKPublic: []byte("ak"), Manufacturer: "m", Model: "m", Version: "v", Expires: start.Add(time.Minute)}
	if err := s.AddChallenge(wctx, c, 100, 10, start); err != nil {
		t.Fatalf("a write while another replica sat on the writer lock: %v (after %v)", err, time.Since(start))
	}
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Errorf("the write went through in %v: the lock was not held", waited)
	}
}

// TestUnavailable tells the database's absence (retry later, elsewhere) from errors of
// the request or the data.
func TestUnavailable(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{ErrUnavailable, true},
		{fmt.Errorf("check-in: %w", ErrClosed), true},
		{&pgconn.PgError{Code: "53100"}, true}, // disk full
		{&pgconn.PgError{Code: "57P01"}, true}, // admin shutdown
		{&pgconn.PgError{Code: "08006"}, true},
		{&net.OpError{Op: "dial", Err: errors.New("connection refused")}, true},
		{errors.New("sqlite: database or disk is full (13)"), true},
		{&pgconn.PgError{Code: "23505"}, false}, // unique violation
		{invalid("labels", "bad"), false},
		{ErrNotFound, false},
		{nil, false},
	} {
		if got := Unavailable(c.err); got != c.want {
			t.Errorf("Unavailable(%v) = %v; want %v", c.err, got, c.want)
		}
	}
}
