package reposerver

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// OpenDB opens the server's database at where: a PostgreSQL URL (postgres://…), or a
// sqlite file, created if needed, in WAL mode with full synchronous writes and a busy
// timeout, so that several processes may share it, keeping its -wal and -shm files
// when it closes as the fleet store does (durable.SQLite.KeepLog: a server whose disk
// filled up while it was stopped opens them again in place).
func OpenDB(ctx context.Context, where string) (*sql.DB, error) {
	if !fleet.IsPostgres(where) {
		return durable.OpenSQLite(ctx, where, durable.SQLite{KeepLog: true, WALAutoCheckpoint: sqliteDefaultCheckpoint})
	}
	db, err := fleet.OpenPostgres(where)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("database: %w", err)
	}
	return db, nil
}

// sqliteDefaultCheckpoint is sqlite's default wal_autocheckpoint, which OpenDB keeps
// (KeepLog alone would checkpoint at every commit).
const sqliteDefaultCheckpoint = 1000

// DBLocation is the server's database: db when set (a PostgreSQL URL, or a sqlite
// file), else DBPath(dir).
func DBLocation(dir, db string) string {
	if db != "" {
		return db
	}
	return DBPath(dir)
}

// DBPath is the server's sqlite database in the repository directory dir: the fleet
// store and the audit log, in one file so that a change and its audit record commit
// together (fleet.db; before Edgeward 0.2 the audit log had its own repo.db, imported
// on first open). The repository library itself opens no database.
func DBPath(dir string) string { return filepath.Join(dir, "fleet.db") }

// AuditOrigin is the name of repo's audit log: the first line of its checkpoints and
// the name of its key.
func AuditOrigin(repo *repository.Repo) string { return audit.DefaultOrigin }

// OpenAudit opens repo's audit log (DBPath, checkpoints signed with the repository's
// audit key); close the returned database when done.
func OpenAudit(ctx context.Context, repo *repository.Repo) (*audit.Log, *sql.DB, error) {
	return openAudit(ctx, repo.Dir(), "", time.Now)
}

// OpenAuditAt is OpenAudit on the database db names (DBLocation: "" is DBPath).
func OpenAuditAt(ctx context.Context, repo *repository.Repo, db string) (*audit.Log, *sql.DB, error) {
	return openAudit(ctx, repo.Dir(), db, time.Now)
}

func openAudit(ctx context.Context, dir, where string, now func() time.Time) (*audit.Log, *sql.DB, error) {
	key, err := repository.AuditKey(dir)
	if err != nil {
		return nil, nil, err
	}
	where = DBLocation(dir, where)
	if err := guardLostDatabase(ctx, dir, where); err != nil {
		return nil, nil, err
	}
	db, err := OpenDB(ctx, where)
	if err != nil {
		return nil, nil, err
	}
	l, err := audit.Open(ctx, audit.Config{DB: db, Key: key, Origin: audit.DefaultOrigin, Now: now})
	if err == nil && !fleet.IsPostgres(where) {
		err = importLegacyAudit(ctx, dir, db)
	}
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return l, db, nil
}

// AuditRecorder records a repository's events in its audit log (a
// repository.Recorder). It opens the log for each event, so the CLI and a running
// server can record into the same log, and it can be configured before the repository
// exists (repository.Init records its creation once the audit key is written).
type AuditRecorder struct {
	// Dir is the repository directory.
	Dir string
	// DB is the server's database (DBLocation). "": DBPath(Dir).
	DB string
	// Now stamps the records. nil: time.Now.
	Now func() time.Time
}

// Record appends one event to the audit log; an error means it was not recorded.
func (a AuditRecorder) Record(ctx context.Context, actor, kind, subject string, data any) error {
	now := a.Now
	if now == nil {
		now = time.Now
	}
	l, db, err := openAudit(ctx, a.Dir, a.DB, now)
	if err != nil {
		return fmt.Errorf("open audit log: %w", err)
	}
	defer db.Close()
	if _, err := l.Append(ctx, actor, kind, subject, data); err != nil {
		return fmt.Errorf("append to audit log: %w", err)
	}
	return nil
}

// OpenAuditedFleet opens the fleet store of the repository in dir (on the database db
// names, DBLocation) for a process other than the server, the CLI: every change made
// through it appends its audit records in its own transaction, as the server's do, and
// fails when they cannot be appended. The caller closes the store.
func OpenAuditedFleet(ctx context.Context, dir, db string) (*fleet.Store, error) {
	key, err := repository.AuditKey(dir)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	if err := guardLostDatabase(ctx, dir, DBLocation(dir, db)); err != nil {
		return nil, err
	}
	st, err := fleet.Open(ctx, DBLocation(dir, db))
	if err != nil {
		return nil, err
	}
	l, err := audit.Open(ctx, audit.Config{DB: st.DB(), Key: key, Origin: audit.DefaultOrigin})
	if err != nil {
		st.Close()
		return nil, fmt.Errorf("audit log: %w", err)
	}
	return st.WithAudit(func(ctx context.Context, tx fleet.Tx, r fleet.AuditRecord) error {
		_, err := l.AppendTx(ctx, tx, r.Actor, r.Kind, r.Subject, r.Data)
		return err
	}), nil
}
