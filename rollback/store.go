package rollback

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
)

// FloorStore holds the anti-rollback floor of each slot kind. Implementations never lower
// a floor: Raise to a value at or below the current floor does nothing. The TPM NV
// counter (attest/) is the authoritative one; DB is the sqlite mirror.
type FloorStore interface {
	Floor(ctx context.Context, kind artifact.Kind) (uint64, error)
	Raise(ctx context.Context, kind artifact.Kind, floor uint64) error
}

// ErrCorruptState is returned (wrapped) when neither a kind's state row nor any of its
// logged transitions can be read back intact.
var ErrCorruptState = errors.New("slot state is corrupt")

// DB is the agent's sqlite state: each kind's State, the log of its transitions and the
// mirror of its anti-rollback floor. It is safe for concurrent use.
type DB struct {
	db *sql.DB
}

// OpenDB opens (creating if needed) the sqlite database at path in WAL mode with
// synchronous=FULL, so a transition is durable when its transaction commits.
func OpenDB(ctx context.Context, path string) (*DB, error) {
	db, err := durable.OpenSQLite(ctx, path, durable.SQLite{MaxOpenConns: 1, KeepLog: true})
	if err != nil {
		return nil, fmt.Errorf("open state db: %w", err)
	}
	const schema = `
CREATE TABLE IF NOT EXISTS slot_state (kind TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL, sum TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transitions (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, seq INTEGER NOT NULL,
  event TEXT NOT NULL, state TEXT NOT NULL, sum TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS floors (kind TEXT PRIMARY KEY, floor INTEGER NOT NULL);`
	if _, err := db.ExecContext(ctx, schema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create schema in %s: %w", path, err)
	}
	return &DB{db: db}, nil
}

// Close closes the database.
func (d *DB) Close() error { return d.db.Close() }

func checksum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// KeepTransitions is how many logged transitions of each kind are kept: the newest,
// from which a damaged state row is restored (Load), and the recent history. Every
// pruneTransitionsEvery transitions the older ones are deleted, in the same transaction.
// Kept whole, the log grew by 2–3 KB per update for good (found from outside, 2 Dec:
// about 50 MB after three years of hourly updates).
const (
	KeepTransitions       = 500
	pruneTransitionsEvery = 64
)

// Save persists s as kind's state and logs the transition, in one durable transaction.
func (d *DB) Save(ctx context.Context, s State, event string, at string) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	sum := checksum(b)
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("save %s state: %w", s.Kind, err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `INSERT INTO slot_state (kind, seq, state, sum) VALUES (?, ?, ?, ?)
ON CONFLICT (kind) DO UPDATE SET seq = excluded.seq, state = excluded.state, sum = excluded.sum`,
		string(s.Kind), int64(s.Seq), string(b), sum); err != nil {
		return fmt.Errorf("save %s state: %w", s.Kind, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO transitions (kind, seq, event, state, sum, at) VALUES (?, ?, ?, ?, ?, ?)`,
		string(s.Kind), int64(s.Seq), event, string(b), sum, at); err != nil {
		return fmt.Errorf("log %s transition: %w", s.Kind, err)
	}
	// By the kind's own count: by the table's row ID, shared by the kinds, a kind whose
	// saves alternated with another's never landed on a multiple and was never pruned
	// (found from outside, 2 Dec).
	if s.Seq%pruneTransitionsEvery == 0 {
		if _, err := tx.ExecContext(ctx, `DELETE FROM transitions WHERE kind = ? AND id <= (SELECT id FROM transitions WHERE kind = ? ORDER BY id DESC LIMIT 1 OFFSET ?)`,
			string(s.Kind), string(s.Kind), KeepTransitions); err != nil {
			return fmt.Errorf("prune %s transitions: %w", s.Kind, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("save %s state: %w", s.Kind, err)
	}
	return nil
}

// Load returns kind's state: Idle if none was saved. A state row that fails its checksum
// or does not decode is replaced by the newest intact logged transition; if there is none,
// Load returns an error wrapping ErrCorruptState.
func (d *DB) Load(ctx context.Context, kind artifact.Kind) (State, error) {
	var raw, sum string
	err := d.db.QueryRowContext(ctx, `SELECT state, sum FROM slot_state WHERE kind = ?`, string(kind)).Scan(&raw, &sum)
	if errors.Is(err, sql.ErrNoRows) {
		return State{Kind: kind, Phase: Idle}, nil
	}
	if err != nil {
		return State{}, fmt.Errorf("load %s state: %w", kind, err)
	}
	if s, err := decodeState(kind, raw, sum); err == nil {
		return s, nil
	} else {
		rowErr := err
		rows, err := d.db.QueryContext(ctx, `SELECT state, sum FROM transitions WHERE kind = ? ORDER BY id DESC`, string(kind))
		if err != nil {
			return State{}, fmt.Errorf("load %s state: %w", kind, err)
		}
		defer rows.Close()
		for rows.Next() {
			if err := rows.Scan(&raw, &sum); err != nil {
				return State{}, fmt.Errorf("load %s transitions: %w", kind, err)
			}
			if s, err := decodeState(kind, raw, sum); err == nil {
				return s, nil
			}
		}
		if err := rows.Err(); err != nil {
			return State{}, fmt.Errorf("load %s transitions: %w", kind, err)
		}
		return State{}, fmt.Errorf("load %s state: %w: %v, and no intact transition is logged", kind, ErrCorruptState, rowErr)
	}
}

func decodeState(kind artifact.Kind, raw, sum string) (State, error) {
	if checksum([]byte(raw)) != sum {
		return State{}, errors.New("checksum mismatch")
	}
	var s State
	if err := json.Unmarshal([]byte(raw), &s); err != nil {
		return State{}, err
	}
	if s.Kind != kind {
		return State{}, fmt.Errorf("row holds kind %q", s.Kind)
	}
	switch s.Phase {
	case Idle, Committed, RolledBack, Failed:
	case Downloading, Verifying, Staged, Trial:
		if s.Pending == nil {
			return State{}, fmt.Errorf("phase %s without a pending target", s.Phase)
		}
	default:
		return State{}, fmt.Errorf("unknown phase %q", s.Phase)
	}
	if (s.Active == "") != (s.Current == nil) || (s.Active != "" && s.Active != SlotA && s.Active != SlotB) {
		return State{}, fmt.Errorf("active slot %q and current version disagree", s.Active)
	}
	return s, nil
}

// Transitions returns kind's logged transitions, oldest first, as "seq event phase" lines.
func (d *DB) Transitions(ctx context.Context, kind artifact.Kind) ([]string, error) {
	rows, err := d.db.QueryContext(ctx, `SELECT seq, event, state FROM transitions WHERE kind = ? ORDER BY id`, string(kind))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var seq int64
		var ev, raw string
		if err := rows.Scan(&seq, &ev, &raw); err != nil {
			return nil, err
		}
		var s State
		_ = json.Unmarshal([]byte(raw), &s)
		out = append(out, fmt.Sprintf("%d %s %s", seq, ev, s.phase()))
	}
	return out, rows.Err()
}

// Floor returns the mirrored floor of kind (0 if none).
func (d *DB) Floor(ctx context.Context, kind artifact.Kind) (uint64, error) {
	var f int64
	err := d.db.QueryRowContext(ctx, `SELECT floor FROM floors WHERE kind = ?`, string(kind)).Scan(&f)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read %s floor: %w", kind, err)
	}
	return uint64(f), nil
}

// Raise raises the mirrored floor of kind to floor; it never lowers it.
func (d *DB) Raise(ctx context.Context, kind artifact.Kind, floor uint64) error {
	if floor > 1<<62 {
		return fmt.Errorf("raise %s floor: %d out of range", kind, floor)
	}
	_, err := d.db.ExecContext(ctx, `INSERT INTO floors (kind, floor) VALUES (?, ?)
ON CONFLICT (kind) DO UPDATE SET floor = max(floor, excluded.floor)`, string(kind), int64(floor))
	if err != nil {
		return fmt.Errorf("raise %s floor: %w", kind, err)
	}
	return nil
}
