package fleet

import (
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

func rep(dev, rollout string, o wire.Outcome, cause string, at time.Duration) wire.Report {
	return wire.Report{DeviceID: dev, RolloutID: rollout, Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: o, Cause: cause, At: t0.Add(at), Bytes: 10}
}

func TestComputeRollout(t *testing.T) {
	reports := []wire.Report{
		rep("a", "r", wire.OutcomeCommitted, "", 10*time.Minute),
		rep("b", "r", wire.OutcomeProbeFailed, "accuracy 0.91 < 0.95", 20*time.Minute),
		rep("b", "r", wire.OutcomeCommitted, "", 40*time.Minute), // retried after ClearFailed
		rep("c", "r", wire.OutcomeRolledBack, "p99 9ms > 5ms", 30*time.Minute),
		rep("d", "r", wire.OutcomeRolledBack, "p99 9ms > 5ms", 30*time.Minute),
		rep("e", "other", wire.OutcomeCommitted, "", time.Minute),
	}
	reports[0].Probe = wire.Probe{Accuracy: 0.96, P99Ms: 4, PeakRSSMB: 40}
	reports[1].Probe = wire.Probe{Accuracy: 0.91, P99Ms: 1, PeakRSSMB: 100} // failed: not averaged
	reports[2].Probe = wire.Probe{Accuracy: 0.98, P99Ms: 2, PeakRSSMB: 50}
	k := ComputeRollout("r", t0, reports)
	if k.Attempts != 5 || k.Devices != 4 || k.Committed != 2 || k.SuccessRate != 0.4 || k.BytesDownloaded != 50 {
		t.Errorf("ComputeRollout counts = %+v", k)
	}
	if k.Failures[wire.OutcomeRolledBack] != 2 || k.Failures[wire.OutcomeProbeFailed] != 1 ||
		k.Causes["rolled_back: p99 9ms > 5ms"] != 2 || k.Causes["probe_failed: accuracy 0.91 < 0.95"] != 1 {
		t.Errorf("failures = %v causes = %v", k.Failures, k.Causes)
	}
	if k.CommitP50 != 10*time.Minute || k.CommitP95 != 40*time.Minute {
		t.Errorf("commit p50/p95 = %v/%v; want 10m/40m", k.CommitP50, k.CommitP95)
	}
	if k.MeanAccuracy != 0.97 || k.MeanP99Ms != 3 || k.MeanPeakRSSMB != 45 {
		t.Errorf("mean accuracy/p99/peak RSS = %v/%v/%v; want 0.97/3/45", k.MeanAccuracy, k.MeanP99Ms, k.MeanPeakRSSMB)
	}
	if e := ComputeRollout("none", t0, reports); e.Attempts != 0 || e.SuccessRate != 0 || e.CommitP50 != 0 {
		t.Errorf("empty rollout KPI = %+v", e)
	}
}

func TestTimeToPercent(t *testing.T) {
	var reports []wire.Report
	for i := range 10 {
		reports = append(reports, rep(fmt.Sprintf("d%d", i), "r", wire.OutcomeCommitted, "", time.Duration(i+1)*time.Hour))
	}
	reports = append(reports, rep("d0", "r", wire.OutcomeCommitted, "", 50*time.Hour)) // a later commit does not count
	reports = append(reports, rep("x", "r", wire.OutcomeInstallError, "", time.Minute))
	tests := []struct {
		size    int
		pct     float64
		want    time.Duration
		reached bool
	}{
		{100, 1, time.Hour, true},
		{100, 10, 10 * time.Hour, true},
		{100, 11, 0, false},
		{10, 50, 5 * time.Hour, true},
		{10, 100, 10 * time.Hour, true},
		{10, 95, 10 * time.Hour, true}, // 9.5 devices round up to 10
		{0, 50, 0, false},
	}
	for _, tt := range tests {
		got, ok := TimeToPercent("r", t0, tt.size, reports, tt.pct)
		if got != tt.want || ok != tt.reached {
			t.Errorf("TimeToPercent(size %d, %v%%) = %v, %v; want %v, %v", tt.size, tt.pct, got, ok, tt.want, tt.reached)
		}
	}
}

func TestComputeFleet(t *testing.T) {
	reports := []wire.Report{
		rep("a", "r1", wire.OutcomeCommitted, "", time.Hour),
		rep("b", "r1", wire.OutcomeAttestationUntrusted, "", time.Hour),
		rep("a", "r2", wire.OutcomeCommitted, "", 2*time.Hour),
		rep("c", "r2", wire.OutcomeCommitted, "", 3*time.Hour),
	}
	verdicts := []VerdictRecord{{DeviceID: "a", Verdict: policy.VerdictTrusted}, {DeviceID: "b", Verdict: policy.VerdictUntrusted}, {DeviceID: "a", Verdict: policy.VerdictTrusted}, {DeviceID: "c", Verdict: policy.VerdictTrusted}}
	f := ComputeFleet(reports, verdicts, map[string]time.Time{"r1": t0})
	if f.Attempts != 4 || f.SuccessRate != 0.75 || f.Failures[wire.OutcomeAttestationUntrusted] != 1 || f.Verdicts != 4 || f.AttestationPassRate != 0.75 {
		t.Errorf("ComputeFleet = %+v", f)
	}
	if len(f.Rollouts) != 2 || f.Rollouts[0].Rollout != "r1" || f.Rollouts[0].CommitP50 != time.Hour || f.Rollouts[1].CommitP95 != time.Hour {
		t.Errorf("per-rollout = %+v", f.Rollouts)
	}
	if e := ComputeFleet(nil, nil, nil); e.SuccessRate != 0 || e.AttestationPassRate != 0 || len(e.Rollouts) != 0 {
		t.Errorf("empty fleet = %+v", e)
	}
}

// TestInfrastructureIsNotCountedInTheSuccessRate: a device whose disk was full, or whose
// runtime died during the trial, says nothing about the version: those attempts are
// counted as retried and shown with their cause, but the success rate is over the
// attempts that had a result.
func TestInfrastructureIsNotCountedInTheSuccessRate(t *testing.T) {
	reports := []wire.Report{
		rep("a", "r", wire.OutcomeInfrastructure, "no space left on device", time.Minute),
		rep("a", "r", wire.OutcomeInfrastructure, "no space left on device", 2*time.Minute),
		rep("a", "r", wire.OutcomeCommitted, "", 3*time.Minute),
		rep("b", "r", wire.OutcomeInfrastructure, "trial: the runtime is down", time.Minute),
		rep("b", "r", wire.OutcomeCommitted, "", 4*time.Minute),
		rep("c", "r", wire.OutcomeProbeFailed, "accuracy 0.91 < 0.95", 5*time.Minute),
	}
	k := ComputeRollout("r", t0, reports)
	if k.Attempts != 6 || k.Retried != 3 || k.Committed != 2 || k.SuccessRate != 2.0/3 {
		t.Errorf("ComputeRollout attempts/retried/committed/success = %d/%d/%d/%v; want 6/3/2/%v", k.Attempts, k.Retried, k.Committed, k.SuccessRate, 2.0/3)
	}
	if k.Failures[wire.OutcomeInfrastructure] != 3 || k.Causes["infrastructure: no space left on device"] != 2 {
		t.Errorf("failures = %v causes = %v; want the retried attempts shown with their cause", k.Failures, k.Causes)
	}
	f := ComputeFleet(reports, nil, nil)
	if f.Attempts != 6 || f.Retried != 3 || f.SuccessRate != 2.0/3 {
		t.Errorf("ComputeFleet attempts/retried/success = %d/%d/%v; want 6/3/%v", f.Attempts, f.Retried, f.SuccessRate, 2.0/3)
	}
	// Only retried attempts so far: no result yet, not a 0 % success.
	only := ComputeRollout("r", t0, reports[:2])
	if only.SuccessRate != 0 || only.Retried != 2 || only.Committed != 0 {
		t.Errorf("ComputeRollout of retried attempts only = %+v", only)
	}
}

// TestCauseKeyKeepsFiguresWhole: a long cause groups failures cut at a word, marked
// cut, and valid UTF-8; a probe's figures within the first 200 bytes are whole (cut
// at 80 bytes, "(accuracy 0.32" lost its figures, found from outside, 2 Dec).
func TestCauseKeyKeepsFiguresWhole(t *testing.T) {
	probe := "trial of model vibration 2.0.0 failed its gates on probe set probes/vibration/2.0.0.json (400 rows, 3 classes): (accuracy 0.3212 < min_accuracy 0.85)"
	if got := causeKey(wire.Report{Outcome: wire.OutcomeProbeFailed, Cause: probe}); got != "probe_failed: "+probe {
		t.Errorf("causeKey = %q; want the whole cause", got)
	}
	long := strings.Repeat("é mot ", 100)
	got := causeKey(wire.Report{Outcome: wire.OutcomeInstallError, Cause: long})
	if !utf8.ValidString(got) || !strings.HasSuffix(got, " …") || len(got) > len("install_error: ")+maxCauseKey+len(" …") || strings.HasSuffix(strings.TrimSuffix(got, " …"), " m") {
		t.Errorf("causeKey of a long cause = %q; want it cut at a word, marked, valid UTF-8", got)
	}
}
