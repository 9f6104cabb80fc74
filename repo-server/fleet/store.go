// Package fleet is the server's record of the fleet: devices and what they reported,
// rollout states and events, attestation verdicts, the decision made at every check-in,
// and operator API tokens. It is a sqlite file (modernc.org/sqlite, WAL,
// synchronous=FULL); the pure parts (KPIs, authorization) take what the store returns.
//
// A check-in, as the server is expected to run it:
//
//	st.Attest(ctx, watcher.Policy(), id, verdict, detail, now)  // after verifying the quote
//	dec, err := st.Decide(ctx, watcher.Policy(), catalog, checkIn)  // CheckIn + Evaluate + RecordDecision
//
// and, on a ticker and after storing reports (AddReport):
//
//	events, err := st.PlanRollouts(ctx, watcher.Policy(), now)  // Plan + SaveRollout; then audit-log events
package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
)

// Errors a caller decides on. Every error the store returns for these cases matches
// one of them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid input")
)

// InvalidError says which input was rejected and why; it matches ErrInvalid.
type InvalidError struct {
	Field, Msg string
}

func (e *InvalidError) Error() string     { return fmt.Sprintf("%s: %s", e.Field, e.Msg) }
func (e *InvalidError) Is(err error) bool { return err == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Store is the fleet database. It is safe for concurrent use.
type Store struct {
	db    *sql.DB
	audit AppendFunc // nil: changes are not audited (see WithAudit)
}

// Open opens (creating if needed) the store at path and brings its schema up to date.
func Open(ctx context.Context, path string) (*Store, error) {
	// One connection: sqlite serialises writers anyway, and a single connection
	// never sees SQLITE_BUSY. Reads are short.
	db, err := durable.OpenSQLite(ctx, path, durable.SQLite{MaxOpenConns: 1, ImmediateTx: true})
	if err != nil {
		return nil, fmt.Errorf("fleet store: %w", err)
	}
	s := &Store{db: db}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("fleet store %s: %w", path, err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// tx runs f in a transaction and commits it if f returns nil.
func (s *Store) tx(ctx context.Context, f func(*sql.Tx) error) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := f(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// Times are stored as Unix nanoseconds, 0 for the zero time.
func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with types that always marshal
	}
	return string(b)
}

func isForeignKey(err error) bool {
	return err != nil && strings.Contains(err.Error(), "FOREIGN KEY constraint failed")
}
