package reposerver

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// OpenDB opens (creating if needed) a sqlite database in WAL mode with full
// synchronous writes and a busy timeout, so that several processes may share it.
func OpenDB(ctx context.Context, path string) (*sql.DB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_pragma=foreign_keys(1)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

const eventsSchema = `CREATE TABLE IF NOT EXISTS repo_events (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	at      TEXT NOT NULL,
	actor   TEXT NOT NULL,
	action  TEXT NOT NULL,
	details TEXT NOT NULL
)`

// Event is one recorded repository change.
type Event struct {
	ID      int64          `json:"id"`
	At      time.Time      `json:"at"`
	Actor   string         `json:"actor"`
	Action  string         `json:"action"`
	Details map[string]any `json:"details"`
}

func (r *Repo) withDB(ctx context.Context, fn func(*sql.DB) error) error {
	db, err := OpenDB(ctx, r.path("repo.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, eventsSchema); err != nil {
		return fmt.Errorf("repo.db schema: %w", err)
	}
	return fn(db)
}

// event records a change that has already been made. A failure to record is logged, not
// returned: the metadata on disk is the truth, and the change cannot be undone.
func (r *Repo) event(ctx context.Context, action string, details map[string]any) {
	err := r.withDB(ctx, func(db *sql.DB) error {
		d, err := json.Marshal(details)
		if err != nil {
			return err
		}
		_, err = db.ExecContext(ctx, `INSERT INTO repo_events(at, actor, action, details) VALUES(?,?,?,?)`,
			r.now().UTC().Format(time.RFC3339Nano), r.cfg.Actor, action, string(d))
		return err
	})
	if err != nil {
		r.log.Error("record repository event", "action", action, "err", err)
	}
}

// Events returns the recorded repository events, oldest first.
func (r *Repo) Events(ctx context.Context) ([]Event, error) {
	var out []Event
	err := r.withDB(ctx, func(db *sql.DB) error {
		rows, err := db.QueryContext(ctx, `SELECT id, at, actor, action, details FROM repo_events ORDER BY id`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var e Event
			var at, details string
			if err := rows.Scan(&e.ID, &at, &e.Actor, &e.Action, &details); err != nil {
				return err
			}
			e.At, _ = time.Parse(time.RFC3339Nano, at)
			_ = json.Unmarshal([]byte(details), &e.Details)
			out = append(out, e)
		}
		return rows.Err()
	})
	return out, err
}
