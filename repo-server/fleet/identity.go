package fleet

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// databaseIDName is the server_secrets row that names the database: random, made once,
// when the database is new. It is not secret; the table is where one-of-a-kind values
// of the database live.
const databaseIDName = "database-id"

// ID returns the database's identity: 32 hex digits, made at random the first time a
// server opened the database and the same for every replica, backup and restore of it
// since. A server compares it with the one its repository directory was served with
// (reposerver.Run), so that a database replaced by an empty one (a mistyped --db, a
// deleted fleet.db) is refused instead of silently starting the fleet again.
func (s *Store) ID(ctx context.Context) (string, error) {
	id, _, err := s.Identity(ctx)
	return id, err
}

// Identity is ID, and whether this call made it: the database had none, being new or
// written by a server from before identities (a backup taken before the upgrade).
func (s *Store) Identity(ctx context.Context) (id string, made bool, err error) {
	id, err = s.identity(ctx, &made)
	return id, made, err
}

// HoldsData reports whether the database holds devices, operator tokens or rollout
// states: whether it is anything but new.
func (s *Store) HoldsData(ctx context.Context) (bool, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM (SELECT 1 FROM devices LIMIT 1) d) + (SELECT count(*) FROM (SELECT 1 FROM tokens LIMIT 1) t) + (SELECT count(*) FROM (SELECT 1 FROM rollouts LIMIT 1) r)`).Scan(&n)
	if err != nil {
		return false, fmt.Errorf("database contents: %w", err)
	}
	return n > 0, nil
}

// ReadID is ID without making one: "" when the database has none yet.
func (s *Store) ReadID(ctx context.Context) (string, error) {
	id, err := s.readID(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("database ID: %w", err)
	}
	return id, nil
}

func (s *Store) readID(ctx context.Context) (string, error) {
	var id []byte
	if err := s.db.QueryRowContext(ctx, `SELECT secret FROM server_secrets WHERE name = ?`, databaseIDName).Scan(&id); err != nil {
		return "", err
	}
	return hex.EncodeToString(id), nil
}

func (s *Store) identity(ctx context.Context, made *bool) (string, error) {
	read := func() (string, error) { return s.readID(ctx) }
	id, err := read()
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", fmt.Errorf("database ID: %w", err)
	}
	// Made once; read back, since another replica may have made it first.
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	err = s.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO server_secrets (name, secret, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, databaseIDName, b, ns(time.Now()))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("database ID: %w", err)
	}
	if id, err = read(); err != nil {
		return "", fmt.Errorf("database ID: %w", err)
	}
	*made = id == hex.EncodeToString(b)
	return id, nil
}
