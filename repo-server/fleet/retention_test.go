package fleet

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// testPrune: retention deletes the history before its horizon (verdicts, decisions but
// each device's newest, reports but those of rollouts still running), in batches, and
// leaves everything else: the devices' current verdicts, the planner's latest reports,
// rollouts and the audit log.
func testPrune(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := func(n int) time.Time { return t0.Add(time.Duration(n) * time.Hour) }
	for _, id := range []string{"a", "b"} {
		if err := s.Enroll(ctx, id, nil, t0); err != nil {
			t.Fatal(err)
		}
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Verdicts: a at 0, 1, 3 h; b at 1 h (untrusted, its current verdict).
	must(s.RecordVerdict(ctx, "a", policy.VerdictTrusted, "0", h(0)))
	must(s.RecordVerdict(ctx, "a", policy.VerdictTrusted, "1", h(1)))
	must(s.RecordVerdict(ctx, "a", policy.VerdictTrusted, "3", h(3)))
	must(s.RecordVerdict(ctx, "b", policy.VerdictUntrusted, "1", h(1)))
	// Decisions: a at 0 and 1 h (its newest, kept though old), b at 0 (its only one).
	for _, d := range []policy.Decision{{DeviceID: "a", At: h(0)}, {DeviceID: "a", At: h(1)}, {DeviceID: "b", At: h(0)}} {
		must(s.RecordDecision(ctx, d))
	}
	// Rollouts: "done" completed, "live" still running.
	must(s.SaveRollout(ctx, policy.RolloutState{ID: "done", Status: policy.StatusCompleted, Updated: h(0)}, nil))
	must(s.SaveRollout(ctx, policy.RolloutState{ID: "live", Status: policy.StatusActive, Updated: h(0)}, nil))
	report := func(dev, rollout, version string, at time.Time) {
		t.Helper()
		must(s.AddReport(ctx, wire.Report{ID: dev + rollout + version, DeviceID: dev, RolloutID: rollout, Kind: artifact.KindModel,
			Name: "m", Version: version, Outcome: wire.OutcomeCommitted, At: at}))
	}
	report("a", "done", "1.0.0", h(0))
	report("a", "live", "1.1.0", h(0))
	report("b", "", "0.9.0", h(0))
	report("b", "done", "1.0.0", h(3))
	count := func(table string) int {
		t.Helper()
		var n int
		must(s.db.QueryRowContext(ctx, `SELECT count(*) FROM `+table).Scan(&n))
		return n
	}
	latest := count("rollout_latest")
	marks := count("device_reports_seen")
	// Report marks: one old, one recent, one from before marks had a time (kept).
	for _, m := range []struct {
		id string
		at int64
	}{{"old", ns(h(0))}, {"new", ns(h(3))}, {"legacy", 0}} {
		if _, err := s.db.ExecContext(ctx, `INSERT INTO device_reports_seen (device_id, id, at) VALUES ('a', ?, ?)`, m.id, m.at); err != nil {
			t.Fatal(err)
		}
	}

	// Rollout offers: the aborted rollout's old one goes; the completed one's, and a
	// recent one, stay.
	must(s.SaveRollout(ctx, policy.RolloutState{ID: "gone", Status: policy.StatusAborted, Updated: h(0)}, nil))
	for _, o := range []struct {
		rollout, device string
		at              time.Time
	}{{"gone", "a", h(0)}, {"gone", "b", h(3)}, {"done", "a", h(0)}} {
		if _, err := s.db.ExecContext(ctx, `INSERT INTO rollout_offers (rollout_id, device_id, bucket, at) VALUES (?, ?, 1, ?)`, o.rollout, o.device, ns(o.at)); err != nil {
			t.Fatal(err)
		}
	}

	got, err := s.prune(ctx, h(2), 1) // one row per statement: the batches loop
	if err != nil {
		t.Fatal(err)
	}
	if want := (Pruned{Verdicts: 3, Decisions: 1, Reports: 2, ReportMarks: 1, RolloutOffers: 1}); got != want {
		t.Errorf("prune = %+v; want %+v", got, want)
	}
	vs, err := s.DeviceVerdicts(ctx, "a", time.Time{}, 10)
	if err != nil || len(vs) != 1 || vs[0].Detail != "3" {
		t.Errorf("a's verdicts after prune = %+v, %v; want only the one at 3 h", vs, err)
	}
	if vs, err := s.DeviceVerdicts(ctx, "b", time.Time{}, 10); err != nil || len(vs) != 0 {
		t.Errorf("b's verdicts after prune = %+v, %v; want none", vs, err)
	}
	if d, err := s.Device(ctx, "b"); err != nil || d.Verdict != policy.VerdictUntrusted {
		t.Errorf("b's current verdict after prune = %q, %v; want untrusted (kept on its row)", d.Verdict, err)
	}
	for dev, want := range map[string]time.Time{"a": h(1), "b": h(0)} {
		ds, err := s.Decisions(ctx, dev, 10)
		if err != nil || len(ds) != 1 || !ds[0].At.Equal(want) {
			t.Errorf("%s's decisions after prune = %+v, %v; want its newest only", dev, ds, err)
		}
	}
	reps, err := s.Reports(ctx, ReportFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, r := range reps {
		kept = append(kept, r.DeviceID+"/"+r.RolloutID+"/"+r.Version)
	}
	slices.Sort(kept)
	if want := []string{"a/live/1.1.0", "b/done/1.0.0"}; !slices.Equal(kept, want) {
		t.Errorf("reports after prune = %v; want %v (the running rollout's and the recent)", kept, want)
	}
	if n := count("rollout_latest"); n != latest {
		t.Errorf("rollout_latest holds %d rows after prune; want %d (the planner's counts untouched)", n, latest)
	}
	if n := count("device_reports_seen"); n != marks+2 {
		t.Errorf("%d report marks after prune; want %d (the recent and the legacy kept)", n, marks+2)
	}
	if n := count("rollouts"); n != 3 {
		t.Errorf("%d rollouts after prune; want 3 (rollouts are kept)", n)
	}
	if n := count("rollout_offers"); n != 2 {
		t.Errorf("%d rollout offers after prune; want 2 (the completed rollout's, and the aborted one's recent one)", n)
	}
	// Nothing more to delete: a second pass deletes nothing.
	if again, err := s.Prune(ctx, h(2)); err != nil || again != (Pruned{}) {
		t.Errorf("second prune = %+v, %v; want nothing", again, err)
	}
}
