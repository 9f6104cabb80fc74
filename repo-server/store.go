package reposerver

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/repo-server/audit"
)

// OpenDB opens (creating if needed) a sqlite database in WAL mode with full
// synchronous writes and a busy timeout, so that several processes may share it.
func OpenDB(ctx context.Context, path string) (*sql.DB, error) {
	return durable.OpenSQLite(ctx, path, durable.SQLite{})
}

// DBPath is the server's sqlite database: the fleet store and the audit log, in one
// file so that a change and its audit record commit together (fleet.db; before
// Edgeward 0.2 the audit log had its own repo.db, imported on first open).
func (r *Repo) DBPath() string { return r.path("fleet.db") }

// AuditKey loads the audit checkpoint key (an online key, role "audit").
func (r *Repo) AuditKey() (ed25519.PrivateKey, error) {
	matches, _ := filepath.Glob(filepath.Join(r.OnlineKeyDir(), "audit-*.key"))
	if len(matches) != 1 {
		return nil, fmt.Errorf("want one audit checkpoint key in %s, found %d", r.OnlineKeyDir(), len(matches))
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		return nil, err
	}
	k, err := ParseKey(data, nil)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", matches[0], err)
	}
	priv, ok := k.Private.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit key %s is not ed25519", matches[0])
	}
	return priv, nil
}

// AuditOrigin is the name of the repository's audit log: the first line of its
// checkpoints and the name of its key.
func (r *Repo) AuditOrigin() string { return audit.DefaultOrigin }

// OpenAudit opens the repository's audit log; close the returned database when done.
func (r *Repo) OpenAudit(ctx context.Context) (*audit.Log, *sql.DB, error) {
	key, err := r.AuditKey()
	if err != nil {
		return nil, nil, err
	}
	db, err := OpenDB(ctx, r.DBPath())
	if err != nil {
		return nil, nil, err
	}
	l, err := audit.Open(ctx, audit.Config{DB: db, Key: key, Origin: r.AuditOrigin(), Now: r.now})
	if err == nil {
		err = r.importLegacyAudit(ctx, db)
	}
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return l, db, nil
}

// event appends a change that has already been made to the audit log. A failure to
// record is logged, not returned: the metadata on disk is the truth, and the change
// cannot be undone.
func (r *Repo) event(ctx context.Context, action, subject string, details map[string]any) {
	l, db, err := r.OpenAudit(ctx)
	if err == nil {
		defer db.Close()
		_, err = l.Append(ctx, r.cfg.Actor, "repo."+action, subject, details)
	}
	if err != nil {
		r.log.Error("record repository event in the audit log", "action", action, "err", err)
	}
}
