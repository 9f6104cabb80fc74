package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// simFleet is an in-process fleet of fake agents against the store and the policy, the
// way the server drives them: verdict, check-in (Decide), install, report, plan.
type simFleet struct {
	t      *testing.T
	s      *Store
	p      *policy.Policy
	now    time.Time
	slots  map[string]policy.Slot // model slot per device
	floors map[string]string
	bad    map[string]bool // target versions whose probes fail
	events []policy.Event
}

func newSimFleet(t *testing.T, db opener, n int, pol string) *simFleet {
	t.Helper()
	ctx := context.Background()
	s, err := Open(ctx, db(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	p, err := policy.Parse(policy.File{Name: "sim.yaml", Data: []byte(pol)})
	if err != nil {
		t.Fatal(err)
	}
	f := &simFleet{t: t, s: s, p: p, now: t0, slots: map[string]policy.Slot{}, floors: map[string]string{}, bad: map[string]bool{}}
	for i := range n {
		id := fmt.Sprintf("dev-%04d", i)
		if err := s.Enroll(ctx, id, map[string]string{"line": "press"}, t0); err != nil {
			t.Fatal(err)
		}
		f.slots[id] = policy.Slot{Name: "vib", Version: "3.0.0"}
		f.floors[id] = "3.0.0"
	}
	return f
}

// step advances time, plans, and has every device check in once.
func (f *simFleet) step(d time.Duration) (installs, failures int) {
	f.t.Helper()
	ctx := context.Background()
	f.now = f.now.Add(d)
	evs, err := f.s.PlanRollouts(ctx, f.p, f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	f.events = append(f.events, evs...)
	for id, sl := range f.slots {
		if err := f.s.RecordVerdict(ctx, id, policy.VerdictTrusted, "", f.now); err != nil {
			f.t.Fatal(err)
		}
		dec, err := f.s.Decide(ctx, f.p, nil, CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.5.0",
			Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: sl.Name, Version: sl.Version}}, At: f.now})
		if err != nil {
			f.t.Fatal(err)
		}
		sd := dec.Slots[0]
		if sd.Action != policy.ActionInstall {
			continue
		}
		installs++
		rep := wire.Report{DeviceID: id, RolloutID: sd.Rollout, Kind: sd.Kind, Name: sd.Target.Name, Version: sd.Target.Version, At: f.now, Outcome: wire.OutcomeCommitted, Bytes: 1000}
		tv, _ := artifact.ParseVersion(sd.Target.Version)
		fv, _ := artifact.ParseVersion(f.floors[id])
		switch {
		case tv.Compare(fv) < 0:
			rep.Outcome, rep.Cause = wire.OutcomeInstallError, "downgrade refused"
		case f.bad[sd.Target.Version]:
			rep.Outcome, rep.Cause = wire.OutcomeProbeFailed, "accuracy 0.80 < 0.95"
		default:
			f.slots[id] = policy.Slot{Name: sd.Target.Name, Version: sd.Target.Version}
			f.floors[id] = sd.Target.Version
		}
		if rep.Outcome.Failed() {
			failures++
		}
		if err := f.s.AddReport(ctx, rep); err != nil {
			f.t.Fatal(err)
		}
	}
	if _, err := f.s.PlanRollouts(ctx, f.p, f.now); err != nil { // react to the reports
		f.t.Fatal(err)
	}
	return installs, failures
}

func (f *simFleet) count(version string) int {
	n := 0
	for _, sl := range f.slots {
		if sl.Version == version {
			n++
		}
	}
	return n
}

func (f *simFleet) state(id string) policy.RolloutState {
	st, err := f.s.RolloutState(context.Background(), id)
	if err != nil {
		f.t.Fatal(err)
	}
	return st
}

func simSize(t *testing.T) int {
	if testing.Short() {
		return 200
	}
	return 1000
}

const simPolicy = `
rollouts:
  - id: vib-3.1.0
    target: {kind: model, name: vib, version: 3.1.0}
    selector: {labels: {line: press}}
    waves:
      - {percent: 2, soak: 1h, max_failure_ratio: 0.2, min_reports: 3}
      - {percent: 10, soak: 1h}
      - {percent: 50, soak: 1h}
      - {percent: 100}
  - id: vib-3.0.0
    target: {kind: model, name: vib, version: 3.0.0}
`

func testSimulatedFleetGoodRollout(t *testing.T, db opener) {
	n := simSize(t)
	f := newSimFleet(t, db, n, simPolicy)
	f.step(0)
	if got := f.count("3.1.0"); got == 0 || got > n*5/100 {
		t.Fatalf("after wave 0: %d of %d devices on 3.1.0; want about 2%%", got, n)
	}
	for range 4 {
		f.step(time.Hour)
	}
	if got := f.count("3.1.0"); got != n {
		t.Errorf("good rollout reached %d of %d devices; want all", got, n)
	}
	if st := f.state("vib-3.1.0"); st.Status != policy.StatusCompleted {
		t.Errorf("rollout status = %s; want completed", st.Status)
	}
	reps, _ := f.s.Reports(context.Background(), ReportFilter{RolloutID: "vib-3.1.0"})
	k := ComputeRollout("vib-3.1.0", t0, reps)
	if k.SuccessRate != 1 || k.Committed != n {
		t.Errorf("KPI = %+v", k)
	}
	if d, ok := TimeToPercent("vib-3.1.0", t0, n, reps, 100); !ok || d != 3*time.Hour {
		t.Errorf("time to 100%% = %v, %v; want 3h", d, ok)
	}
}

func testSimulatedFleetBadRolloutPausesAndAborts(t *testing.T, db opener) {
	n := simSize(t)
	f := newSimFleet(t, db, n, simPolicy)
	f.bad["3.1.0"] = true
	_, failures := f.step(0)
	if failures == 0 {
		t.Fatal("no failures in the first wave")
	}
	st := f.state("vib-3.1.0")
	if st.Status != policy.StatusPaused || st.Wave != 0 {
		t.Fatalf("after failing first wave: %+v; want paused in wave 0", st)
	}
	for range 3 {
		if installs, _ := f.step(time.Hour); installs != 0 {
			t.Errorf("paused rollout still installs (%d)", installs)
		}
	}
	if got := f.count("3.0.0"); got != n {
		t.Errorf("%d of %d devices on 3.0.0; want the whole fleet untouched", got, n)
	}
	// Only the first wave saw the target.
	reps, _ := f.s.Reports(context.Background(), ReportFilter{RolloutID: "vib-3.1.0"})
	r := f.p.Rollout("vib-3.1.0")
	for _, rep := range reps {
		if w := r.WaveOf(rep.DeviceID); w != 0 {
			t.Fatalf("device %s of wave %d installed", rep.DeviceID, w)
		}
	}
	st, ev, err := policy.Abort(st, "alice", "probe failures", f.now)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.s.SaveRollout(context.Background(), st, []policy.Event{ev}); err != nil {
		t.Fatal(err)
	}
	f.step(time.Minute)
	if got := f.count("3.0.0"); got != n {
		t.Errorf("after abort %d of %d on 3.0.0", got, n)
	}
	evs, _ := f.s.RolloutEvents(context.Background(), "vib-3.1.0", 0)
	var types []policy.EventType
	for _, e := range evs {
		types = append(types, e.Type)
	}
	if want := fmt.Sprint([]policy.EventType{policy.EventStarted, policy.EventWaveStarted, policy.EventAutoPaused, policy.EventAborted}); fmt.Sprint(types) != want {
		t.Errorf("events = %v; want %s", types, want)
	}
}

// TestSimulatedFleetAbortAfterCommit: devices that committed the target before an
// abort are sent their previous version; the agent's floor refuses it, which the
// store records as an install error of the older rollout, and the device is not asked again.
func testSimulatedFleetAbortAfterCommit(t *testing.T, db opener) {
	f := newSimFleet(t, db, 200, simPolicy)
	f.step(0)
	on := f.count("3.1.0")
	st, ev, _ := policy.Abort(f.state("vib-3.1.0"), "alice", "regret", f.now)
	f.s.SaveRollout(context.Background(), st, []policy.Event{ev})
	installs, failures := f.step(time.Minute)
	if installs != on || failures != on {
		t.Errorf("after abort: %d installs, %d failures; want %d reverts refused by the floor", installs, failures, on)
	}
	if installs, _ := f.step(time.Minute); installs != 0 {
		t.Errorf("refused revert retried %d times", installs)
	}
	// The refusals are the way back, not results of the older rollout that names the
	// version they were sent back to: it is not paused by them (it was, found from
	// outside, 2 Dec), nor does its status count them.
	if on < 3 {
		t.Fatalf("only %d devices on 3.1.0 before the abort; want at least min_reports", on)
	}
	if st := f.state("vib-3.0.0"); st.Status == policy.StatusPaused {
		t.Errorf("the older rollout after the refused reverts: %s %q; want not paused", st.Status, st.Reason)
	}
	rs, err := f.s.Status(context.Background(), f.p, "vib-3.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Excused != 0 || rs.Waves[0].Failed != 0 {
		t.Errorf("the older rollout's status counts the refused reverts: excused %d, wave 0 failed %d", rs.Excused, rs.Waves[0].Failed)
	}
}

// TestSimulatedFleetAttestationFailurePauses: devices that installed the target and
// then stop attesting count against the wave.
func testSimulatedFleetAttestationFailurePauses(t *testing.T, db opener) {
	ctx := context.Background()
	f := newSimFleet(t, db, 200, simPolicy)
	f.step(0)
	var onTarget []string
	for id, sl := range f.slots {
		if sl.Version == "3.1.0" {
			onTarget = append(onTarget, id)
		}
	}
	if len(onTarget) < 3 {
		t.Fatalf("only %d devices in the first wave", len(onTarget))
	}
	for _, id := range onTarget {
		if err := f.s.Attest(ctx, f.p, id, policy.VerdictUntrusted, "PCR 16 mismatch", f.now.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.s.PlanRollouts(ctx, f.p, f.now.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	st := f.state("vib-3.1.0")
	if st.Status != policy.StatusPaused {
		t.Errorf("after untrusted verdicts: %+v; want paused", st)
	}
	d, _ := f.s.Device(ctx, onTarget[0])
	if d.Slots[artifact.KindModel].Failed != "" || d.Verdict != policy.VerdictUntrusted {
		t.Errorf("device after untrusted verdict: %+v", d)
	}
	// A trusted verdict adds no report.
	before, _ := f.s.Reports(ctx, ReportFilter{})
	f.s.Attest(ctx, f.p, onTarget[0], policy.VerdictTrusted, "", f.now.Add(3*time.Minute))
	if after, _ := f.s.Reports(ctx, ReportFilter{}); len(after) != len(before) {
		t.Errorf("trusted verdict added %d reports", len(after)-len(before))
	}
}

func testStatus(t *testing.T, db opener) {
	ctx := context.Background()
	f := newSimFleet(t, db, 300, simPolicy)
	if _, err := f.s.Status(ctx, f.p, "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Status(unknown) = %v; want ErrNotFound", err)
	}
	f.step(0)
	st, err := f.s.Status(ctx, f.p, "vib-3.1.0")
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, w := range st.Waves {
		total += w.Devices
	}
	if st.Selected != 300 || total != 300 || len(st.Waves) != 4 {
		t.Errorf("selected %d, wave devices %d; want 300", st.Selected, total)
	}
	w0 := st.Waves[0]
	if w0.Devices == 0 || w0.Reported != w0.Devices || w0.Succeeded != w0.Devices || st.KPI.Committed != w0.Devices {
		t.Errorf("wave 0 = %+v, KPI %+v; want every device of wave 0 committed", w0, st.KPI)
	}
	if want := fmt.Sprintf("waiting for devices (%d of 300 selected devices committed)", w0.Devices); st.Progress != want {
		t.Errorf("progress after wave 0 = %q; want %q", st.Progress, want)
	}
	// A quarantined device gets nothing until released: the rollout does not wait for
	// it (it stayed "waiting for devices" for good before), and says so.
	var held string
	for id := range f.slots {
		if f.p.Rollout("vib-3.1.0").WaveOf(id) > 0 {
			held = id
			break
		}
	}
	if err := f.s.SetQuarantine(ctx, held, true, "stolen"); err != nil {
		t.Fatal(err)
	}
	st, _ = f.s.Status(ctx, f.p, "vib-3.1.0")
	if st.Selected != 299 || st.Quarantined != 1 || !strings.HasSuffix(st.Progress, "; 1 more selected but quarantined, held until released") {
		t.Errorf("with one device quarantined: selected %d, quarantined %d, progress %q", st.Selected, st.Quarantined, st.Progress)
	}
	if err := f.s.SetQuarantine(ctx, held, false, ""); err != nil {
		t.Fatal(err)
	}
	if !st.NextWaveAt.Equal(t0.Add(time.Hour)) || len(st.Events) != 2 || len(st.TimeTo) != 0 {
		t.Errorf("next wave %v, events %d, time to %v", st.NextWaveAt, len(st.Events), st.TimeTo)
	}
	for range 4 {
		f.step(time.Hour)
	}
	st, _ = f.s.Status(ctx, f.p, "vib-3.1.0")
	if half := st.TimeTo["50%"]; st.TimeTo["100%"] != 3*time.Hour || (half != 2*time.Hour && half != 3*time.Hour) || !st.NextWaveAt.IsZero() {
		t.Errorf("after completion: time to %v, next wave %v", st.TimeTo, st.NextWaveAt)
	}
	if st.State.Status != policy.StatusCompleted || st.Progress != "completed (300 of 300 selected devices committed)" {
		t.Errorf("after completion: status %s, progress %q", st.State.Status, st.Progress)
	}
	// A rollout of the version every device runs already is done with them: it waited
	// for their reports for good, and they had none to make (found from outside, 2 Dec).
	again, err := policy.Parse(policy.File{Name: "sim.yaml", Data: []byte(simPolicy + "  - id: vib-again\n    target: {kind: model, name: vib, version: 3.1.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.PlanRollouts(ctx, again, f.now); err != nil {
		t.Fatal(err)
	}
	st, err = f.s.Status(ctx, again, "vib-again")
	if err != nil {
		t.Fatal(err)
	}
	if want := "completed (300 of 300 selected devices committed); 300 of them ran the target already"; st.Progress != want || st.AlreadyRunning != 300 {
		t.Errorf("a rollout of the version the fleet runs: progress %q, already running %d; want %q", st.Progress, st.AlreadyRunning, want)
	}
	// A rollout listed after one that selects the same devices gets none of them (the
	// first listed decides): its status says which rollout decides for them instead
	// of only "waiting for devices" (a hand-written file sorting first shadows the
	// rollouts created through the API; found by an outside operator journey).
	newer, err := policy.Parse(policy.File{Name: "sim.yaml", Data: []byte(simPolicy + "  - id: vib-newer\n    target: {kind: model, name: vib, version: 3.2.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.PlanRollouts(ctx, newer, f.now); err != nil {
		t.Fatal(err)
	}
	st, err = f.s.Status(ctx, newer, "vib-newer")
	if err != nil {
		t.Fatal(err)
	}
	want := "waiting for devices (0 of 300 selected devices committed); 300 of them get the target of rollout vib-3.1.0 instead, listed before this one in the policy (sim.yaml): it takes precedence while it selects them"
	if st.ShadowedBy["vib-3.1.0"] != 300 || st.Progress != want {
		t.Errorf("a rollout listed after one that decides for its devices: shadowed by %v, progress %q; want 300 by vib-3.1.0 and %q", st.ShadowedBy, st.Progress, want)
	}
	if st, _ = f.s.Status(ctx, newer, "vib-3.1.0"); len(st.ShadowedBy) != 0 {
		t.Errorf("the rollout listed first: shadowed by %v; want none", st.ShadowedBy)
	}
}

// Progress says "completed" only when the waves are done and so is every selected
// device; a rollout with no devices or no reports waits for them.
func TestProgress(t *testing.T) {
	started := policy.RolloutState{Status: policy.StatusActive, Started: t0}
	done := started
	done.Status = policy.StatusCompleted
	paused := started
	paused.Status = policy.StatusPaused
	for _, c := range []struct {
		st                           policy.RolloutState
		selected, committed, excused int
		want                         string
	}{
		{policy.RolloutState{}, 3, 0, 0, "pending: not started yet"},
		{done, 0, 0, 0, "waiting for devices: the selector matches no enrolled device"},
		{done, 3, 0, 0, "waiting for devices (0 of 3 selected devices committed)"},
		{started, 3, 1, 1, "waiting for devices (1 of 3 selected devices committed, 1 excused (trial failed))"},
		{done, 3, 2, 1, "completed (2 of 3 selected devices committed, 1 excused (trial failed))"},
		{done, 2, 0, 2, "completed, but no device committed the target: every one that tried failed its trial (0 of 2 selected devices committed, 2 excused (trial failed)); pause or abort it, or it keeps offering the target"},
		{started, 2, 2, 0, "rolling out (2 of 2 selected devices committed; soaking)"},
		{paused, 3, 1, 0, "paused (1 of 3 selected devices committed)"},
	} {
		if got := Progress(c.st, c.selected, c.committed, c.excused); got != c.want {
			t.Errorf("Progress(%s, %d selected, %d committed, %d excused) = %q; want %q", c.st.Status, c.selected, c.committed, c.excused, got, c.want)
		}
	}
}
