package fleet

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Unavailable reports whether err says the fleet database could not do the work for
// now, rather than that the request or the data is wrong: the store's own ErrUnavailable
// (no turn within queueTimeout) and ErrClosed, a connection that failed or was lost,
// PostgreSQL's connection, resource (53xxx: disk full, out of memory, too many
// connections) and shutdown (57P01–57P03) errors, and sqlite's full disk or busy
// database. A caller answers these 503 with Retry-After (a proxy then tries another
// replica), not 500.
func Unavailable(err error) bool {
	if err == nil {
		return false
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
	for _, s := range []string{"database or disk is full", "database is locked", "SQLITE_FULL", "SQLITE_BUSY", "no space left on device", "unexpected EOF", "conn closed", "connection reset by peer"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// Ready runs an empty write transaction (its turn, the writer lock on PostgreSQL, a
// statement, the commit): nil when the store can take writes now. For readiness checks.
func (s *Store) Ready(ctx context.Context) error {
	return s.tx(ctx, func(tx *txn) error {
		var one int
		return tx.QueryRowContext(ctx, `SELECT 1`).Scan(&one)
	})
}
