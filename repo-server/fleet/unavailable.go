package fleet

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/jackc/pgx/v5/pgconn"
)

// Unavailable reports whether err says the fleet database could not do the work for
// now, rather than that the request or the data is wrong: the store's own ErrUnavailable
// (no turn within queueTimeout) and ErrClosed, a connection that failed or was lost,
// PostgreSQL's connection, resource (53xxx: disk full, out of memory, too many
// connections) and shutdown (57P01–57P03) errors, sqlite's full disk or busy
// database, a database handle already closed (the server shutting down), and every
// storage fault (writeFault: no space, an I/O error, a read-only database). A caller
// answers these 503 with Retry-After (a proxy then tries another replica), not 500;
// NoSpace says whether the disk is full.
func Unavailable(err error) bool {
	if err == nil {
		return false
	}
	if writeFault(err) {
		return true
	}
	if errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) || errors.Is(err, driver.ErrBadConn) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return strings.HasPrefix(pe.Code, "08") || strings.HasPrefix(pe.Code, "53") || pe.Code == "57P01" || pe.Code == "57P02" || pe.Code == "57P03"
	}
	var ce *pgconn.ConnectError
	var ne net.Error
	var oe *net.OpError
	if errors.As(err, &ce) || errors.As(err, &ne) || errors.As(err, &oe) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"database or disk is full", "database is locked", "SQLITE_FULL", "SQLITE_BUSY", "no space left on device", "unexpected EOF", "conn closed", "connection reset by peer", "sql: database is closed"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// writeFault reports whether err says the database's storage cannot take writes: no
// space (sqlite's "database or disk is full", PostgreSQL's disk_full 53100), an I/O
// error (sqlite's, PostgreSQL's io_error 58030) or a read-only database (sqlite's,
// PostgreSQL's read_only_sql_transaction 25006, a standby). Such a write failed
// although the database answered.
func writeFault(err error) bool {
	if err == nil {
		return false
	}
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "53100" || pe.Code == "58030" || pe.Code == "25006"
	}
	return durable.StorageFault(err)
}

// NoSpace reports whether err says the fleet database's disk is full: sqlite's
// "database or disk is full" or ENOSPC, PostgreSQL's disk_full (53100).
func NoSpace(err error) bool {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code == "53100"
	}
	return durable.NoSpace(err)
}

// ErrCannotWrite is Ready's error while the fleet database answers but a write fails
// for a fault of its storage (no space, an I/O error, read-only).
var ErrCannotWrite = errors.New("the fleet database cannot take writes")

// probeLease is the name of the row Ready's write probe inserts into leases and
// deletes in the same transaction: nothing is left of it, nobody else sees it.
const probeLease = "edgeward.ready-probe"

// Ready reports whether the store can take writes now, for readiness checks: nil, or
// ErrUnavailable, a connection error, or ErrCannotWrite wrapping the storage fault.
// It runs a transaction through the committer (its turn, the writer lock on
// PostgreSQL, a statement, the commit): one that only reads while writes have been
// succeeding, since a read commits on a full disk too; and, after a write transaction
// failed for a fault of the storage (no space, an I/O error, read-only), one that
// writes a row and deletes it again, until such a probe commits. So a store whose
// every write fails answers not ready, and one nobody writes to any more (a load
// balancer stopped sending it requests) is ready again once its storage is.
func (s *Store) Ready(ctx context.Context) error {
	f := s.db.fault.Load()
	if f == nil {
		return s.tx(ctx, func(tx *txn) error {
			var one int
			return tx.QueryRowContext(ctx, `SELECT 1`).Scan(&one)
		})
	}
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO leases (name, holder, token, expires_at) VALUES (?, '', 0, 0)`, probeLease); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `DELETE FROM leases WHERE name = ?`, probeLease)
		return err
	})
	switch {
	case err == nil:
		s.db.fault.CompareAndSwap(f, nil) // unless a write failed again meanwhile
		return nil
	case writeFault(err):
		return fmt.Errorf("%w: %w", ErrCannotWrite, err)
	default:
		return err
	}
}
