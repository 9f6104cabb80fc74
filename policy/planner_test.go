package policy

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
)

func planRollout() *Rollout {
	return &Rollout{ID: "r", Target: Target{artifact.KindModel, "vib", "3.1.0"}, Waves: []Wave{
		{Percent: 10, Soak: time.Hour, MaxFailureRatio: 0.2, MinReports: 5},
		{Percent: 50, Soak: 2 * time.Hour, Approval: true, MaxFailureRatio: 0.2, MinReports: 5},
		{Percent: 100, MaxFailureRatio: 0.2, MinReports: 5},
	}}
}

// reportsFor makes one report per device of the given wave: failed of them fail.
func reportsFor(r *Rollout, wave, total, failed int, at time.Time) []wire.Report {
	var out []wire.Report
	for i := 0; len(out) < total; i++ {
		id := fmt.Sprintf("dev-%d", i)
		if r.WaveOf(id) != wave {
			continue
		}
		o := wire.OutcomeCommitted
		if len(out) < failed {
			o = wire.OutcomeProbeFailed
		}
		out = append(out, wire.Report{DeviceID: id, RolloutID: r.ID, Kind: r.Target.Kind, Name: r.Target.Name, Version: r.Target.Version, Outcome: o, At: at})
	}
	return out
}

func eventTypes(evs []Event) string {
	var s []string
	for _, e := range evs {
		s = append(s, fmt.Sprintf("%s@%d", e.Type, e.Wave))
	}
	return strings.Join(s, " ")
}

func TestPlan(t *testing.T) {
	r := planRollout()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	started := RolloutState{ID: "r", Status: StatusActive, Started: t0, WaveStarted: t0}
	tests := []struct {
		name       string
		s          RolloutState
		reports    []wire.Report
		now        time.Time
		wantStatus Status
		wantWave   int
		wantEvents string
	}{
		{"zero state starts", RolloutState{}, nil, t0, StatusActive, 0, "started@0 wave_started@0"},
		{"soaking", started, nil, t0.Add(59 * time.Minute), StatusActive, 0, ""},
		{"soaked, next needs approval", started, nil, t0.Add(time.Hour), StatusActive, 0, "awaiting_approval@0"},
		{"approval asked once", func() RolloutState { s := started; s.AwaitingApproval = true; return s }(), nil, t0.Add(2 * time.Hour), StatusActive, 0, ""},
		{"approved advances", func() RolloutState { s := started; s.Approved = []int{1}; return s }(), nil, t0.Add(time.Hour), StatusActive, 1, "wave_started@1"},
		{"failures below min count do not pause", started, reportsFor(r, 0, 4, 4, t0), t0.Add(time.Minute), StatusActive, 0, ""},
		{"ratio at threshold does not pause", started, reportsFor(r, 0, 10, 2, t0), t0.Add(time.Minute), StatusActive, 0, ""},
		{"ratio above threshold pauses", started, reportsFor(r, 0, 10, 3, t0), t0.Add(time.Minute), StatusPaused, 0, "auto_paused@0"},
		{"pause wins over advancing", func() RolloutState { s := started; s.Approved = []int{1}; return s }(), reportsFor(r, 0, 5, 5, t0), t0.Add(3 * time.Hour), StatusPaused, 0, "auto_paused@0"},
		{"reports before count_since ignored", func() RolloutState { s := started; s.CountSince = t0.Add(time.Second); return s }(), reportsFor(r, 0, 10, 10, t0), t0.Add(time.Minute), StatusActive, 0, ""},
		{"reports of another version ignored", started, func() []wire.Report {
			rs := reportsFor(r, 0, 10, 10, t0)
			for i := range rs {
				rs[i].Version = "3.0.0"
			}
			return rs
		}(), t0.Add(time.Minute), StatusActive, 0, ""},
		{"latest report per device counts", started, append(reportsFor(r, 0, 10, 10, t0), reportsFor(r, 0, 10, 0, t0.Add(time.Minute))...), t0.Add(2 * time.Minute), StatusActive, 0, ""},
		{"infrastructure failures (retried by the device) do not pause", started, func() []wire.Report {
			rs := reportsFor(r, 0, 10, 10, t0)
			for i := range rs {
				rs[i].Outcome = wire.OutcomeInfrastructure
			}
			return rs
		}(), t0.Add(time.Minute), StatusActive, 0, ""},
		{"an infrastructure failure does not hide a final one", started, func() []wire.Report {
			rs := reportsFor(r, 0, 10, 10, t0)
			for _, x := range reportsFor(r, 0, 10, 10, t0.Add(time.Minute)) {
				x.Outcome = wire.OutcomeInfrastructure
				rs = append(rs, x)
			}
			return rs
		}(), t0.Add(2 * time.Minute), StatusPaused, 0, "auto_paused@0"},
		{"paused stays paused", func() RolloutState { s := started; s.Status = StatusPaused; return s }(), nil, t0.Add(5 * time.Hour), StatusPaused, 0, ""},
		{"aborted is final", func() RolloutState { s := started; s.Status = StatusAborted; return s }(), reportsFor(r, 0, 10, 10, t0), t0.Add(5 * time.Hour), StatusAborted, 0, ""},
		{"last wave soaked completes", RolloutState{ID: "r", Started: t0, WaveStarted: t0, Wave: 2}, nil, t0, StatusCompleted, 2, "completed@2"},
		{"failure in an earlier wave pauses later", RolloutState{ID: "r", Started: t0, WaveStarted: t0, Wave: 1}, reportsFor(r, 0, 5, 2, t0), t0, StatusPaused, 1, "auto_paused@1"},
		{"completed still pauses on failures", RolloutState{ID: "r", Status: StatusCompleted, Started: t0, WaveStarted: t0, Wave: 2}, reportsFor(r, 2, 10, 5, t0), t0.Add(time.Hour), StatusPaused, 2, "auto_paused@2"},
		{"completed stays completed without", RolloutState{ID: "r", Status: StatusCompleted, Started: t0, WaveStarted: t0, Wave: 2}, reportsFor(r, 2, 10, 2, t0), t0.Add(time.Hour), StatusCompleted, 2, ""},
	}
	for _, tt := range tests {
		s, evs := Plan(r, tt.s, tt.reports, tt.now)
		if s.status() != tt.wantStatus || s.Wave != tt.wantWave || eventTypes(evs) != tt.wantEvents {
			t.Errorf("%s: Plan = status %s wave %d events %q; want %s %d %q", tt.name, s.status(), s.Wave, eventTypes(evs), tt.wantStatus, tt.wantWave, tt.wantEvents)
		}
	}
}

func TestPlanRestartsWhenTargetChanges(t *testing.T) {
	r := planRollout()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s, _ := Plan(r, RolloutState{}, nil, t0)
	s.Wave, s.Status = 2, StatusCompleted
	if s.Target != r.Target {
		t.Fatalf("state target = %v; want %v", s.Target, r.Target)
	}
	// The operator reuses the rollout ID for a new version: it must not go to 100% at once.
	r2 := planRollout()
	r2.Target.Version = "3.2.0"
	later := t0.Add(24 * time.Hour)
	dev := &Device{ID: deviceIn(t, r2, 1), Verdict: VerdictTrusted, VerdictAt: later}
	p := &Policy{Rollouts: []*Rollout{r2}}
	if got := Evaluate(p, dev, map[string]RolloutState{"r": s}, later, nil).Slots[0]; got.Reason != ReasonWaveNotReached {
		t.Errorf("Evaluate with a stale state = %s; want wave_not_reached", got.Reason)
	}
	s2, evs := Plan(r2, s, nil, later)
	if s2.Wave != 0 || s2.status() != StatusActive || s2.Target != r2.Target || !s2.Started.Equal(later) || eventTypes(evs) != "restarted@0 started@0 wave_started@0" {
		t.Errorf("Plan after target change = %+v, %q", s2, eventTypes(evs))
	}
}

// A planner that did not run for longer than a soak (every replica down, the database
// away) starts one wave when it runs again, from then: the wave soaks in full before the
// next. It used to backdate the start to when the wave before had soaked, and start
// every wave whose nominal time had passed at once, the middle ones never soaked.
func TestPlanStartsALateWaveNow(t *testing.T) {
	r := &Rollout{ID: "r", Waves: []Wave{{Percent: 1, Soak: time.Hour}, {Percent: 10, Soak: time.Hour}, {Percent: 100}}}
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s, _ := Plan(r, RolloutState{}, nil, t0)
	// The planner did not run for 2h30m: wave 0's soak and wave 1's nominal one have passed.
	late := t0.Add(150 * time.Minute)
	s, evs := Plan(r, s, nil, late)
	if s.Wave != 1 || !s.WaveStarted.Equal(late) || eventTypes(evs) != "wave_started@1" {
		t.Errorf("Plan after 2h30m = wave %d started %v events %q; want wave 1 started then", s.Wave, s.WaveStarted, eventTypes(evs))
	}
	if s, evs = Plan(r, s, nil, late.Add(59*time.Minute)); s.Wave != 1 || len(evs) != 0 {
		t.Errorf("Plan 59 min into wave 1's soak = wave %d events %q; want wave 1 soaking", s.Wave, eventTypes(evs))
	}
	if s, evs = Plan(r, s, nil, late.Add(time.Hour)); s.Wave != 2 || eventTypes(evs) != "wave_started@2 completed@2" {
		t.Errorf("Plan when wave 1 soaked = wave %d events %q; want wave 2 started and completed", s.Wave, eventTypes(evs))
	}
}

func TestOperatorActions(t *testing.T) {
	r := planRollout()
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	s, _ := Plan(r, RolloutState{}, nil, t0)
	if _, _, err := Resume(s, "alice", t0); !errors.Is(err, ErrBadTransition) {
		t.Errorf("Resume(active) err = %v; want ErrBadTransition", err)
	}
	s, ev, err := Pause(s, "alice", "looks odd", t0.Add(time.Minute))
	if err != nil || s.Status != StatusPaused || ev.Type != EventPaused || ev.Actor != "alice" || ev.Reason != "looks odd" {
		t.Fatalf("Pause = %+v, %+v, %v", s, ev, err)
	}
	if _, _, err := Pause(s, "alice", "", t0); !errors.Is(err, ErrBadTransition) {
		t.Errorf("Pause(paused) err = %v; want ErrBadTransition", err)
	}
	// Resume forgets the earlier failures and soaks the wave again.
	bad := reportsFor(r, 0, 10, 10, t0.Add(time.Minute))
	resumeAt := t0.Add(10 * time.Minute)
	s, _, err = Resume(s, "alice", resumeAt)
	if err != nil || s.Status != StatusActive || !s.CountSince.Equal(resumeAt) || !s.WaveStarted.Equal(resumeAt) {
		t.Fatalf("Resume = %+v, %v", s, err)
	}
	if s2, evs := Plan(r, s, bad, resumeAt.Add(time.Minute)); s2.Status != StatusActive || len(evs) != 0 {
		t.Errorf("Plan after resume = %s %q; want active, old failures ignored", s2.Status, eventTypes(evs))
	}
	if _, _, err := Approve(r, s, 3, "bob", t0); !errors.Is(err, ErrNoSuchWave) {
		t.Errorf("Approve(wave 3) err = %v; want ErrNoSuchWave", err)
	}
	if _, _, err := Approve(r, s, 0, "bob", t0); !errors.Is(err, ErrNoSuchWave) {
		t.Errorf("Approve(wave 0) err = %v; want ErrNoSuchWave", err)
	}
	if _, _, err := Approve(r, s, 2, "bob", t0); !errors.Is(err, ErrNoApprovalNeeded) {
		t.Errorf("Approve(wave 2, which needs none) err = %v; want ErrNoApprovalNeeded", err)
	}
	s, ev, err = Approve(r, s, 1, "bob", t0)
	if err != nil || ev.Wave != 1 || len(s.Approved) != 1 {
		t.Fatalf("Approve = %+v, %v", s, err)
	}
	if _, _, err := Approve(r, s, 1, "bob", t0); !errors.Is(err, ErrNoApprovalNeeded) {
		t.Errorf("Approve(wave 1 again) err = %v; want ErrNoApprovalNeeded (one event per approval)", err)
	}
	started := RolloutState{ID: "r", Started: t0, WaveStarted: t0, Wave: 1}
	if _, _, err := Approve(r, started, 1, "bob", t0); !errors.Is(err, ErrNoApprovalNeeded) {
		t.Errorf("Approve(a started wave) err = %v; want ErrNoApprovalNeeded", err)
	}
	s, ev, err = Abort(s, "carol", "bad accuracy", t0)
	if err != nil || s.Status != StatusAborted || ev.Type != EventAborted {
		t.Fatalf("Abort = %+v, %v", s, err)
	}
	for name, f := range map[string]func() error{
		"abort":   func() error { _, _, err := Abort(s, "c", "", t0); return err },
		"resume":  func() error { _, _, err := Resume(s, "c", t0); return err },
		"pause":   func() error { _, _, err := Pause(s, "c", "", t0); return err },
		"approve": func() error { _, _, err := Approve(r, s, 2, "c", t0); return err },
	} {
		if err := f(); !errors.Is(err, ErrBadTransition) {
			t.Errorf("%s after abort: err = %v; want ErrBadTransition", name, err)
		}
	}
}

// WaveRange agrees with WaveOf, so counting a wave by bucket range (what the fleet
// store does through an index) counts the same devices as WaveStats.
func TestWaveRangeAgreesWithWaveOf(t *testing.T) {
	r := &Rollout{ID: "ro", Waves: []Wave{{Percent: 1}, {Percent: 10}, {Percent: 50}, {Percent: 100}}}
	for i := 0; i < 3000; i++ {
		id := fmt.Sprintf("dev-%d", i)
		b, w := Bucket(r.ID, id), r.WaveOf(id)
		for j := range r.Waves {
			lo, hi := r.WaveRange(j)
			if in := b >= lo && b < hi; in != (j == w) {
				t.Fatalf("device %s: bucket %d, WaveOf = %d, WaveRange(%d) = [%d, %d)", id, b, w, j, lo, hi)
			}
		}
	}
}

// PlanStats with counts of the latest reports plans as Plan does with the reports.
func TestPlanStatsEqualsPlan(t *testing.T) {
	r := &Rollout{ID: "ro", Target: Target{Kind: "model", Name: "m", Version: "2.0.0"},
		Waves: []Wave{{Percent: 10, MinReports: 2, MaxFailureRatio: 0.2, Soak: time.Hour}, {Percent: 100}}}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s, _ := Plan(r, RolloutState{}, nil, t0)
	var reps []wire.Report
	for i := 0; i < 400; i++ {
		out := wire.OutcomeCommitted
		if i%3 == 0 {
			out = wire.OutcomeProbeFailed
		}
		reps = append(reps, wire.Report{DeviceID: fmt.Sprintf("d%d", i%150), RolloutID: "ro", Name: "m", Version: "2.0.0", Outcome: out, At: t0.Add(time.Duration(i) * time.Second)})
	}
	counts := make([]Counts, len(r.Waves))
	for _, st := range WaveStats(r, reps, StatsSince(r, s)) {
		counts[st.Wave] = Counts{Succeeded: st.Succeeded, Failed: st.Failed}
	}
	for _, now := range []time.Time{t0.Add(time.Minute), t0.Add(2 * time.Hour)} {
		a, ae := Plan(r, s, reps, now)
		b, be := PlanStats(r, s, StatsOf(r, counts), now)
		if fmt.Sprint(a, ae) != fmt.Sprint(b, be) {
			t.Fatalf("PlanStats = %v %v; want Plan's %v %v", b, be, a, ae)
		}
	}
}

// TestSmallWaveIsJudgedOnItsDevices: a wave that, once soaked, offered its target to
// fewer devices than its MinReports is judged once each of them reported (a one-device
// canary failing pauses its rollout; before, it never could, and the next wave started
// after the soak). Before its soak ends, or when it offered more, MinReports holds (the
// first device of a large wave to fail must not pause it alone), and an unknown count
// (0) keeps MinReports.
func TestSmallWaveIsJudgedOnItsDevices(t *testing.T) {
	r := planRollout() // MinReports 5, MaxFailureRatio 0.2
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	started := RolloutState{ID: "r", Status: StatusActive, Started: t0, WaveStarted: t0}
	soaked, soaking := t0.Add(2*time.Hour), t0.Add(time.Minute) // wave 0 soaks 1 h
	for _, tc := range []struct {
		offered, reported, failed int
		at                        time.Time
		want                      Status
	}{
		{1, 1, 1, soaked, StatusPaused},
		{1, 1, 1, soaking, StatusActive}, // so far one of a wave that may have hundreds
		{2, 1, 1, soaked, StatusActive},  // the other device has not reported yet
		{2, 2, 1, soaked, StatusPaused},
		{3, 3, 0, soaked, StatusActive},
		{100, 1, 1, soaked, StatusActive},
		{0, 1, 1, soaked, StatusActive},
		{0, 5, 2, soaking, StatusPaused},
	} {
		stats := StatsOf(r, []Counts{{Succeeded: tc.reported - tc.failed, Failed: tc.failed, Offered: tc.offered}})
		s, evs := PlanStats(r, started, stats, tc.at)
		if s.status() != tc.want {
			t.Errorf("offered %d, %d of %d reports failed, at +%v: %s %q; want %s", tc.offered, tc.failed, tc.reported, tc.at.Sub(t0), s.status(), eventTypes(evs), tc.want)
		}
	}
	// A completed one-wave rollout (no soak: completed as it started) pauses on its
	// devices' failures (min_reports of them: without a soak its devices were not given
	// the time to check in), and an operator may pause it too.
	one := &Rollout{ID: "one", Target: r.Target, Waves: []Wave{{Percent: 100, MaxFailureRatio: 0, MinReports: 3}}}
	s, evs := PlanStats(one, RolloutState{}, nil, t0)
	if s.Status != StatusCompleted {
		t.Fatalf("one wave without soak: %s %q; want completed at once", s.Status, eventTypes(evs))
	}
	if p, _, err := Pause(s, "rita", "looks wrong", t0); err != nil || p.Status != StatusPaused {
		t.Fatalf("Pause(completed) = %s, %v; want paused", p.Status, err)
	}
	if s2, _ := PlanStats(one, s, StatsOf(one, []Counts{{Failed: 1, Offered: 1}}), t0.Add(time.Minute)); s2.Status != StatusCompleted {
		t.Fatalf("completed, no soak, one device of one failed: %s; want completed (min_reports holds)", s2.Status)
	}
	s, evs = PlanStats(one, s, StatsOf(one, []Counts{{Failed: 3, Offered: 40}}), t0.Add(time.Minute))
	if s.Status != StatusPaused || eventTypes(evs) != "auto_paused@0" {
		t.Fatalf("completed, 3 devices failed: %s %q; want auto_paused", s.Status, eventTypes(evs))
	}
}

// TestStartedWavesAreJudgedTogether: waves each of too few devices to be judged alone
// are judged together, by the current wave's MinReports and MaxFailureRatio: four
// devices in three waves without soaks (all started at once, the rollout completed)
// that all failed pause it. Before, no wave reached its MinReports and the rollout
// completed with every device failed (found from outside, 2 Dec). Fewer reports than
// MinReports together, or few enough failures, do not.
func TestStartedWavesAreJudgedTogether(t *testing.T) {
	r := &Rollout{ID: "vib", Target: Target{Kind: "model", Name: "vibration", Version: "2.0.0"}, Waves: []Wave{
		{Percent: 25, MaxFailureRatio: 0.1, MinReports: 3},
		{Percent: 50, MaxFailureRatio: 0.1, MinReports: 3},
		{Percent: 100, MaxFailureRatio: 0.1, MinReports: 3},
	}}
	t0 := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	s, evs := PlanStats(r, RolloutState{}, nil, t0)
	if s.Status != StatusCompleted || s.Wave != 2 {
		t.Fatalf("three waves without soak: %s at wave %d %q; want completed at once", s.Status, s.Wave, eventTypes(evs))
	}
	for _, tc := range []struct {
		counts []Counts
		want   Status
	}{
		{[]Counts{{Failed: 1, Offered: 1}, {Failed: 2, Offered: 2}, {Failed: 1, Offered: 1}}, StatusPaused},
		{[]Counts{{Failed: 1, Offered: 1}, {Failed: 1, Offered: 1}, {}}, StatusCompleted},                                           // 2 reports: under MinReports
		{[]Counts{{Succeeded: 1, Offered: 1}, {Succeeded: 9, Failed: 1, Offered: 10}, {Succeeded: 4, Offered: 4}}, StatusCompleted}, // 1 of 15
		{[]Counts{{Succeeded: 1, Offered: 1}, {Succeeded: 1, Failed: 1, Offered: 2}, {Succeeded: 1, Offered: 1}}, StatusPaused},     // 1 of 4, no wave of 3
	} {
		got, evs := PlanStats(r, s, StatsOf(r, tc.counts), t0.Add(time.Minute))
		if got.Status != tc.want {
			t.Errorf("%+v: %s %q; want %s", tc.counts, got.Status, eventTypes(evs), tc.want)
		}
		if tc.want == StatusPaused && (!strings.Contains(got.Reason, "waves 0, 1, 2 together") || eventTypes(evs) != "auto_paused@2") {
			t.Errorf("%+v: reason %q, events %q; want the waves judged together", tc.counts, got.Reason, eventTypes(evs))
		}
	}
	// An active rollout in its second wave too: the first wave's two failures and the
	// second's one.
	soaked := &Rollout{ID: "vib", Target: r.Target, Waves: []Wave{
		{Percent: 10, Soak: time.Hour, MaxFailureRatio: 0.1, MinReports: 3},
		{Percent: 100, Soak: time.Hour, MaxFailureRatio: 0.1, MinReports: 3},
	}}
	s = RolloutState{ID: "vib", Status: StatusActive, Started: t0, Wave: 1, WaveStarted: t0.Add(time.Hour), Target: r.Target}
	got, _ := PlanStats(soaked, s, StatsOf(soaked, []Counts{{Failed: 2, Offered: 5}, {Failed: 1, Offered: 9}}), t0.Add(90*time.Minute))
	if got.Status != StatusPaused {
		t.Errorf("waves 0 and 1, 3 of 3 reports failed: %s; want paused", got.Status)
	}
	// A lenient canary judged alone, then a stricter wave: the canary's failures, which
	// its own threshold accepted, do not pause the rollout once the stricter wave starts
	// (they did when the waves were pooled under the current wave's threshold: found in
	// review). Waves judged together take the most lenient of their thresholds.
	mixed := &Rollout{ID: "vib", Target: r.Target, Waves: []Wave{
		{Percent: 10, Soak: time.Hour, MaxFailureRatio: 0.5, MinReports: 10},
		{Percent: 100, Soak: time.Hour, MaxFailureRatio: 0.05, MinReports: 10},
	}}
	if got, evs := PlanStats(mixed, s, StatsOf(mixed, []Counts{{Succeeded: 18, Failed: 2, Offered: 20}, {}}), t0.Add(90*time.Minute)); got.Status != StatusActive {
		t.Errorf("lenient canary 2 of 20 failed, stricter wave started: %s %q %q; want active", got.Status, got.Reason, eventTypes(evs))
	}
	small := &Rollout{ID: "vib", Target: r.Target, Waves: []Wave{
		{Percent: 10, Soak: time.Hour, MaxFailureRatio: 0.5, MinReports: 3},
		{Percent: 100, Soak: time.Hour, MaxFailureRatio: 0.05, MinReports: 3},
	}}
	if got, _ := PlanStats(small, s, StatsOf(small, []Counts{{Succeeded: 1, Failed: 1, Offered: 2}, {Succeeded: 1, Offered: 9}}), t0.Add(90*time.Minute)); got.Status != StatusActive {
		t.Errorf("1 of 3 failed together, the lenient threshold 50%%: %s %q; want active", got.Status, got.Reason)
	}
	if got, _ := PlanStats(small, s, StatsOf(small, []Counts{{Succeeded: 0, Failed: 2, Offered: 2}, {Succeeded: 1, Offered: 9}}), t0.Add(90*time.Minute)); got.Status != StatusPaused {
		t.Errorf("2 of 3 failed together, over the lenient threshold 50%%: %s; want paused", got.Status)
	}
}
