package policy

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
)

// TestCompatibleHardware: a target that names no hardware classes installs on any
// device; one that names some installs only on those.
func TestCompatibleHardware(t *testing.T) {
	d := &Device{ID: "dev-1", Hardware: "x86_64"}
	if err := Compatible(artifact.Meta{}, d); err != nil {
		t.Errorf("Compatible(no hardware list, x86_64) = %v; want nil", err)
	}
	if err := Compatible(artifact.Meta{Hardware: []string{"x86_64"}}, d); err != nil {
		t.Errorf("Compatible([x86_64], x86_64) = %v; want nil", err)
	}
	if err := Compatible(artifact.Meta{Hardware: []string{"aarch64"}}, d); err == nil {
		t.Error("Compatible([aarch64], x86_64) = nil; want an error")
	}
}

// TestEvaluateFirstInstallFailed: a device whose very first install of the target
// failed (nothing committed in the slot yet) is not sent the same version again.
func TestEvaluateFirstInstallFailed(t *testing.T) {
	p, err := Parse(File{Name: "p.yaml", Data: []byte(evalPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	d := &Device{
		ID: deviceIn(t, p.Rollout("new"), 0), Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
		Slots:   map[artifact.Kind]Slot{artifact.KindModel: {Failed: "3.1.0"}},
		Verdict: VerdictTrusted, VerdictAt: now,
	}
	got := Evaluate(p, d, map[string]RolloutState{}, now, nil).Slots[0]
	if got.Action != ActionHold || got.Reason != ReasonFailedOnDevice {
		t.Errorf("Evaluate(first install of 3.1.0 failed) model slot = %+v; want hold, %s", got, ReasonFailedOnDevice)
	}
}

// TestWaveStatsEdges: a wave without reports has a failure ratio of 0 (a number the API
// and the dashboard can show, not NaN), and a device outside every wave (the last wave
// is below 100 %) is not counted, nor does it break the count.
func TestWaveStatsEdges(t *testing.T) {
	r := &Rollout{ID: "r", Target: Target{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"},
		Waves: []Wave{{Percent: 10}, {Percent: 50}}}
	outside, inside := "", ""
	for i := 0; outside == "" || inside == ""; i++ {
		id := fmt.Sprintf("d%d", i)
		switch r.WaveOf(id) {
		case len(r.Waves):
			outside = id
		case 0:
			inside = id
		}
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	rep := func(dev string, o wire.Outcome) wire.Report {
		return wire.Report{DeviceID: dev, RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: o, At: at}
	}
	stats := WaveStats(r, []wire.Report{rep(outside, wire.OutcomeCommitted), rep(inside, wire.OutcomeProbeFailed)}, time.Time{})
	want := []WaveStat{{Wave: 0, Reported: 1, Failed: 1, Ratio: 1}, {Wave: 1}}
	if !slices.Equal(stats, want) {
		t.Errorf("WaveStats = %+v; want %+v", stats, want)
	}
}

// TestStatsOfEdges: the statistics built from stored counts agree with WaveStats on the
// edges: a wave without reports has ratio 0, and waves beyond the counts given are empty.
func TestStatsOfEdges(t *testing.T) {
	r := &Rollout{ID: "r", Waves: []Wave{{Percent: 10}, {Percent: 50}, {Percent: 100}}}
	got := StatsOf(r, []Counts{{}, {Succeeded: 1, Failed: 3}})
	want := []WaveStat{{Wave: 0}, {Wave: 1, Reported: 4, Succeeded: 1, Failed: 3, Ratio: 0.75}, {Wave: 2}}
	if !slices.Equal(got, want) {
		t.Errorf("StatsOf = %+v; want %+v", got, want)
	}
}

// TestPlanStatsEdges: a state written when the policy had more waves is clamped to the
// last wave that is left, and statistics shorter than the waves (a store that counted
// fewer) do not break planning.
func TestPlanStatsEdges(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	r := &Rollout{ID: "r", Target: Target{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"},
		Waves: []Wave{{Percent: 10, Soak: time.Hour, MinReports: 1, MaxFailureRatio: 0.5}, {Percent: 100, Soak: time.Hour, MinReports: 1, MaxFailureRatio: 0.5}}}
	started := RolloutState{ID: "r", Target: r.Target, Status: StatusActive, Started: now.Add(-time.Minute), WaveStarted: now.Add(-time.Minute)}

	lost := started
	lost.Wave = 2 // the policy had three waves
	if s, _ := PlanStats(r, lost, WaveStats(r, nil, time.Time{}), now); s.Wave != 1 || s.Status != StatusActive {
		t.Errorf("PlanStats(state at wave 2 of 2) = wave %d, %s; want wave 1, active", s.Wave, s.Status)
	}
	second := started
	second.Wave = 1
	if s, _ := PlanStats(r, second, []WaveStat{{Wave: 0, Reported: 2, Failed: 2, Ratio: 1}}, now); s.Status != StatusPaused {
		t.Errorf("PlanStats(wave 0 failing, no stats for wave 1) = %s; want paused", s.Status)
	}
}

// TestPlanZeroSoak: after a wave without soak the next wave starts when Plan runs, and
// its own soak counts from then, not from when the earlier wave started.
func TestPlanZeroSoak(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	r := &Rollout{ID: "r", Target: Target{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"},
		Waves: []Wave{{Percent: 10}, {Percent: 100, Soak: time.Hour}}}
	began := now.Add(-10 * time.Minute)
	s := RolloutState{ID: "r", Target: r.Target, Status: StatusActive, Started: began, WaveStarted: began}
	s, _ = PlanStats(r, s, nil, now)
	if s.Wave != 1 || !s.WaveStarted.Equal(now) {
		t.Errorf("PlanStats after a wave without soak = wave %d started %v; want wave 1 started %v", s.Wave, s.WaveStarted, now)
	}
}

// TestAttestationDefaultMaxAge: a policy without max_age holds verdicts for the default
// age, not for none.
func TestAttestationDefaultMaxAge(t *testing.T) {
	if got := (Attestation{}).maxAge(); got != DefaultMaxAttestationAge {
		t.Errorf("Attestation{}.maxAge() = %v; want %v", got, DefaultMaxAttestationAge)
	}
}

// TestWindowEdges: Contains uses the whole time of day, down to the nanosecond, and a
// window whose To equals its From is open around the clock.
func TestWindowEdges(t *testing.T) {
	all := [7]bool{true, true, true, true, true, true, true}
	w := &Window{Name: "w", Location: time.UTC, Days: all, From: 10*time.Hour + 30*time.Minute, To: 10*time.Hour + 31*time.Minute}
	day := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		at   time.Duration
		want bool
	}{
		{10*time.Hour + 30*time.Minute + 30*time.Second, true},
		{10*time.Hour + 30*time.Minute + 500, true},
		{10*time.Hour + 29*time.Minute + 59*time.Second + 999_999_999, false},
		{10*time.Hour + 31*time.Minute, false},
	} {
		if got := w.Contains(day.Add(tc.at)); got != tc.want {
			t.Errorf("[10:30, 10:31).Contains(%v) = %v; want %v", tc.at, got, tc.want)
		}
	}
	round := &Window{Name: "round", Location: time.UTC, Days: all, From: 6 * time.Hour, To: 6 * time.Hour}
	for _, at := range []time.Duration{0, 6 * time.Hour, 12 * time.Hour} {
		if !round.Contains(day.Add(at)) {
			t.Errorf("[06:00, 06:00 next day).Contains(%v) = false; want true", at)
		}
	}
}

// TestWindowNextMinutes: the next opening of a window that starts off the hour is at its
// minute, the same day.
func TestWindowNextMinutes(t *testing.T) {
	all := [7]bool{true, true, true, true, true, true, true}
	w := &Window{Name: "w", Location: time.UTC, Days: all, From: 22*time.Hour + 30*time.Minute, To: 23 * time.Hour}
	noon := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	if got, ok := w.Next(noon); !ok || !got.Equal(noon.Add(10*time.Hour+30*time.Minute)) {
		t.Errorf("[22:30, 23:00).Next(12:00) = %v, %v; want 22:30 the same day", got, ok)
	}
}
