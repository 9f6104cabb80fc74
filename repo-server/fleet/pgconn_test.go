package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
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

// TestHungConnectionDoesNotWedgeTheStore: a connection to PostgreSQL that stays open
// but never answers again (a stalled proxy or connection pooler in between, a backend
// hung on its storage; the kernel still acknowledges, so neither keepalive nor
// TCP_USER_TIMEOUT fires) fails the write on it within the batch's bound, and once the
// database answers on new connections the store writes again by itself. Before 2 Dec
// the committer ran its batch under context.Background(): it waited on the hung
// connection for good, and the replica answered every write 503 until it was
// restarted (found from outside: three replicas behind nginx, one of them through a TCP
// proxy that stopped forwarding for 60 s).
func TestHungConnectionDoesNotWedgeTheStore(t *testing.T) {
	ctx := context.Background()
	u, err := url.Parse(pg.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	p := startHangingProxy(t, u.Host)
	u.Host = p.addr
	s, err := Open(ctx, u.String())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if !t.Failed() { // a wedged committer would not let Close return
			s.Close()
		}
	}()
	s.commit.queueTimeout = 5 * time.Second
	s.commit.batchTimeout = time.Second
	now := time.Now()
	write := func(id string) error {
		return s.AddChallenge(ctx, Challenge{ID: id, EKID: "ek-" + id, Source: "10.0.0.1", Secret: []byte{1}, AKPublic: []byte("ak"),
			Manufacturer: "m", Model: "m", Version: "v", Expires: now.Add(time.Hour)}, 1000, 1000, now)
	}
	if err := write("before"); err != nil {
		t.Fatal(err)
	}
	// Several connections open and idle in the pool, as on a busy replica.
	var wg sync.WaitGroup
	for range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.db.ExecContext(ctx, `SELECT pg_sleep(0.2)`); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()

	p.hang() // every open connection silent for good; new ones unanswered while it lasts
	done := make(chan error, 1)
	go func() { done <- write("during") }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrUnavailable) || !Unavailable(err) {
			t.Fatalf("a write on a connection that stopped answering = %v; want ErrUnavailable", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a write on a connection that stopped answering has not returned after 20 s")
	}

	p.release() // new connections answered again; the hung ones stay hung
	// The idle connections opened before the hang were dropped with the one that got no
	// answer: the next write takes a new one, rather than a batchTimeout per hung one.
	if err := write("after"); err != nil {
		t.Fatalf("the first write after the database answered again = %v; want it through", err)
	}
	start := time.Now()
	for i := 0; ; i++ {
		err := write(fmt.Sprint("after-", i))
		if err == nil {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("30 s after the database answered again, writes still fail: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// hangingProxy forwards TCP connections to a target until hang, after which the
// connections open then never forward another byte (kept open, as a stalled middlebox
// keeps them) and new ones are accepted but not answered, until release.
type hangingProxy struct {
	addr   string
	target string
	mu     sync.Mutex
	frozen chan struct{} // closed by hang: the connections opened before stop forwarding
	hung   bool
	conns  []net.Conn
	closed chan struct{}
}

func startHangingProxy(t *testing.T, target string) *hangingProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &hangingProxy{addr: ln.Addr().String(), target: target, frozen: make(chan struct{}), closed: make(chan struct{})}
	t.Cleanup(func() {
		ln.Close()
		close(p.closed)
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *hangingProxy) serve(c net.Conn) {
	p.mu.Lock()
	p.conns = append(p.conns, c)
	hung, frozen := p.hung, p.frozen
	p.mu.Unlock()
	if hung {
		return // accepted, never answered
	}
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, up)
	p.mu.Unlock()
	pipe := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-frozen:
				<-p.closed // silent from now on
				return
			default:
			}
			if n > 0 {
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
			if err != nil {
				if err != io.EOF {
					dst.Close()
				}
				return
			}
		}
	}
	go pipe(up, c)
	go pipe(c, up)
}

func (p *hangingProxy) hang() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hung = true
	close(p.frozen)
}

func (p *hangingProxy) release() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.hung = false
	p.frozen = make(chan struct{})
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
		{fmt.Errorf("rate limit: %w", errors.New("sql: database is closed")), true}, // the store closed (shutting down)
		{&pgconn.PgError{Code: "23505"}, false},                                     // unique violation
		{invalid("labels", "bad"), false},
		{ErrNotFound, false},
		{nil, false},
	} {
		if got := Unavailable(c.err); got != c.want {
			t.Errorf("Unavailable(%v) = %v; want %v", c.err, got, c.want)
		}
	}
}

// TestMigrationsAreNotBoundByTheBatchTimeout: the committer's batchTimeout, which ends a
// transaction the database stopped answering, does not end a schema migration that is
// merely long (a backfill on a large database, at start): those run through
// txUnbounded. Anything else past the bound fails with ErrUnavailable.
func TestMigrationsAreNotBoundByTheBatchTimeout(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pg.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.commit.batchTimeout = 200 * time.Millisecond
	slow := func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `SELECT pg_sleep(0.6)`)
		return err
	}
	if err := s.txUnbounded(ctx, slow); err != nil {
		t.Fatalf("a long migration-like transaction = %v; want it through", err)
	}
	if err := s.tx(ctx, slow); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a transaction past batchTimeout = %v; want ErrUnavailable", err)
	}
	if err := s.tx(ctx, func(tx *txn) error { _, err := tx.ExecContext(ctx, `SELECT 1`); return err }); err != nil {
		t.Fatalf("the next transaction = %v; want it through", err)
	}
}
