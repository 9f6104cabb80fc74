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
	db *sql.DB
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

// migrations are applied in order; PRAGMA user_version counts those applied. Append
// only: never edit one that has shipped.
var migrations = []string{
	`CREATE TABLE devices (
		id                TEXT PRIMARY KEY,
		labels            TEXT NOT NULL DEFAULT '{}',
		hardware          TEXT NOT NULL DEFAULT '',
		agent_version     TEXT NOT NULL DEFAULT '',
		slots             TEXT NOT NULL DEFAULT '{}',
		attrs             TEXT NOT NULL DEFAULT '{}',
		verdict           TEXT NOT NULL DEFAULT '',
		verdict_at        INTEGER NOT NULL DEFAULT 0,
		quarantined       INTEGER NOT NULL DEFAULT 0,
		quarantine_reason TEXT NOT NULL DEFAULT '',
		enrolled_at       INTEGER NOT NULL,
		last_check_in     INTEGER NOT NULL DEFAULT 0
	) STRICT;
	CREATE TABLE verdicts (
		seq       INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		verdict   TEXT NOT NULL,
		detail    TEXT NOT NULL DEFAULT '',
		at        INTEGER NOT NULL
	) STRICT;
	CREATE INDEX verdicts_at ON verdicts(at);
	CREATE TABLE rollouts (
		id         TEXT PRIMARY KEY,
		status     TEXT NOT NULL,
		state      TEXT NOT NULL,
		updated_at INTEGER NOT NULL
	) STRICT;
	CREATE TABLE rollout_events (
		seq        INTEGER PRIMARY KEY,
		rollout_id TEXT NOT NULL,
		type       TEXT NOT NULL,
		wave       INTEGER NOT NULL,
		reason     TEXT NOT NULL DEFAULT '',
		actor      TEXT NOT NULL DEFAULT '',
		at         INTEGER NOT NULL
	) STRICT;
	CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, seq);
	CREATE TABLE reports (
		seq        INTEGER PRIMARY KEY,
		device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		rollout_id TEXT NOT NULL DEFAULT '',
		kind       TEXT NOT NULL,
		name       TEXT NOT NULL,
		version    TEXT NOT NULL,
		outcome    TEXT NOT NULL,
		cause      TEXT NOT NULL DEFAULT '',
		bytes      INTEGER NOT NULL DEFAULT 0,
		accuracy   REAL NOT NULL DEFAULT 0,
		p99_ms     REAL NOT NULL DEFAULT 0,
		at         INTEGER NOT NULL
	) STRICT;
	CREATE INDEX reports_rollout ON reports(rollout_id, at);
	CREATE INDEX reports_device ON reports(device_id, at);
	CREATE TABLE decisions (
		seq           INTEGER PRIMARY KEY,
		device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		at            INTEGER NOT NULL,
		policy_digest TEXT NOT NULL,
		decision      TEXT NOT NULL
	) STRICT;
	CREATE INDEX decisions_device ON decisions(device_id, seq);
	CREATE INDEX decisions_at ON decisions(at);`,
	`CREATE TABLE tokens (
		id         TEXT PRIMARY KEY,
		hash       BLOB NOT NULL UNIQUE,
		operator   TEXT NOT NULL,
		role       TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		revoked_at INTEGER NOT NULL DEFAULT 0
	) STRICT;`,
	`ALTER TABLE reports ADD COLUMN peak_rss_mb REAL NOT NULL DEFAULT 0;`,
}

func (s *Store) migrate(ctx context.Context) error {
	var v int
	if err := s.db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this server (%d): refusing to touch it", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		err := s.tx(ctx, func(tx *sql.Tx) error {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return err
			}
			_, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", i+1))
			return err
		})
		if err != nil {
			return fmt.Errorf("migration %d: %w", i+1, err)
		}
	}
	return nil
}

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
