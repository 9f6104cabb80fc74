package reposerver

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// A data directory from before the audit log moved into fleet.db: its repo.db (audit
// log and report dedup marks) is imported on first open, then renamed.
func TestLegacyAuditDatabaseIsImported(t *testing.T) {
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
