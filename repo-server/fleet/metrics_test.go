package fleet

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

func testCollector(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	for _, id := range []string{"a", "b", "c"} {
		s.Enroll(ctx, id, nil, t0)
	}
	s.SetQuarantine(ctx, "c", true, "tamper")
	if err := s.Decommission(ctx, "b", "scrapped", t0); err != nil {
		t.Fatal(err)
	}
	s.RecordVerdict(ctx, "a", policy.VerdictTrusted, "", t0)
	s.RecordVerdict(ctx, "b", policy.VerdictUntrusted, "", t0)
	s.AddReport(ctx, wire.Report{DeviceID: "a", RolloutID: "r", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeCommitted, Bytes: 500, At: t0})
	s.AddReport(ctx, wire.Report{DeviceID: "b", RolloutID: "r", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeRolledBack, Bytes: 500, At: t0})
	r := &policy.Rollout{ID: "r", Waves: []policy.Wave{{Percent: 10, Soak: time.Hour}, {Percent: 100}}}
	st, evs := policy.Plan(r, policy.RolloutState{}, nil, t0)
	s.SaveRollout(ctx, st, evs)

	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(s, 0, nil))
	want := `
# HELP edgeward_attestation_verdicts_total Attestation verdicts by verdict.
# TYPE edgeward_attestation_verdicts_total counter
edgeward_attestation_verdicts_total{verdict="trusted"} 1
edgeward_attestation_verdicts_total{verdict="untrusted"} 1
# HELP edgeward_fleet_devices Enrolled devices.
# TYPE edgeward_fleet_devices gauge
edgeward_fleet_devices 3
# HELP edgeward_fleet_devices_decommissioned Devices taken out of service (their check-ins are refused); also counted in edgeward_fleet_devices.
# TYPE edgeward_fleet_devices_decommissioned gauge
edgeward_fleet_devices_decommissioned 1
# HELP edgeward_fleet_devices_quarantined Quarantined devices.
# TYPE edgeward_fleet_devices_quarantined gauge
edgeward_fleet_devices_quarantined 1
# HELP edgeward_fleet_downloaded_bytes_total Bytes downloaded for installs, by rollout.
# TYPE edgeward_fleet_downloaded_bytes_total counter
edgeward_fleet_downloaded_bytes_total{rollout="r"} 1000
# HELP edgeward_fleet_install_reports_total Install reports by rollout and outcome.
# TYPE edgeward_fleet_install_reports_total counter
edgeward_fleet_install_reports_total{outcome="committed",rollout="r"} 1
edgeward_fleet_install_reports_total{outcome="rolled_back",rollout="r"} 1
# HELP edgeward_rollout_status 1 for the rollout's current status.
# TYPE edgeward_rollout_status gauge
edgeward_rollout_status{rollout="r",status="active"} 1
# HELP edgeward_rollout_wave Index (from 0) of the rollout's current wave.
# TYPE edgeward_rollout_wave gauge
edgeward_rollout_wave{rollout="r"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestCollectorServesScrapesFromOneComputation: scrapes within CacheFor reuse one
// computation (the public /metrics cannot make the store scan its tables once per
// request), and a scrape after it sees the store as it is.
func TestCollectorServesScrapesFromOneComputation(t *testing.T) {
	ctx := context.Background()
	s, _ := openStore(t, sqliteDB)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.Enroll(ctx, "a", nil, t0)
	c := NewCollector(s, 0, nil)
	c.CacheFor = time.Hour
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	devices := func() float64 {
		t.Helper()
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		for _, mf := range mfs {
			if mf.GetName() == "edgeward_fleet_devices" {
				return mf.GetMetric()[0].GetGauge().GetValue()
			}
		}
		t.Fatal("no edgeward_fleet_devices")
		return 0
	}
	if n := devices(); n != 1 {
		t.Fatalf("devices = %v; want 1", n)
	}
	s.Enroll(ctx, "b", nil, t0)
	if n := devices(); n != 1 {
		t.Fatalf("devices within CacheFor = %v; want the first computation's 1", n)
	}
	c.mu.Lock()
	c.cachedAt = c.cachedAt.Add(-2 * time.Hour) // CacheFor has passed
	c.mu.Unlock()
	if n := devices(); n != 2 {
		t.Fatalf("devices after CacheFor = %v; want 2", n)
	}
}
