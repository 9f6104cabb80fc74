package operatorapi

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestFleetSummaryCountsCountedReports: the fleet's KPIs are the reports its rollouts'
// planner counted. A device no rollout selected sent 1,000 failures per check-in, and
// the fleet read success 0.00 and a rollout 60,000 failures its planner never counted
// (found from outside, 2 Dec).
func TestFleetSummaryCountsCountedReports(t *testing.T) {
	ctx := context.Background()
	store, err := fleet.Open(ctx, filepath.Join(t.TempDir(), "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	now := time.Now().UTC()
	for _, id := range []string{"member", "outsider"} {
		if err := store.Enroll(ctx, id, nil, now.Add(-time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if err := store.AddReport(ctx, wire.Report{ID: "r1", DeviceID: "member", RolloutID: "vib-1", Kind: artifact.KindModel, Name: "vib", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: now}); err != nil {
		t.Fatal(err)
	}
	// Stored for information only (Admit's Counted false): as a check-in stores them.
	for i := range 50 {
		if _, err := store.DB().ExecContext(ctx, `INSERT INTO reports (device_id, rollout_id, kind, name, version, outcome, cause, bytes, accuracy, p99_ms, peak_rss_mb, at, device_at, counted, delta, bytes_saved, delta_fallback)
			VALUES ('outsider', 'vib-1', 'model', 'vib', '1.0.0', 'probe_failed', ?, 0, 0, 0, 0, ?, ?, false, '', 0, '')`, "made up "+string(rune('a'+i%26)), now.UnixNano(), now.UnixNano()); err != nil {
			t.Fatal(err)
		}
	}
	sum, err := LoadFleetSummary(ctx, store, now.Add(-24*time.Hour), now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if k := sum.KPI; k.Attempts != 1 || k.SuccessRate != 1 {
		t.Errorf("fleet KPIs = %d attempts, success %.2f; want the one counted report, success 1", k.Attempts, k.SuccessRate)
	}
}
