package fleet

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// queryPlan returns sqlite's plan for q, one line per step.
func queryPlan(t *testing.T, db *sql.DB, q string, args ...any) []string {
	t.Helper()
	rows, err := db.Query(`EXPLAIN QUERY PLAN `+q, args...)
	if err != nil {
		t.Fatalf("EXPLAIN QUERY PLAN %s: %v", q, err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id, parent, notused int
		var detail string
		if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
			t.Fatal(err)
		}
		out = append(out, detail)
	}
	return out
}

// TestCheckInReadsAreBounded seeds 100,000 reports and verdicts and checks that every
// read a check-in makes is an index search (no scan of a table that grows with
// history), and that the planner's wave counts, read through the rollout_latest index,
// equal policy.WaveStats over all the reports.
func TestCheckInReadsAreBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 100,000 reports")
	}
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-2
    target: {kind: model, name: vib, version: 2.0.0}
    waves: [{percent: 5}, {percent: 30}, {percent: 100}]
  - id: rt-2
    target: {kind: runtime, name: ort, version: 1.24.0}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	const devices, perDevice = 2000, 50
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var all []wire.Report
	err = s.tx(ctx, func(tx *txn) error {
		for i := 0; i < devices; i++ {
			d := Device{EnrolledAt: t0}
			d.ID, d.Slots = fmt.Sprintf("dev-%05d", i), map[artifact.Kind]policy.Slot{}
			if err := putDevice(ctx, tx, d, true); err != nil {
				return err
			}
			for j := 0; j < 5; j++ {
				if _, err := tx.ExecContext(ctx, `INSERT INTO used_nonces (device_id, tag, expires_at) VALUES (?, ?, ?)`, d.ID, []byte{byte(j)}, i*5+j); err != nil {
					return err
				}
			}
			for j := 0; j < perDevice; j++ {
				at := t0.Add(time.Duration(j*devices+i) * time.Second)
				r := wire.Report{DeviceID: d.ID, RolloutID: "vib-2", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeCommitted, At: at}
				switch {
				case j%2 == 1:
					r.RolloutID, r.Kind, r.Name, r.Version = "rt-2", artifact.KindRuntime, "ort", "1.24.0"
				case (i+j)%7 == 0:
					r.Outcome = wire.OutcomeProbeFailed
				}
				if err := insertReport(ctx, tx, r, r.At, true); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `INSERT INTO verdicts (device_id, verdict, detail, at) VALUES (?, 'trusted', '', ?)`, d.ID, ns(at)); err != nil {
					return err
				}
				all = append(all, r)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	s.db.QueryRow(`SELECT count(*) FROM reports`).Scan(&n)
	if n < 100000 {
		t.Fatalf("seeded %d reports; want at least 100,000", n)
	}
	if _, err := s.db.Exec(`ANALYZE`); err != nil {
		t.Fatal(err)
	}

	ro := p.Rollout("vib-2")
	lo, hi := ro.WaveRange(1)
	for _, c := range []struct {
		name  string
		query string
		args  []any
		index string // the index the plan must search
	}{
		{"device row", deviceQuery, []any{"dev-00042"}, "sqlite_autoindex_devices_1"},
		{"device row as a check-in reads it", admitQuery, []any{"dev-00042"}, "sqlite_autoindex_devices_1"},
		{"used nonces pruned", pruneUsedNoncesQuery, []any{int64(500)}, "used_nonces_expiry"},
		{"report dedup mark", seenQuery, []any{"dev-00042", "r1"}, "PRIMARY KEY"},
		{"rollout state", rolloutQuery, []any{"vib-2"}, "sqlite_autoindex_rollouts_1"},
		{"wave counts", waveCountsQuery, []any{"vib-2", "vib", "2.0.0", lo, hi, int64(0)}, "rollout_latest_bucket"},
		{"device update", `UPDATE devices SET slots = ? WHERE id = ?`, []any{"{}", "dev-00042"}, "sqlite_autoindex_devices_1"},
		{"a device's verdicts", `SELECT verdict FROM verdicts WHERE device_id = ? ORDER BY at DESC LIMIT 10`, []any{"dev-00042"}, "verdicts_device"},
		{"a device's reports", `SELECT outcome FROM reports WHERE device_id = ? ORDER BY at DESC LIMIT 10`, []any{"dev-00042"}, "reports_device"},
	} {
		plan := queryPlan(t, s.db.DB, c.query, c.args...)
		joined := strings.Join(plan, "; ")
		t.Logf("%s: %s", c.name, joined)
		if len(plan) == 0 || !strings.Contains(joined, c.index) {
			t.Errorf("%s: plan %q; want a search of index %s", c.name, joined, c.index)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN") {
				t.Errorf("%s: plan step %q scans a table (plan: %s)", c.name, step, joined)
			}
		}
	}

	// The index counts what the reports say.
	for _, r := range p.Rollouts {
		got, err := s.WaveStats(ctx, r, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if want := policy.WaveStats(r, all, time.Time{}); !reflect.DeepEqual(got, want) {
			t.Errorf("WaveStats(%s) = %+v; want %+v (policy.WaveStats over the reports)", r.ID, got, want)
		}
		since := t0.Add(40 * devices * time.Second)
		got, _ = s.WaveStats(ctx, r, since)
		if want := policy.WaveStats(r, all, since); !reflect.DeepEqual(got, want) {
			t.Errorf("WaveStats(%s, since) = %+v; want %+v", r.ID, got, want)
		}
	}

	// A check-in on the seeded store plans and decides.
	res, err := s.Admit(ctx, Admission{CheckIn: CheckIn{ID: "dev-00042", Hardware: "x86_64", AgentVersion: "0.1.0", At: t0.Add(48 * time.Hour)},
		Reports: []wire.Report{{ID: "new", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeCommitted, At: t0.Add(48 * time.Hour)}},
		Verdict: policy.VerdictTrusted, Policy: p, Now: t0.Add(48 * time.Hour)}, nil)
	if err != nil || res.Accepted != 1 || len(res.Decision.Slots) == 0 {
		t.Fatalf("Admit on the seeded store = %+v, %v", res, err)
	}
}

// TestUpgradeBackfillsLatestReports opens a database written at schema version 3
// (reports, no rollout_latest): the upgrade to version 4 fills rollout_latest from the
// reports, so the planner counts what it counted before.
func testUpgradeBackfillsLatestReports(t *testing.T, db opener) {
	ctx := context.Background()
	path := db(t)
	raw := oldSchema(t, path, 3)
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	var reps []wire.Report
	for i := 0; i < 40; i++ {
		id := fmt.Sprintf("dev-%d", i%10)
		if i < 10 {
			if _, err := raw.Exec(`INSERT INTO devices (id, enrolled_at) VALUES (?, 1)`, id); err != nil {
				t.Fatal(err)
			}
		}
		out := wire.OutcomeCommitted
		if i%3 == 0 {
			out = wire.OutcomeRolledBack
		}
		r := wire.Report{DeviceID: id, RolloutID: "vib-2", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: out, At: t0.Add(time.Duration(i) * time.Minute)}
		reps = append(reps, r)
		if _, err := raw.Exec(`INSERT INTO reports (device_id, rollout_id, kind, name, version, outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
			r.DeviceID, r.RolloutID, string(r.Kind), r.Name, r.Version, string(r.Outcome), ns(r.At)); err != nil {
			t.Fatal(err)
		}
	}
	raw.Close()

	s, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("Open(schema 3) = %v", err)
	}
	defer s.Close()
	if v, err := s.schemaVersion(ctx, s.db); err != nil || v != len(migrations) {
		t.Fatalf("schema version after upgrade = %d, %v; want %d", v, err, len(migrations))
	}
	r := &policy.Rollout{ID: "vib-2", Target: policy.Target{Kind: artifact.KindModel, Name: "vib", Version: "2.0.0"}, Waves: []policy.Wave{{Percent: 50}, {Percent: 100}}}
	got, err := s.WaveStats(ctx, r, time.Time{})
	if want := policy.WaveStats(r, reps, time.Time{}); err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("WaveStats after upgrade = %+v, %v; want %+v", got, err, want)
	}
}

// TestCheckInReadsAreBoundedPostgres is TestCheckInReadsAreBounded's plan check on
// PostgreSQL: 100,000 reports and verdicts and 100,000 latest-report rows (50 rollouts
// of 2,000 devices), seeded in SQL, analysed, and every read a check-in makes on a table
// that grows with history is an index scan, never a sequential one. (The rollouts table
// holds one row per rollout, so PostgreSQL may read it whole; it does not grow with
// history.)
func TestCheckInReadsAreBoundedPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("seeds 100,000 reports")
	}
	ctx := context.Background()
	s, err := Open(ctx, pg.Database(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, q := range []string{
		`INSERT INTO devices (id, enrolled_at) SELECT 'dev-' || lpad(i::text, 5, '0'), 1 FROM generate_series(0, 1999) i`,
		`INSERT INTO reports (device_id, rollout_id, kind, name, version, outcome, at)
			SELECT 'dev-' || lpad((g % 2000)::text, 5, '0'), 'vib-' || (g % 50), 'model', 'vib', (g % 50) || '.0.0', 'committed', g FROM generate_series(0, 99999) g`,
		`INSERT INTO used_nonces (device_id, tag, expires_at) SELECT id, int4send(g), g FROM devices, generate_series(1, 5) g`,
		`INSERT INTO verdicts (device_id, verdict, at) SELECT 'dev-' || lpad((g % 2000)::text, 5, '0'), 'trusted', g FROM generate_series(0, 99999) g`,
		`INSERT INTO device_reports_seen (device_id, id) SELECT 'dev-' || lpad((g % 2000)::text, 5, '0'), 'r' || g FROM generate_series(0, 99999) g`,
		`INSERT INTO rollout_latest (rollout_id, name, version, device_id, bucket, failed, at)
			SELECT 'vib-' || r, 'vib', r || '.0.0', id, abs(hashtext(id || r)) % 10000, (abs(hashtext(id)) % 7 = 0)::int, 1 FROM devices, generate_series(0, 49) r`,
		`ANALYZE`,
	} {
		if _, err := s.db.Exec(q); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM reports`).Scan(&n); err != nil || n < 100000 {
		t.Fatalf("seeded %d reports (%v); want at least 100,000", n, err)
	}
	for _, c := range []struct {
		name  string
		query string
		args  []any
		index string // the index the plan must search
	}{
		{"device row", deviceQuery, []any{"dev-00042"}, "devices_pkey"},
		{"device row as a check-in reads it", admitQuery, []any{"dev-00042"}, "devices_pkey"},
		{"used nonces pruned", pruneUsedNoncesQuery, []any{int64(3)}, "used_nonces_"},
		{"report dedup mark", seenQuery, []any{"dev-00042", "r42"}, "device_reports_seen_pkey"},
		{"wave counts", waveCountsQuery, []any{"vib-7", "vib", "7.0.0", 500, 3000, int64(0)}, "rollout_latest_"},
		{"device update", `UPDATE devices SET slots = ? WHERE id = ?`, []any{"{}", "dev-00042"}, "devices_pkey"},
		{"a device's verdicts", `SELECT verdict FROM verdicts WHERE device_id = ? ORDER BY at DESC LIMIT 10`, []any{"dev-00042"}, "verdicts_device"},
		{"a device's reports", `SELECT outcome FROM reports WHERE device_id = ? ORDER BY at DESC LIMIT 10`, []any{"dev-00042"}, "reports_device"},
	} {
		rows, err := s.db.QueryContext(ctx, `EXPLAIN `+c.query, c.args...)
		if err != nil {
			t.Fatalf("EXPLAIN %s: %v", c.name, err)
		}
		var plan []string
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, strings.TrimSpace(line))
		}
		rows.Close()
		joined := strings.Join(plan, "; ")
		t.Logf("%s: %s", c.name, joined)
		if !strings.Contains(joined, c.index) {
			t.Errorf("%s: plan %q; want a search of index %s", c.name, joined, c.index)
		}
		if strings.Contains(joined, "Seq Scan") {
			t.Errorf("%s: the plan scans a table: %s", c.name, joined)
		}
	}
}
