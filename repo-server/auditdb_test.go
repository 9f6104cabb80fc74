package reposerver

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"golang.org/x/mod/sumdb/tlog"
)

// A data directory from before the audit log moved into fleet.db: its repo.db (audit
// log and report dedup marks) is imported on first open, then renamed.
func TestLegacyAuditDatabaseIsImported(t *testing.T) {
	t.Run("current layout", func(t *testing.T) { testLegacyAuditImport(t, nil, false) })
	// repo.db as Edgeward wrote it before audit schema 2: the stored hashes in
	// audit_hashes, no hashes column, no frontier, no schema version.
	t.Run("layout before audit schema 2", func(t *testing.T) { testLegacyAuditImport(t, toAuditLayout1, false) })
	// A start that committed the import but was stopped before it renamed repo.db: the
	// next start finishes the rename (it used to refuse to start for good: "both hold
	// an audit log").
	t.Run("stopped before the rename", func(t *testing.T) { testLegacyAuditImport(t, nil, true) })
}

// toAuditLayout1 rewrites the audit log in db to the layout before audit schema 2.
func toAuditLayout1(t *testing.T, db *sql.DB) {
	rows, err := db.Query(`SELECT seq, hashes FROM audit_leaves ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type leaf struct {
		seq    int64
		hashes string
	}
	var leaves []leaf
	for rows.Next() {
		var l leaf
		if err := rows.Scan(&l.seq, &l.hashes); err != nil {
			t.Fatal(err)
		}
		leaves = append(leaves, l)
	}
	rows.Close()
	for _, l := range leaves {
		b, err := base64.StdEncoding.DecodeString(l.hashes)
		if err != nil || len(b)%tlog.HashSize != 0 {
			t.Fatalf("record %d hashes %q: %v", l.seq, l.hashes, err)
		}
		for i := 0; i < len(b)/tlog.HashSize; i++ {
			var h tlog.Hash
			copy(h[:], b[i*tlog.HashSize:])
			if _, err := db.Exec(`INSERT INTO audit_hashes(id, hash) VALUES (?, ?)`, tlog.StoredHashIndex(0, l.seq-1)+int64(i), h.String()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, q := range []string{`ALTER TABLE audit_leaves DROP COLUMN hashes`, `ALTER TABLE audit_tree_size DROP COLUMN frontier`, `DROP TABLE audit_schema`} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

func testLegacyAuditImport(t *testing.T, layout func(*testing.T, *sql.DB), stopBeforeRename bool) {
	f := newFixtureOn(t, repository.KeyEd25519, "") // repo.db sits beside a sqlite fleet.db only
	ctx := context.Background()
	// newFixture's own events went to fleet.db; start from a data dir that has only repo.db.
	for _, s := range []string{"", "-wal", "-shm"} {
		os.Remove(DBPath(f.repo.Dir()) + s)
	}
	legacy := filepath.Join(f.repo.Dir(), "repo.db")
	db, err := OpenDB(ctx, legacy)
	if err != nil {
		t.Fatal(err)
	}
	key, err := repository.AuditKey(f.repo.Dir())
	if err != nil {
		t.Fatal(err)
	}
	l, err := audit.Open(ctx, audit.Config{DB: db, Key: key, Origin: AuditOrigin(f.repo)})
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"repo.publish", "device.enroll", "install.report"} {
		if _, err := l.Append(ctx, "server", k, "x", nil); err != nil {
			t.Fatal(err)
		}
	}
	if layout != nil {
		layout(t, db)
	}
	if _, err := db.Exec(`CREATE TABLE device_reports_seen (device TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY(device, id));
		INSERT INTO device_reports_seen VALUES ('dev-1', 'r1')`); err != nil {
		t.Fatal(err)
	}
	db.Close()

	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if stopBeforeRename {
		// The rename fails (a non-empty directory is in the way), after the commit.
		if err := os.MkdirAll(filepath.Join(legacy+".imported", "x"), 0o700); err != nil {
			t.Fatal(err)
		}
		if _, err := audit.Open(ctx, audit.Config{DB: store.DB(), Key: key, Origin: AuditOrigin(f.repo)}); err != nil {
			t.Fatal(err)
		}
		if err := importLegacyAudit(ctx, f.repo.Dir(), store.DB()); err == nil || !strings.Contains(err.Error(), "imported") {
			t.Fatalf("import with its rename blocked = %v; want the rename's error", err)
		}
		if _, err := os.Stat(legacy); err != nil {
			t.Fatalf("repo.db after the blocked rename: %v", err)
		}
		if err := os.RemoveAll(legacy + ".imported"); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, NoFleetMetrics: true}); err != nil {
		t.Fatal(err)
	}
	got, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := got.Records(ctx, audit.Query{})
	if err != nil || len(recs) != 3 || recs[2].Kind != "install.report" {
		t.Fatalf("audit records in fleet.db after import = %d, %v; want the 3 of repo.db", len(recs), err)
	}
	var n int
	store.DB().QueryRow(`SELECT count(*) FROM device_reports_seen WHERE device_id = 'dev-1' AND id = 'r1'`).Scan(&n)
	if n != 1 {
		t.Fatal("the report dedup mark of repo.db was not imported")
	}
	if _, err := os.Stat(legacy); !os.IsNotExist(err) {
		t.Fatalf("repo.db still there after the import (%v)", err)
	}
	if _, err := os.Stat(legacy + ".imported"); err != nil {
		t.Fatalf("repo.db.imported: %v", err)
	}
	if _, err := got.Append(ctx, "server", "after", "x", nil); err != nil {
		t.Fatalf("append after the import: %v", err)
	}
	var buf bytes.Buffer
	if err := got.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if rep, err := audit.VerifyWithKey(&buf, got.PublicKey(), got.Origin()); err != nil || rep.Records != 4 {
		t.Fatalf("Verify(export after the import) = %+v, %v; want 4 records", rep, err)
	}
}
