package reposerver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// attachFleet opens the server's audit log in the fleet store's database (so that every
// fleet change appends its audit records in its own transaction) and returns the store
// wired to it. The device and operator APIs must share one store.
func (s *Server) attachFleet(ctx context.Context, st *fleet.Store) (*fleet.Store, error) {
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	if s.fleetDB != nil {
		if s.fleetDB != st.DB() {
			return nil, errors.New("the device and operator APIs need the same fleet store")
		}
		return s.fleet, nil
	}
	key, err := s.cfg.Repo.AuditKey()
	if err != nil {
		return nil, err
	}
	if inside, _ := filepath.Glob(filepath.Join(s.cfg.Repo.Dir(), "keys", "online", "audit-*.key")); len(inside) > 0 {
		s.log.Warn("the audit checkpoint key is in clear inside the data directory: whoever copies it can sign checkpoints; move it out with 'edgeward audit move-key --to FILE'", "key", inside[0])
	}
	l, err := audit.Open(ctx, audit.Config{DB: st.DB(), Key: key, Origin: AuditOrigin(s.cfg.Repo), Now: s.cfg.Repo.Now})
	if err != nil {
		return nil, err
	}
	if st.Engine() == "sqlite" { // a repo.db of Edgeward 0.1 sits beside fleet.db only
		if err := importLegacyAudit(ctx, s.cfg.Repo.Dir(), st.DB()); err != nil {
			return nil, err
		}
	}
	if s.auditDB != nil { // a log opened before the fleet was attached
		s.auditDB.Close()
	}
	s.audit, s.auditDB, s.fleetDB = l, nil, st.DB()
	s.fleet = st.WithAudit(func(ctx context.Context, tx fleet.Tx, r fleet.AuditRecord) error {
		_, err := l.AppendTx(ctx, tx, r.Actor, r.Kind, r.Subject, r.Data)
		return err
	})
	if s.leaseNow != nil {
		s.fleet.UseLeaseClock(s.leaseNow)
	}
	return s.fleet, nil
}

// AuditLog is the server's audit log: in the fleet store's database once the device or
// operator API is enabled, else the repository's (Repo.OpenAudit).
func (s *Server) AuditLog(ctx context.Context) (*audit.Log, error) { return s.openAudit(ctx) }

// auditLog appends an event that changes nothing in the fleet store (a rejection, a
// file written) in its own transaction. Callers fail the request when it fails: no
// audit record, no change.
func (s *Server) auditLog(ctx context.Context, actor, kind, subject string, data any) error {
	l, err := s.openAudit(ctx)
	if err == nil {
		_, err = l.Append(ctx, actor, kind, subject, data)
	}
	if err != nil {
		s.log.Error("audit", "kind", kind, "subject", subject, "err", err)
		return fmt.Errorf("audit %s: %w", kind, err)
	}
	return nil
}

// openAudit returns the server's audit log, opening the repository's once if no fleet
// store is attached.
func (s *Server) openAudit(ctx context.Context) (*audit.Log, error) {
	s.auditMu.Lock()
	defer s.auditMu.Unlock()
	if s.audit != nil {
		return s.audit, nil
	}
	l, db, err := OpenAuditAt(ctx, s.cfg.Repo, s.cfg.DB)
	if err != nil {
		return nil, err
	}
	s.audit, s.auditDB = l, db
	return l, nil
}

// legacySeenDDL is fleet's device_reports_seen table (schema migration 3), created here
// when the legacy import runs before the fleet store first opened the database.
const legacySeenDDL = `CREATE TABLE IF NOT EXISTS device_reports_seen (
		device_id TEXT NOT NULL,
		id        TEXT NOT NULL,
		PRIMARY KEY (device_id, id)
	) STRICT, WITHOUT ROWID`

// importLegacyAudit moves the audit log and the report dedup marks of a data directory
// written before they lived in fleet.db (DIR/repo.db) into db, in one transaction, and
// renames repo.db to repo.db.imported. It refuses when both hold audit records.
func importLegacyAudit(ctx context.Context, dir string, db *sql.DB) error {
	legacy := filepath.Join(dir, "repo.db")
	if _, err := os.Stat(legacy); errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, `ATTACH DATABASE ? AS legacy`, "file:"+legacy); err != nil {
		return fmt.Errorf("import the audit log of %s: %w", legacy, err)
	}
	err = func() error {
		has := func(schema, table string) (bool, error) {
			var n int
			err := conn.QueryRowContext(ctx, `SELECT count(*) FROM `+schema+`.sqlite_master WHERE type = 'table' AND name = ?`, table).Scan(&n)
			return n > 0, err
		}
		stmts := []string{legacySeenDDL}
		if ok, err := has("legacy", "device_reports_seen"); err != nil {
			return err
		} else if ok {
			stmts = append(stmts, `INSERT OR IGNORE INTO main.device_reports_seen (device_id, id) SELECT device, id FROM legacy.device_reports_seen`)
		}
		// The Merkle-tree log's tables (audit.Schema). The hash chain of Edgeward 0.1
		// (audit_records) is not carried over: the tree log starts afresh (issue 13).
		if ok, err := has("legacy", "audit_tree_size"); err != nil {
			return err
		} else if ok {
			var mine, theirs int64
			if err := conn.QueryRowContext(ctx, `SELECT (SELECT coalesce(max(size), 0) FROM main.audit_tree_size), (SELECT coalesce(max(size), 0) FROM legacy.audit_tree_size)`).Scan(&mine, &theirs); err != nil {
				return err
			}
			if mine > 0 && theirs > 0 {
				// Imported already, by a start that was stopped before it renamed the old
				// file (the commit and the rename are two steps): every old record is in
				// the new log, unchanged. Then only the rename is left to do.
				var same int64
				if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM legacy.audit_leaves l JOIN main.audit_leaves m ON m.seq = l.seq AND m.at = l.at AND m.actor = l.actor AND m.kind = l.kind AND m.subject = l.subject AND m.data = l.data`).Scan(&same); err != nil {
					return err
				}
				if same != theirs || mine < theirs {
					return fmt.Errorf("both %s (%d records) and %s (%d records) hold an audit log: move one aside", legacy, theirs, DBPath(dir), mine)
				}
				theirs = 0
			}
			if theirs > 0 {
				// repo.db's records keep their layout: their stored hashes in their rows
				// (audit schema 2) or in audit_hashes (before); the frontier is rebuilt
				// at the next append.
				leaves := `INSERT INTO main.audit_leaves(seq, at, actor, kind, subject, data) SELECT seq, at, actor, kind, subject, data FROM legacy.audit_leaves`
				var rowHashes int
				if err := conn.QueryRowContext(ctx, `SELECT count(*) FROM pragma_table_info('audit_leaves', 'legacy') WHERE name = 'hashes'`).Scan(&rowHashes); err != nil {
					return err
				}
				if rowHashes > 0 {
					leaves = `INSERT INTO main.audit_leaves(seq, at, actor, kind, subject, data, hashes) SELECT seq, at, actor, kind, subject, data, hashes FROM legacy.audit_leaves`
				}
				stmts = append(stmts, leaves,
					`INSERT INTO main.audit_hashes SELECT * FROM legacy.audit_hashes`,
					`INSERT INTO main.audit_checkpoints_v2 SELECT * FROM legacy.audit_checkpoints_v2`,
					`UPDATE main.audit_tree_size SET size = (SELECT size FROM legacy.audit_tree_size WHERE id = 1), frontier = NULL WHERE id = 1`)
			}
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer tx.Rollback()
		for _, q := range stmts {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("import the audit log of %s: %w", legacy, err)
			}
		}
		return tx.Commit()
	}()
	if _, derr := conn.ExecContext(ctx, `DETACH DATABASE legacy`); err == nil && derr != nil {
		err = derr
	}
	if err != nil {
		return err
	}
	for _, suffix := range []string{"", "-wal", "-shm"} {
		if err := os.Rename(legacy+suffix, legacy+".imported"+suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return durable.SyncDir(filepath.Dir(legacy))
}

// auditUnlessLast is auditLog unless the log's last record of kind is about subject
// (audit.Log.AppendUnlessLast).
func (s *Server) auditUnlessLast(ctx context.Context, actor, kind, subject string, data any) error {
	l, err := s.openAudit(ctx)
	if err == nil {
		_, err = l.AppendUnlessLast(ctx, actor, kind, subject, data)
	}
	if err != nil {
		s.log.Error("audit", "kind", kind, "subject", subject, "err", err)
		return fmt.Errorf("audit %s: %w", kind, err)
	}
	return nil
}
