package fleet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrLeaseLost: a fenced store's lease has passed to another holder (its token
// changed); the transaction was refused and nothing was written.
var ErrLeaseLost = errors.New("lease lost to another holder")

// Lease says which replica runs a singleton job (the rollout planner, the checkpoint
// signer, a publish) until Expires. Token rises each time the lease changes hands or
// is taken again after it expired: a write fenced with a token (Store.Fenced) is
// refused once a newer holder exists, however late the old holder's write arrives.
type Lease struct {
	Name, Holder string
	Token        int64
	Expires      time.Time
}

// Held reports whether holder holds the lease at now.
func (l Lease) Held(holder string, now time.Time) bool {
	return l.Holder == holder && now.Before(l.Expires)
}

// UseLeaseClock makes now the clock leases are judged by, instead of the database's
// (tests that drive time by hand). Call it before the store is in use.
func (s *Store) UseLeaseClock(now func() time.Time) { s.leaseNow = now }

// leaseClock is the time leases are judged by, in tx: the database's own clock (one
// clock for every replica and CLI process on the database, whatever their clocks say),
// or UseLeaseClock's.
func (s *Store) leaseClock(ctx context.Context, tx *txn) (time.Time, error) {
	if s.leaseNow != nil {
		return s.leaseNow(), nil
	}
	q := `SELECT CAST(unixepoch('subsec') * 1000000000 AS INTEGER)`
	if tx.dialect == postgresDialect {
		q = `SELECT (extract(epoch FROM clock_timestamp()) * 1000000000)::bigint`
	}
	var n int64
	if err := tx.QueryRowContext(ctx, q).Scan(&n); err != nil {
		return time.Time{}, fmt.Errorf("the database's clock: %w", err)
	}
	return fromNS(n), nil
}

// AcquireLease takes lease name for holder for ttl, or renews it when holder has it: a
// lease is taken only when nobody holds it or its holder's time ran out. Expiry is
// judged by the database's clock (leaseClock), not the caller's: with each caller's
// own, a replica whose clock ran 7 s fast took a lease still held, and a CLI whose clock
// ran behind held one already expired for everyone else; two writers then published at
// once. now is the caller's clock: the returned lease's Expires is in it (for Held). It
// returns the lease as it stands afterwards: held by holder, or by the replica that
// holds it. One store transaction, so two replicas never both take it.
func (s *Store) AcquireLease(ctx context.Context, name, holder string, ttl time.Duration, now time.Time) (Lease, error) {
	if holder == "" || ttl <= 0 {
		return Lease{}, fmt.Errorf("lease %s: %w", name, invalid("holder", "a holder and a positive ttl are needed"))
	}
	var l Lease
	err := s.tx(ctx, func(tx *txn) error {
		l = Lease{Name: name}
		dbNow, err := s.leaseClock(ctx, tx)
		if err != nil {
			return err
		}
		// Expires is returned in the caller's clock: dbNow + d there is now + d here.
		skew := now.Sub(dbNow)
		defer func() { l.Expires = l.Expires.Add(skew) }()
		now := dbNow
		var expires int64
		err = tx.QueryRowContext(ctx, `SELECT holder, token, expires_at FROM leases WHERE name = ?`, name).Scan(&l.Holder, &l.Token, &expires)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			l.Holder, l.Token, l.Expires = holder, 1, now.Add(ttl)
			_, err = tx.ExecContext(ctx, `INSERT INTO leases (name, holder, token, expires_at) VALUES (?, ?, ?, ?)`, name, holder, l.Token, ns(l.Expires))
			return err
		case err != nil:
			return err
		}
		l.Expires = fromNS(expires)
		switch {
		case l.Held(holder, now): // renew
		case now.Before(l.Expires): // someone else's
			return nil
		default: // expired: taken (again), with a new token
			l.Holder, l.Token = holder, l.Token+1
		}
		l.Expires = now.Add(ttl)
		_, err = tx.ExecContext(ctx, `UPDATE leases SET holder = ?, token = ?, expires_at = ? WHERE name = ?`, l.Holder, l.Token, ns(l.Expires), name)
		return err
	})
	if err != nil {
		return Lease{}, fmt.Errorf("lease %s: %w", name, err)
	}
	return l, nil
}

// ReleaseLease gives up holder's lease (at shutdown, or after a publish), so that
// another replica may take it at once. A lease holder no longer holds is left alone.
func (s *Store) ReleaseLease(ctx context.Context, l Lease) error {
	err := s.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `UPDATE leases SET expires_at = 0 WHERE name = ? AND holder = ? AND token = ?`, l.Name, l.Holder, l.Token)
		return err
	})
	if err != nil {
		return fmt.Errorf("release lease %s: %w", l.Name, err)
	}
	return nil
}

// Fenced returns a store on the same database whose every transaction first checks
// that l is still the lease's latest grant (same holder and token) and otherwise fails
// with ErrLeaseLost, writing nothing. A replica runs its singleton jobs through it, so
// that a replica that lost its lease (paused, partitioned, slow) cannot write after
// the next holder took over.
func (s *Store) Fenced(l Lease) *Store {
	c := *s
	c.fence = &l
	return &c
}

// checkFence is run first in every transaction of a fenced store.
func (s *Store) checkFence(ctx context.Context, tx *txn) error {
	if s.fence == nil {
		return nil
	}
	var holder string
	var token int64
	err := tx.QueryRowContext(ctx, `SELECT holder, token FROM leases WHERE name = ?`, s.fence.Name).Scan(&holder, &token)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && (holder != s.fence.Holder || token != s.fence.Token)) {
		return fmt.Errorf("%w: %s held by %s (token %d), not %s (token %d)", ErrLeaseLost, s.fence.Name, holder, token, s.fence.Holder, s.fence.Token)
	}
	return err
}
