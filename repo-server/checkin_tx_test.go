package reposerver

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// fleetSnapshot is what a check-in may change in the fleet database.
func fleetSnapshot(t *testing.T, db *sql.DB, device string) string {
	t.Helper()
	var out string
	for _, q := range []string{
		`SELECT count(*) FROM reports`, `SELECT count(*) FROM device_reports_seen`, `SELECT count(*) FROM verdicts`,
		`SELECT count(*) FROM decisions`, `SELECT count(*) FROM audit_leaves`, `SELECT count(*) FROM rollout_latest`,
		`SELECT count(*) FROM rollout_events`,
	} {
		var n int
		if err := db.QueryRow(q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		out += fmt.Sprintf("%s = %d\n", q, n)
	}
	var slots, verdict string
	var last, verdictAt int64
	if err := db.QueryRow(`SELECT slots, verdict, verdict_at, last_check_in FROM devices WHERE id = $1`, device).Scan(&slots, &verdict, &verdictAt, &last); err != nil {
		t.Fatal(err)
	}
	return out + fmt.Sprintf("device: %s %s %d %d\n", slots, verdict, verdictAt, last)
}

// TestCheckInCommitsWholeOrNotAtAll injects a failure into each part of a check-in
// that carries a report: the report's insert, a write after it (the decision, the
// last one), and the audit append. The check-in is refused with a 5xx, nothing is
// changed, and the device's retry (same report ID) is stored and counted once.
//
// It runs on both fleet store backends: sqlite and PostgreSQL.
func TestCheckInCommitsWholeOrNotAtAll(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testCheckInCommitsWholeOrNotAtAll(t, func(*testing.T) string { return "" }) })
	t.Run("postgres", func(t *testing.T) {
		testCheckInCommitsWholeOrNotAtAll(t, func(t *testing.T) string { return pg.Database(t) })
	})
}

// injectFailure makes every insert into table fail until the returned function undoes it.
func injectFailure(t *testing.T, db *sql.DB, postgres bool, table string) (undo func()) {
	t.Helper()
	stmts := []string{`CREATE TRIGGER inject BEFORE INSERT ON ` + table + ` BEGIN SELECT RAISE(ABORT, 'injected failure'); END`}
	drop := `DROP TRIGGER inject`
	if postgres {
		stmts = []string{
			`CREATE OR REPLACE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$`,
			`CREATE TRIGGER inject BEFORE INSERT ON ` + table + ` FOR EACH ROW EXECUTE FUNCTION inject_failure()`,
		}
		drop = `DROP TRIGGER inject ON ` + table
	}
	for _, q := range stmts {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		t.Helper()
		if _, err := db.Exec(drop); err != nil {
			t.Fatal(err)
		}
	}
}

func testCheckInCommitsWholeOrNotAtAll(t *testing.T, database func(*testing.T) string) {
	for _, table := range []string{"reports", "decisions", "audit_leaves"} {
		t.Run(table, func(t *testing.T) {
			where := database(t)
			f, d := newDeviceFixtureOn(t, testPolicy, where)
			ctx := context.Background()
			model := []byte("vibration model 1.0.0 bytes")
			if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", model, nil); err != nil {
				t.Fatal(err)
			}
			if _, err := d.checkIn(d.request()); err != nil {
				t.Fatalf("first check-in: %v", err)
			}
			d.load(artifact.KindModel, "vibration", "1.0.0", model)
			d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "1.0.0"}
			rep := wire.Report{ID: "commit-1", Kind: artifact.KindModel, Name: "vibration", Version: "1.0.0", Outcome: "committed", At: time.Now()}

			db, err := OpenDB(ctx, DBLocation(f.repo.Dir(), where))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			undo := injectFailure(t, db, where != "", table)
			before := fleetSnapshot(t, db, d.id)
			_, err = d.checkIn(d.request(rep))
			var apiErr *deviceapi.Error
			if !errors.As(err, &apiErr) || apiErr.Status < 500 {
				t.Fatalf("check-in with a failing %s insert = %v; want a 5xx", table, err)
			}
			if after := fleetSnapshot(t, db, d.id); after != before {
				t.Fatalf("a refused check-in changed the fleet database:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			undo()
			for i := 0; i < 2; i++ { // the retry, and a retry of the retry
				resp, err := d.checkIn(d.request(rep))
				if err != nil || resp.ReportsAccepted != 1 {
					t.Fatalf("retry %d = %+v, %v; want the report accepted", i, resp, err)
				}
			}
			reps, err := f.store.Reports(ctx, fleet.ReportFilter{DeviceID: d.id})
			if err != nil || len(reps) != 1 || reps[0].Outcome != "committed" || reps[0].RolloutID != "vib-1.0.0" {
				t.Fatalf("stored reports = %+v, %v; want the commit once, attributed to vib-1.0.0", reps, err)
			}
			l, err := f.srv.AuditLog(ctx)
			if err != nil {
				t.Fatal(err)
			}
			recs, err := l.Records(ctx, audit.Query{Kind: "install.report", Subject: d.id})
			if err != nil || len(recs) != 1 {
				t.Fatalf("install.report audit records = %d, %v; want 1", len(recs), err)
			}
		})
	}
}
