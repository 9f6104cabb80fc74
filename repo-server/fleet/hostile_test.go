package fleet

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// hostilePolicy is one rollout of vib 2.0.0 to the devices labelled site=a, one wave
// that pauses on its first failure.
func hostilePolicy(t *testing.T) *policy.Policy {
	t.Helper()
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-2
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {site: a}}
    waves: [{percent: 100, soak: 24h, max_failure_ratio: 0, min_reports: 1}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAdmitCountsOnlyTheRolloutsDevices replays issue 15's attack on the pure step:
// a failure counts toward the rollout only from a device it selected, in a wave it
// reached, offered the target, trusted and not quarantined; every report is stored,
// at the server's time.
func TestAdmitCountsOnlyTheRolloutsDevices(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	p := hostilePolicy(t)
	target := p.Rollouts[0].Target
	started := map[string]policy.RolloutState{"vib-2": {ID: "vib-2", Status: policy.StatusActive, Target: target, Started: t0.Add(-time.Hour), WaveStarted: t0.Add(-time.Hour)}}
	offered := map[policy.Target]bool{target: true}
	future := t0.AddDate(10, 0, 0)
	for _, tc := range []struct {
		name        string
		labels      map[string]string
		quarantined bool
		verdict     policy.Verdict
		states      map[string]policy.RolloutState
		offered     map[policy.Target]bool
		at          time.Time
		want        bool
	}{
		{"selected, in wave, offered, trusted", map[string]string{"site": "a"}, false, policy.VerdictTrusted, started, offered, t0, true},
		{"outside the selector", map[string]string{"site": "b"}, false, policy.VerdictTrusted, started, offered, t0, false},
		{"quarantined", map[string]string{"site": "a"}, true, policy.VerdictTrusted, started, offered, t0, false},
		{"untrusted at receipt", map[string]string{"site": "a"}, false, policy.VerdictUntrusted, started, offered, t0, false},
		{"never offered", map[string]string{"site": "a"}, false, policy.VerdictTrusted, started, nil, t0, false},
		{"rollout not started: its first wave", map[string]string{"site": "a"}, false, policy.VerdictTrusted, nil, offered, t0, true},
		{"time 10 years ahead: counted at the server's time", map[string]string{"site": "a"}, false, policy.VerdictTrusted, started, offered, future, true},
	} {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Labels, d.Verdict, d.Quarantined = "dev-1", tc.labels, policy.VerdictTrusted, tc.quarantined
		d.Slots = map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}
		rep := wire.Report{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, At: tc.at}
		out, err := Admit(Admission{Stored: d, Reports: []wire.Report{rep}, Verdict: tc.verdict, Policy: p, States: tc.states, Offered: tc.offered, Now: t0,
			CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", Slots: d.Slots, At: t0}})
		if err != nil {
			t.Errorf("%s: Admit = %v", tc.name, err)
			continue
		}
		if len(out.Reports) != 1 {
			t.Errorf("%s: Admit stores %d reports; want 1 (stored, counted or not)", tc.name, len(out.Reports))
			continue
		}
		r := out.Reports[0]
		if r.Counted != tc.want {
			t.Errorf("%s: Admit(failed report).Counted = %v; want %v", tc.name, r.Counted, tc.want)
		}
		if !r.At.Equal(t0) || !r.DeviceAt.Equal(tc.at) || r.RolloutID != "vib-2" {
			t.Errorf("%s: report at %v (device %v), rollout %q; want the server's %v (device %v), vib-2", tc.name, r.At, r.DeviceAt, r.RolloutID, t0, tc.at)
		}
	}
}

// TestAdmitCountsOnlyReachedWaves: a device in a wave the rollout has not reached does
// not count, even if it was offered the target before (an earlier policy, say).
func TestAdmitCountsOnlyReachedWaves(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-2
    target: {kind: model, name: vib, version: 2.0.0}
    waves: [{percent: 0.01}, {percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	ro := p.Rollouts[0]
	id := "dev-1"
	if ro.WaveOf(id) != 1 {
		t.Fatalf("WaveOf(%q) = %d; the test needs a device in wave 1", id, ro.WaveOf(id))
	}
	for _, wave := range []int{0, 1} {
		st := policy.RolloutState{ID: ro.ID, Status: policy.StatusActive, Target: ro.Target, Started: t0.Add(-time.Hour), WaveStarted: t0.Add(-time.Hour), Wave: wave}
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict = id, policy.VerdictTrusted
		rep := wire.Report{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, At: t0}
		out, err := Admit(Admission{Stored: d, Reports: []wire.Report{rep}, Verdict: policy.VerdictTrusted, Policy: p,
			States: map[string]policy.RolloutState{ro.ID: st}, Offered: map[policy.Target]bool{ro.Target: true}, Now: t0,
			CheckIn: CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0", At: t0}})
		if err != nil || len(out.Reports) != 1 {
			t.Fatalf("Admit at wave %d = %+v, %v", wave, out, err)
		}
		if got, want := out.Reports[0].Counted, wave == 1; got != want {
			t.Errorf("Admit(wave-1 device's failure, rollout at wave %d).Counted = %v; want %v", wave, got, want)
		}
	}
}

// TestHostileDeviceCannotPauseRollout replays issue 15's attack on the store: an
// out-of-selector device, a quarantined one and a never-offered one report failed for
// the rollout's version, and a selected one reports with a time 10 years ahead; none
// of them keeps the rollout paused, all reports are stored, and a genuine in-wave
// failure still pauses it.
func testHostileDeviceCannotPauseRollout(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	p := hostilePolicy(t)
	ro := p.Rollouts[0]
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	now := t0
	checkIn := func(id string, labels map[string]string, v policy.Verdict, reps ...wire.Report) CheckInResult {
		t.Helper()
		now = now.Add(time.Minute)
		res, err := s.Admit(ctx, Admission{CheckIn: CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0", At: now,
			Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}},
			Labels: labels, Reports: reps, Verdict: v, Policy: p, Quarantine: true, Now: now}, nil)
		if err != nil {
			t.Fatalf("check-in %s: %v", id, err)
		}
		return res
	}
	n := 0
	failed := func(at time.Time) wire.Report {
		n++
		return wire.Report{ID: fmt.Sprint("r", n), Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, Cause: "attack", At: at}
	}
	status := func() policy.Status {
		t.Helper()
		st, err := s.RolloutState(ctx, ro.ID)
		if err != nil {
			t.Fatal(err)
		}
		return st.Status
	}
	if _, err := s.PlanRollouts(ctx, p, now); err != nil {
		t.Fatal(err)
	}
	siteA, siteB := map[string]string{"site": "a"}, map[string]string{"site": "b"}

	// Out of the selector: never offered, never counted.
	checkIn("outsider", siteB, policy.VerdictTrusted)
	checkIn("outsider", siteB, policy.VerdictTrusted, failed(now))
	// Never offered: a selected device reporting on its first check-in.
	checkIn("stranger", siteA, policy.VerdictTrusted, failed(now))
	// Quarantined: offered while trusted, then untrusted and quarantined; its reports,
	// untrusted or (still quarantined) trusted, do not count.
	if res := checkIn("rogue", siteA, policy.VerdictTrusted); res.Decision.Slots[0].Action != policy.ActionInstall {
		t.Fatalf("rogue's first decision = %+v; want install", res.Decision.Slots[0])
	}
	checkIn("rogue", siteA, policy.VerdictUntrusted)
	checkIn("rogue", siteA, policy.VerdictUntrusted, failed(now))
	checkIn("rogue", siteA, policy.VerdictTrusted, failed(now))
	if got := status(); got != policy.StatusActive {
		t.Fatalf("after out-of-selector, never-offered and quarantined failures: status %s; want active", got)
	}
	// The rollout's status, as operators read it (API, dashboard, CLI), agrees with the
	// planner: none of those failures is a wave's, nor an attempt of the rollout. (It
	// counted every report stamped with the rollout: a failing wave on the dashboard
	// while the planner rightly went on.)
	rs, err := s.Status(ctx, p, ro.ID)
	if err != nil {
		t.Fatal(err)
	}
	for i, w := range rs.Waves {
		if w.Failed != 0 {
			t.Errorf("wave %d shows %d failures from devices the planner does not count", i, w.Failed)
		}
	}
	if rs.KPI.Attempts != 0 {
		t.Errorf("rollout KPI counts %d attempts from devices the planner does not count", rs.KPI.Attempts)
	}

	// A selected, offered device's failure with a time 10 years ahead pauses (it is a
	// genuine failure) but at the server's time: after a resume it does not pause again.
	checkIn("clock", siteA, policy.VerdictTrusted)
	checkIn("clock", siteA, policy.VerdictTrusted, failed(now.AddDate(10, 0, 0)))
	if got := status(); got != policy.StatusPaused {
		t.Fatalf("after an in-wave failure: status %s; want paused", got)
	}
	if _, _, err := s.ActOnRollout(ctx, ro, "cli:op", func(st policy.RolloutState) (policy.RolloutState, policy.Event, error) {
		return policy.Resume(st, "cli:op", now.Add(time.Second))
	}, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	checkIn("clock", siteA, policy.VerdictTrusted) // replans nothing new
	if _, err := s.PlanRollouts(ctx, p, now); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != policy.StatusActive {
		t.Fatalf("after resume, the future-dated failure still counts: status %s; want active", got)
	}

	// Every report is stored, at the server's time, counted or not.
	reps, err := s.Reports(ctx, ReportFilter{RolloutID: ro.ID})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 5 {
		t.Errorf("stored %d reports of %s; want 5 (all attack reports stored): %+v", len(reps), ro.ID, reps)
	}
	for _, r := range reps {
		if r.At.After(now) {
			t.Errorf("report of %s stored at %v; want the server's time (at most %v)", r.DeviceID, r.At, now)
		}
	}
	var deviceAt int64
	if err := s.db.QueryRow(`SELECT device_at FROM reports WHERE device_id = 'clock'`).Scan(&deviceAt); err != nil || !fromNS(deviceAt).After(now.AddDate(9, 0, 0)) {
		t.Errorf("clock's device_at = %v, %v; want the device's time, 10 years ahead", fromNS(deviceAt), err)
	}
	var counted int
	if err := s.db.QueryRow(`SELECT count(*) FROM reports WHERE counted = 1`).Scan(&counted); err != nil || counted != 1 {
		t.Errorf("counted reports = %d, %v; want 1 (clock's)", counted, err)
	}

	// A genuine in-wave failure after the resume pauses the rollout again.
	checkIn("clock", siteA, policy.VerdictTrusted, failed(now))
	if got := status(); got != policy.StatusPaused {
		t.Errorf("after a genuine in-wave failure: status %s; want paused", got)
	}
}
