package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

type director struct {
	want    map[artifact.Kind]string
	gates   *artifact.Gates // the rollout's gates in every decision
	reason  string          // every decision's reason
	offline bool
	seen    []map[artifact.Kind]SlotStatus
	// standing is what Standing says (the server's view of an untrusted device).
	standing string
	// root is the root version the server announces (0: none).
	root int64
}

func (d *director) Standing() string { return d.standing }

func (d *director) AnnouncedRoot() int64 { return d.root }

func (d *director) CheckIn(_ context.Context, st map[artifact.Kind]SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	d.seen = append(d.seen, st)
	if d.offline {
		return nil, errors.New("no route to host")
	}
	out := map[artifact.Kind]wire.SlotDecision{}
	for k, p := range d.want {
		out[k] = wire.SlotDecision{Kind: k, Action: wire.ActionInstall, Reason: d.reason, Target: p, Rollout: "r-" + string(k), Gates: d.gates}
	}
	return out, nil
}

// judge passes every version but those listed.
type judge map[string]string

// hookedJudge records the outcomes it is told about.
type hookedJudge struct {
	judge
	events []string
}

func (h *hookedJudge) Committed(_ context.Context, _ artifact.Kind, t rollback.Target, _ artifact.Meta) error {
	h.events = append(h.events, "committed "+t.Version)
	return nil
}

func (h *hookedJudge) RolledBack(_ context.Context, _ artifact.Kind, t rollback.Target, _ artifact.Meta) error {
	h.events = append(h.events, "rolled back "+t.Version)
	return nil
}

func (j judge) Judge(_ context.Context, t Trial) Verdict {
	if reason, bad := j[t.Target.Version]; bad {
		return Verdict{Reason: reason}
	}
	return Verdict{Pass: true}
}

// deviceState is a device's TUF client of r, slots and outbox in a temporary directory,
// closed when the test ends.
func deviceState(t *testing.T, r *tuftest.Repo) (*TUF, *rollback.Manager, *Outbox) {
	t.Helper()
	return deviceStateWith(t, r, nil)
}

// deviceStateWith is deviceState with floors as the slots' anti-rollback store (nil:
// the sqlite mirror alone).
func deviceStateWith(t *testing.T, r *tuftest.Repo, floors rollback.FloorStore) (*TUF, *rollback.Manager, *Outbox) {
	t.Helper()
	ctx := context.Background()
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	c := newClient(t, r, filepath.Join(state, "tuf"))
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher(), Floors: floors})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	o, err := OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return c, m, o
}

func TestAgentRounds(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	p0, _ := r.AddModel("iris", "0.5.0", 0)
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{offline: true}
	srv := &server{seen: map[string]int{}}
	hj := &hookedJudge{judge: judge{"2.0.0": "accuracy 0.91 < 0.95"}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: hj,
		Outbox: o, Sender: srv, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil {
			return ""
		}
		return s.Current.Version
	}
	for _, round := range []struct {
		name    string
		want    string
		offline bool
		current string
		reports int // unsent reports after the round
	}{
		{"offline", p1, true, "", 0},
		{"install 1.0.0 while the server cannot take reports", p1, false, "1.0.0", 1},
		{"2.0.0 fails its probes", p2, false, "1.0.0", 2},
		{"2.0.0 is not retried", p2, false, "1.0.0", 2},
		{"an older signed version is refused", p0, false, "1.0.0", 3},
	} {
		d.want, d.offline = map[artifact.Kind]string{artifact.KindModel: round.want}, round.offline
		a.Step(ctx)
		if got := current(); got != round.current {
			t.Errorf("%s: committed %q; want %q", round.name, got, round.current)
		}
		if n, _ := o.Len(ctx); n != round.reports {
			t.Errorf("%s: %d reports waiting; want %d", round.name, n, round.reports)
		}
		now = now.Add(2 * time.Hour)
	}
	msgs, _ := o.Due(ctx, now, 10)
	var outcomes []string
	for _, msg := range msgs {
		var rep wire.Report
		json.Unmarshal(msg.Body, &rep)
		outcomes = append(outcomes, rep.Version+" "+string(rep.Outcome))
		if rep.Version == "0.5.0" && !strings.Contains(rep.Cause, "refusing") {
			t.Errorf("downgrade report cause = %q", rep.Cause)
		}
	}
	if got, want := strings.Join(outcomes, ", "), "1.0.0 committed, 2.0.0 probe_failed, 0.5.0 install_error"; got != want {
		t.Errorf("reports = %s; want %s", got, want)
	}
	if got, want := strings.Join(hj.events, ", "), "committed 1.0.0, rolled back 2.0.0"; got != want {
		t.Errorf("judge told %q; want %q", got, want)
	}
	srv.up = true
	a.Step(ctx)
	if n, _ := o.Len(ctx); n != 0 {
		t.Errorf("%d reports left after the server came back", n)
	}
	if at, res, err := o.LastCheckIn(ctx); err != nil || res != "ok" || !at.Equal(now) {
		t.Errorf("LastCheckIn = %v, %q, %v; want %v, ok", at, res, err, now)
	}
	// Answered, but the server does not trust the device: the result says so ('status'
	// said "ok" for a quarantined device).
	d.standing = "quarantined by the server, untrusted: artifact_unexpected"
	a.Step(ctx)
	if _, res, _ := o.LastCheckIn(ctx); res != "answered, but quarantined by the server, untrusted: artifact_unexpected" {
		t.Errorf("LastCheckIn result of a quarantined device = %q", res)
	}
	d.standing = ""
	if st := d.seen[len(d.seen)-1][artifact.KindModel]; st.Version != "1.0.0" || st.Phase != rollback.RolledBack {
		t.Errorf("last check-in status = %+v; want 1.0.0 after a rollback", st)
	}
}

// A target TUF cannot describe (its role's metadata did not verify, or it is not
// listed) is reported by the name and version in its path: the server refuses a report
// without them, and it would hold back every report queued with it. A target not listed
// is not burnt either: the metadata may be behind the server that asked for it (a
// mirror not refreshed yet, or someone on the path serving the older files). It is
// reported as infrastructure and tried again after the backoff, and installs once
// listed; before, it stayed refused for good and counted as a failure of its rollout
// (found by an outside audit, 1 Dec).
func TestUnresolvedTargetIsReportedByPath(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.AddModel("iris", "1.0.0", 0)
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: "models/iris/3.0.0.onnx"}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{}, Outbox: o, Interval: time.Minute,
		Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Step(ctx); err == nil || !errors.Is(err, ErrNotListed) {
		t.Fatalf("Step installing an unlisted target = %v; want ErrNotListed", err)
	}
	msgs, err := o.Due(ctx, now.Add(time.Hour), 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("outbox = %d reports, %v; want 1", len(msgs), err)
	}
	var rep wire.Report
	if err := json.Unmarshal(msgs[0].Body, &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Name != "iris" || rep.Version != "3.0.0" || rep.Outcome != wire.OutcomeInfrastructure || !strings.Contains(rep.Cause, "models/iris/3.0.0.onnx") {
		t.Errorf("report = %+v; want iris 3.0.0 infrastructure naming the target", rep)
	}
	if refused, err := o.Refused(ctx); err != nil || len(refused) != 0 {
		t.Errorf("refused targets = %v, %v; want none", refused, err)
	}
	// Once the repository lists it, the next attempt after the backoff installs it.
	r.AddModel("iris", "3.0.0", 0)
	now = now.Add(2 * time.Minute)
	if err := a.Step(ctx); err != nil {
		t.Fatalf("Step once the target is listed = %v", err)
	}
	if s, err := m.State(ctx, artifact.KindModel); err != nil || s.Current == nil || s.Current.Version != "3.0.0" {
		t.Fatalf("slot after the target was listed = %+v, %v; want 3.0.0 committed", s, err)
	}
}

func TestAgentRunJitter(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	c := newClient(t, r, filepath.Join(state, "tuf"))
	m, _ := rollback.Open(ctx, rollback.Config{Dir: state})
	defer m.Close()
	var waits []time.Duration
	rnd := []float64{0, 0.5, 0.999}
	a, _ := NewAgent(AgentConfig{TUF: c, Slots: m, Director: &director{}, Interval: time.Minute, Jitter: 0.2,
		Rand: func() float64 { v := rnd[len(waits)%3]; return v },
		Sleep: func(_ context.Context, d time.Duration) error {
			waits = append(waits, d)
			if len(waits) == 3 {
				return context.Canceled
			}
			return nil
		}})
	if err := a.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	for i, w := range waits {
		if w < 48*time.Second || w > 72*time.Second {
			t.Errorf("wait %d = %v; want within 1m ± 20%%", i, w)
		}
	}
	if waits[0] == waits[1] {
		t.Errorf("waits not jittered: %v", waits)
	}
}

// TestCommitReportSurvivesACrash: an agent killed after saving a commit but before
// queuing its report reports it at its next start, exactly once; an agent that did
// report it does not report it again.
func TestCommitReportSurvivesACrash(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	c, m, o := deviceState(t, r)
	// The commit happens without the agent (as if it died right after it).
	tf, err := c.Target(ctx, p1)
	if err != nil {
		t.Fatal(err)
	}
	tgt, _, err := TargetOf(artifact.KindModel, tf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.InstallFrom(ctx, artifact.KindModel, tgt, c.SlotFetcher()); err != nil {
		t.Fatal(err)
	}
	if _, err := m.BeginTrial(ctx, artifact.KindModel, time.Minute); err != nil {
		t.Fatal(err)
	}
	if s, err := m.Confirm(ctx, artifact.KindModel, true, ""); err != nil || s.Phase != rollback.Committed {
		t.Fatalf("commit = %v, %v", s.Phase, err)
	}
	newAgent := func() *Agent {
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{offline: true}, Outbox: o})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	newAgent().Step(ctx)
	msgs, _ := o.Due(ctx, time.Now().Add(time.Hour), 10)
	if len(msgs) != 1 {
		t.Fatalf("reports after the restart = %d; want the lost commit report", len(msgs))
	}
	var rep wire.Report
	json.Unmarshal(msgs[0].Body, &rep)
	if rep.Version != "1.0.0" || rep.Outcome != "committed" || rep.Name != "iris" {
		t.Fatalf("recovered report = %+v", rep)
	}
	// Acknowledged, then another restart: not reported again.
	if err := o.Ack(ctx, []string{msgs[0].ID}); err != nil {
		t.Fatal(err)
	}
	newAgent().Step(ctx)
	if n, _ := o.Len(ctx); n != 0 {
		t.Fatalf("%d reports after a second restart; want the commit reported once", n)
	}
}

// gateJudge measures the same figures for every version and passes it only if they
// meet the trial's gates.
type gateJudge struct{ measured wire.Probe }

func (j gateJudge) Judge(_ context.Context, t Trial) Verdict {
	v := Verdict{Pass: true, Probe: j.measured}
	if g := t.Gates; g != nil && (j.measured.Accuracy < g.MinAccuracy || g.MaxP99Ms != 0 && j.measured.P99Ms > g.MaxP99Ms) {
		v.Pass, v.Reason = false, fmt.Sprintf("gates %+v not met", *g)
	}
	return v
}

// TestDecisionGates: the agent judges a trial against the stricter of the signed
// target's gates and the rollout's, and reports the probe's figures and the rollout.
func TestDecisionGates(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	signed := &artifact.Gates{MinAccuracy: 0.9, MaxP99Ms: 5}
	add := func(version string, g *artifact.Gates) string {
		p := artifact.TargetPath(artifact.KindModel, "iris", version, ".onnx")
		r.AddTarget(p, []byte("model "+version), artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: version, Format: "onnx", Gates: g})
		r.Publish()
		return p
	}
	c, m, o := deviceState(t, r)
	measured := wire.Probe{Accuracy: 0.95, P99Ms: 2.5, PeakRSSMB: 41}
	d := &director{}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: gateJudge{measured}, Outbox: o})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		signed  *artifact.Gates
		rollout *artifact.Gates
		version string
		want    wire.Outcome
	}{
		{"a rollout stricter than its target fails a trial the target's gates pass", signed, &artifact.Gates{MinAccuracy: 0.99}, "1.0.0", wire.OutcomeProbeFailed},
		{"a rollout cannot loosen the signed gates", &artifact.Gates{MinAccuracy: 0.97}, &artifact.Gates{MinAccuracy: 0.5}, "1.0.1", wire.OutcomeProbeFailed},
		{"gates only from the rollout", nil, &artifact.Gates{MaxP99Ms: 1}, "1.0.2", wire.OutcomeProbeFailed},
		{"the target's own gates pass", signed, nil, "1.1.0", wire.OutcomeCommitted},
		{"a rollout within what was measured passes", signed, &artifact.Gates{MinAccuracy: 0.94, MaxP99Ms: 3}, "1.2.0", wire.OutcomeCommitted},
	} {
		d.want, d.gates = map[artifact.Kind]string{artifact.KindModel: add(tt.version, tt.signed)}, tt.rollout
		before, _ := o.Len(ctx)
		a.Step(ctx)
		msgs, _ := o.Due(ctx, time.Now().Add(24*time.Hour), 100)
		if len(msgs) != before+1 {
			t.Fatalf("%s: %d reports; want %d", tt.name, len(msgs), before+1)
		}
		var rep wire.Report
		for _, msg := range msgs {
			var r wire.Report
			json.Unmarshal(msg.Body, &r)
			if r.Version == tt.version {
				rep = r
			}
		}
		if rep.Outcome != tt.want || rep.Probe != measured || rep.RolloutID != "r-model" {
			t.Errorf("%s: report %s %s probe %+v rollout %q; want %s with %+v from r-model", tt.name, rep.Version, rep.Outcome, rep.Probe, rep.RolloutID, tt.want, measured)
		}
	}
}

// TestRefreshEveryRound: a device with nothing to install refreshes its metadata at
// every round when asked to, so it notices expired metadata and reports expired_metadata
// as its last error; without RefreshEveryRound it only refreshes before installs.
func TestRefreshEveryRound(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	now := time.Now()
	for _, every := range []bool{false, true} {
		state := t.TempDir()
		PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
		c, err := NewTUF(TUFConfig{MetadataDir: filepath.Join(state, "tuf"), MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(),
			Downloader: testDownloader(nil), Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{},
			RefreshEveryRound: every, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		now = time.Now()
		before := r.Hits("/metadata/timestamp.json")
		a.Step(ctx)
		refreshed := r.Hits("/metadata/timestamp.json") > before
		if refreshed != every {
			t.Errorf("RefreshEveryRound=%v: a round with nothing to install refreshed = %v; want %v", every, refreshed, every)
		}
		if e := a.LastError(); e != nil {
			t.Errorf("RefreshEveryRound=%v: LastError() = %+v after fresh metadata; want nil", every, e)
		}
		now = now.Add(2 * 365 * 24 * time.Hour) // past every expiry
		a.Step(ctx)
		e := a.LastError()
		switch {
		case every && (e == nil || e.Kind != wire.ErrorExpiredMetadata):
			t.Errorf("RefreshEveryRound=true: LastError() = %+v with expired metadata; want kind %q", e, wire.ErrorExpiredMetadata)
		case !every && e != nil:
			t.Errorf("RefreshEveryRound=false: LastError() = %+v with nothing to install; want nil", e)
		}
	}
}

// fetchFails fails every fetch with an error that is not permanent: the transaction
// stays downloading, as after a server outage longer than the download's retries.
type fetchFails struct{}

func (fetchFails) Fetch(context.Context, rollback.Target, string) error {
	return errors.New("503 Service Unavailable (the download's retries used up)")
}

// TestUnfinishedInstallIsSuperseded: a transaction an earlier attempt left unfinished
// before its trial (a download interrupted past its retries, or a slot staged when the
// agent crashed) for a version no longer wanted (its rollout aborted, a newer version
// published) gives way to the version the server now asks for. It used to refuse every
// other install with "another install is in progress" until it was asked for again.
// The running version is not touched; a trial is never superseded.
func TestUnfinishedInstallIsSuperseded(t *testing.T) {
	for _, tc := range []struct {
		name  string
		leave func(ctx context.Context, t *testing.T, m *rollback.Manager, c *TUF, x rollback.Target) rollback.Phase
	}{
		{"downloading", func(ctx context.Context, t *testing.T, m *rollback.Manager, _ *TUF, x rollback.Target) rollback.Phase {
			s, err := m.InstallFrom(ctx, artifact.KindModel, x, fetchFails{})
			if err == nil {
				t.Fatal("InstallFrom with a failing fetch succeeded")
			}
			return s.Phase
		}},
		{"staged", func(ctx context.Context, t *testing.T, m *rollback.Manager, c *TUF, x rollback.Target) rollback.Phase {
			s, err := m.InstallFrom(ctx, artifact.KindModel, x, c.SlotFetcher())
			if err != nil {
				t.Fatal(err)
			}
			return s.Phase
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r := tuftest.New(t)
			p1, _ := r.AddModel("iris", "1.0.0", 0)
			p2, _ := r.AddModel("iris", "2.0.0", 0)
			p3, _ := r.AddModel("iris", "3.0.0", 0)
			c, m, o := deviceState(t, r)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			d := &director{want: map[artifact.Kind]string{artifact.KindModel: p1}}
			a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
				Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			if err := a.Step(ctx); err != nil {
				t.Fatal(err)
			}
			x, _, err := c.Resolve(ctx, artifact.KindModel, p2)
			if err != nil {
				t.Fatal(err)
			}
			if ph := tc.leave(ctx, t, m, c, x); ph != rollback.Phase(tc.name) {
				t.Fatalf("left %s; want %s", ph, tc.name)
			}
			d.want[artifact.KindModel] = p3 // 2.0.0's rollout aborted; 3.0.0 published
			if err := a.Step(ctx); err != nil {
				t.Fatalf("Step for 3.0.0 with 2.0.0 left %s = %v", tc.name, err)
			}
			s, _ := m.State(ctx, artifact.KindModel)
			if s.Phase != rollback.Committed || s.Current == nil || s.Current.Version != "3.0.0" {
				t.Fatalf("after the step: %s, current %+v; want 3.0.0 committed", s.Phase, s.Current)
			}
			if err := m.CheckInvariant(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// refusingFloors is an anti-rollback store whose next refuse raises fail (a TPM that
// refuses an NV write, rate-limited or out of space).
type refusingFloors struct {
	floors map[artifact.Kind]uint64
	refuse int
}

func (f *refusingFloors) Floor(_ context.Context, k artifact.Kind) (uint64, error) {
	return f.floors[k], nil
}

func (f *refusingFloors) Raise(_ context.Context, k artifact.Kind, floor uint64) error {
	if f.refuse > 0 {
		f.refuse--
		return errors.New("TPM_RC_NV_RATE: NV writes are rate-limited")
	}
	f.floors[k] = max(f.floors[k], floor)
	return nil
}

// TestCommitStandsWhenAStepAfterItFails: when a step after the commit fails (here the
// TPM refuses the floor's raise), the commit persisted before it stands: the version
// is promoted (the Outcome hook) and reported committed in the same round, and the
// slot manager raises the floor at its next tick. Before, the round returned the error
// and did neither: the device reported the new version while serving the old one, and
// nothing raised the floor until a restart.
func TestCommitStandsWhenAStepAfterItFails(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	floors := &refusingFloors{floors: map[artifact.Kind]uint64{}, refuse: 1}
	c, m, o := deviceStateWith(t, r, floors)
	j := &hookedJudge{judge: judge{}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Judge: j, Outbox: o,
		Director: &director{want: map[artifact.Kind]string{artifact.KindModel: p1}}})
	if err != nil {
		t.Fatal(err)
	}
	a.Step(ctx) // the raise is refused once
	s, _ := m.State(ctx, artifact.KindModel)
	if s.Phase != rollback.Committed || s.Current == nil || s.Current.Version != "1.0.0" {
		t.Fatalf("after the round: %s, current %+v; want 1.0.0 committed", s.Phase, s.Current)
	}
	if !slices.Contains(j.events, "committed 1.0.0") {
		t.Errorf("outcome hooks = %v; want 1.0.0 promoted in the round that committed it", j.events)
	}
	msgs, _ := o.Due(ctx, time.Now().Add(time.Hour), 10)
	var outcomes []string
	for _, msg := range msgs {
		var rep wire.Report
		json.Unmarshal(msg.Body, &rep)
		outcomes = append(outcomes, rep.Version+" "+string(rep.Outcome))
	}
	if !slices.Contains(outcomes, "1.0.0 committed") {
		t.Errorf("reports = %v; want 1.0.0 committed", outcomes)
	}
	want := s.Current.Floor
	if want == 0 {
		t.Fatal("1.0.0's floor is 0: nothing to raise, the test shows nothing")
	}
	if f := floors.floors[artifact.KindModel]; f >= want {
		t.Fatalf("TPM floor %d already at the version's %d: the raise was not refused", f, want)
	}
	if err := m.Tick(ctx); err != nil {
		t.Fatalf("Tick = %v", err)
	}
	if f := floors.floors[artifact.KindModel]; f != want {
		t.Errorf("TPM floor after the next tick = %d; want %d", f, want)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCommitReportAfterStateLoss: a device whose slot state is lost (re-imaged, or
// state.db wiped) counts its transitions from 0 again, so its next commit is again
// the 5th transition. Its report must still be queued and sent: the outbox (and the
// server, which remembers report IDs per device for good) used to take
// "commit-model-5" for the report of the earlier commit, already delivered, and drop it.
func TestCommitReportAfterStateLoss(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	c, m, o := deviceState(t, r)
	commit := func(m *rollback.Manager, p string) {
		t.Helper()
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Judge: judge{}, Outbox: o,
			Director: &director{want: map[artifact.Kind]string{artifact.KindModel: p}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Step(ctx); err != nil {
			t.Fatal(err)
		}
		if s, _ := m.State(ctx, artifact.KindModel); s.Phase != rollback.Committed {
			t.Fatalf("%s: %s; want committed", p, s.Phase)
		}
	}
	delivered := func() []string {
		msgs, _ := o.Due(ctx, time.Now().Add(time.Hour), 10)
		var out []string
		var ids []string
		for _, msg := range msgs {
			var rep wire.Report
			json.Unmarshal(msg.Body, &rep)
			if rep.Outcome == wire.OutcomeCommitted {
				out = append(out, rep.Version)
			}
			ids = append(ids, msg.ID)
		}
		o.Ack(ctx, ids) // the server took them
		return out
	}
	commit(m, p1)
	if got := delivered(); !slices.Equal(got, []string{"1.0.0"}) {
		t.Fatalf("commit reports = %v; want 1.0.0", got)
	}
	// The state is lost; the outbox is not. A fresh slot state, same device.
	fresh, err := rollback.Open(ctx, rollback.Config{Dir: t.TempDir(), Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fresh.Close() })
	commit(fresh, p2)
	if s, _ := fresh.State(ctx, artifact.KindModel); s.Seq != 5 {
		t.Logf("the fresh state's commit is transition %d (the first commit of a state is usually the 5th)", s.Seq)
	}
	if got := delivered(); !slices.Equal(got, []string{"2.0.0"}) {
		t.Fatalf("commit reports after the state was lost = %v; want 2.0.0", got)
	}
}

// TestRecordingFetcherOverAPlainFetcher: a fetcher that neither reports download details
// nor proves what it wrote is called once, its error recorded. (FetchProven called
// Fetch, which called FetchProven, until the stack overflowed.)
func TestRecordingFetcherOverAPlainFetcher(t *testing.T) {
	r := &recordingFetcher{f: fetchFails{}}
	if err := r.Fetch(context.Background(), rollback.Target{}, filepath.Join(t.TempDir(), "p")); err == nil || r.err != err {
		t.Fatalf("Fetch = %v, recorded %v; want the wrapped fetcher's error, recorded", err, r.err)
	}
}

// outOfService is a director whose server has decommissioned the device.
type outOfService struct{ calls int }

func (d *outOfService) CheckIn(context.Context, map[artifact.Kind]SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	d.calls++
	return nil, fmt.Errorf("%w: device API: 403: device decommissioned", ErrOutOfService)
}

// TestAgentOutOfServiceAsksRarely: while the server refuses the device for good
// (ErrOutOfService), Run waits OutOfServiceInterval between rounds, not Interval; an
// ordinary failure (offline) keeps Interval.
func TestAgentOutOfServiceAsksRarely(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	for _, tc := range []struct {
		name string
		dir  Director
		want time.Duration
	}{
		{"out of service", &outOfService{}, 2 * time.Hour},
		{"offline", &director{offline: true}, time.Minute},
	} {
		state := t.TempDir()
		PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
		c := newClient(t, r, filepath.Join(state, "tuf"))
		m, _ := rollback.Open(ctx, rollback.Config{Dir: state})
		var waits []time.Duration
		a, _ := NewAgent(AgentConfig{TUF: c, Slots: m, Director: tc.dir, Interval: time.Minute, OutOfServiceInterval: 2 * time.Hour, Rand: func() float64 { return 0.5 }, // no jitter
			Sleep: func(_ context.Context, d time.Duration) error {
				waits = append(waits, d)
				if len(waits) == 2 {
					return context.Canceled
				}
				return nil
			}})
		if err := a.Run(ctx); !errors.Is(err, context.Canceled) {
			t.Fatalf("%s: Run = %v", tc.name, err)
		}
		m.Close()
		for i, w := range waits {
			if w != tc.want {
				t.Errorf("%s: wait %d = %v; want %v", tc.name, i, w, tc.want)
			}
		}
	}
}

// TestRefusedTargetSurvivesARestart: a version whose probe failed is not trialled again
// by a restarted agent while it is still the one desired (an offline device's `run` has
// no server to say so; before, each restart trialled it again), and is tried again once
// another version was desired in between.
func TestRefusedTargetSurvivesARestart(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	c, m, o := deviceState(t, r)
	d := &director{}
	hj := &hookedJudge{judge: judge{"2.0.0": "accuracy 0.91 < 0.95"}}
	newAgent := func() *Agent {
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: hj, Outbox: o})
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	for _, want := range []string{p1, p2} {
		d.want = map[artifact.Kind]string{artifact.KindModel: want}
		newAgent().Step(ctx)
	}
	if got, want := strings.Join(hj.events, ", "), "committed 1.0.0, rolled back 2.0.0"; got != want {
		t.Fatalf("judge told %q; want %q", got, want)
	}
	newAgent().Step(ctx) // restarted, 2.0.0 still desired
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0" {
		t.Fatalf("after a restart the refused 2.0.0 was trialled again: %s", got)
	}
	if got, err := o.Refused(ctx); err != nil || got[string(artifact.KindModel)] != p2 {
		t.Fatalf("stored refused targets = %v, %v; want the model's %s", got, err, p2)
	}
	// 1.0.0 desired again (already running: nothing to do, the refusal stays), then
	// 2.0.0: the desired target changed in between only if an install was asked for.
	d.want = map[artifact.Kind]string{artifact.KindModel: p1}
	newAgent().Step(ctx)
	d.want = map[artifact.Kind]string{artifact.KindModel: p2}
	newAgent().Step(ctx)
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0" {
		t.Fatalf("2.0.0 trialled again though nothing else was installed since: %s", got)
	}
}

// TestClearedFailureIsTriedAgain: an install decision saying an operator cleared the
// version's failure (wire.ReasonRetry, after devices clear-failed) has the agent try the
// version it refuses once more (before 2 Dec it kept refusing it: clear-failed changed
// nothing on a real device, found from outside). While the server still says so, a
// second failure stays refused (the server has not heard of it yet); cleared again
// later, it is tried again.
func TestClearedFailureIsTriedAgain(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	c, m, o := deviceState(t, r)
	d := &director{}
	hj := &hookedJudge{judge: judge{"2.0.0": "accuracy 0.91 < 0.95"}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: hj, Outbox: o})
	if err != nil {
		t.Fatal(err)
	}
	step := func(want, reason string) {
		t.Helper()
		d.want, d.reason = map[artifact.Kind]string{artifact.KindModel: want}, reason
		a.Step(ctx)
	}
	step(p1, "in_wave")
	step(p2, "in_wave")
	step(p2, "in_wave") // refused: not trialled again
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0" {
		t.Fatalf("before the clear: %s", got)
	}
	step(p2, wire.ReasonRetry)
	step(p2, wire.ReasonRetry) // failed again; the server has not heard yet
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0, rolled back 2.0.0" {
		t.Fatalf("after a clear: %s; want 2.0.0 trialled once more, once", got)
	}
	// The agent restarts (a power cut) before the server has heard: the server still
	// says the failure was cleared, and the new agent knows it tried once more already.
	// Before, a restarted agent tried it yet again, once per restart.
	if a, err = NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: hj, Outbox: o}); err != nil {
		t.Fatal(err)
	}
	step(p2, wire.ReasonRetry)
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0, rolled back 2.0.0" {
		t.Fatalf("after a restart: %s; want 2.0.0 not trialled a third time", got)
	}
	step(p2, "in_wave") // the server heard: back to refusing
	delete(hj.judge, "2.0.0")
	step(p2, wire.ReasonRetry) // cleared again, and now it passes
	if got := strings.Join(hj.events, ", "); got != "committed 1.0.0, rolled back 2.0.0, rolled back 2.0.0, committed 2.0.0" {
		t.Fatalf("after a second clear: %s", got)
	}
}

// TestRestartChecksInBeforeResumingADownload: an agent restarted with a download under
// way checks in first; the server now wants another version, so the interrupted one is
// superseded without another byte fetched, and the wanted one installs. Before, Run's
// Recover finished the abandoned download before the first check-in (found from
// outside, 2 Dec: the device silent for the 40 s the rest of it took, then it was
// thrown away).
func TestRestartChecksInBeforeResumingADownload(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "1.0.1", 0)
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	c := newClient(t, r, filepath.Join(state, "tuf"))
	var events []string
	fetch := fetchFunc(func(ctx context.Context, tg rollback.Target, dst string) error {
		events = append(events, "fetch "+tg.Path)
		return c.SlotFetcher().Fetch(ctx, tg, dst)
	})
	// The first process: the download of 1.0.0 is interrupted (the fetch fails, not for
	// good), the slot stays downloading.
	m1, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	tf, err := c.Target(ctx, p1)
	if err != nil {
		t.Fatal(err)
	}
	t1, _, err := TargetOf(artifact.KindModel, tf)
	if err != nil {
		t.Fatal(err)
	}
	cut := fetchFunc(func(context.Context, rollback.Target, string) error { return errors.New("connection reset") })
	if s, err := m1.InstallFrom(ctx, artifact.KindModel, t1, cut); err == nil || s.Phase != rollback.Downloading {
		t.Fatalf("interrupted install = %+v, %v; want downloading", s, err)
	}
	m1.Close()
	// The restarted process; the server now wants 1.0.1.
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: fetch})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	d := &recordingDirector{director: director{want: map[artifact.Kind]string{artifact.KindModel: p2}}, events: &events}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{}, Interval: time.Minute,
		Sleep: func(context.Context, time.Duration) error { return context.Canceled }})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v", err)
	}
	if len(events) == 0 || events[0] != "check-in" || slices.Contains(events, "fetch "+p1) {
		t.Errorf("events %v; want the check-in first and the superseded %s never fetched", events, p1)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Current == nil || s.Current.Path != p2 {
		t.Errorf("slot after the round = %+v; want %s committed", s, p2)
	}

	// Again, the server now wanting nothing (the rollout was aborted): the interrupted
	// download is given up after the check-in, not finished. A round whose check-in
	// fails leaves it for a round that knows.
	p3, _ := r.AddModel("iris", "1.0.2", 0)
	c.Refresh(ctx)
	tf3, err := c.Target(ctx, p3)
	if err != nil {
		t.Fatal(err)
	}
	t3, _, err := TargetOf(artifact.KindModel, tf3)
	if err != nil {
		t.Fatal(err)
	}
	if s, err := m.InstallFrom(ctx, artifact.KindModel, t3, cut); err == nil || s.Phase != rollback.Downloading {
		t.Fatalf("interrupted install of %s = %+v, %v; want downloading", p3, s, err)
	}
	events = nil
	offline := &recordingDirector{director: director{offline: true}, events: &events}
	a2, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: offline, Judge: judge{}, Interval: time.Minute,
		Sleep: func(context.Context, time.Duration) error { return context.Canceled }})
	if err != nil {
		t.Fatal(err)
	}
	a2.Run(ctx)
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != rollback.Downloading || slices.Contains(events, "fetch "+p3) {
		t.Errorf("after a failed check-in: slot %+v, events %v; want the download left as it was, unfetched", s, events)
	}
	events = nil
	none := &recordingDirector{director: director{}, events: &events}
	a3, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: none, Judge: judge{}, Interval: time.Minute,
		Sleep: func(context.Context, time.Duration) error { return context.Canceled }})
	if err != nil {
		t.Fatal(err)
	}
	a3.Run(ctx)
	s, _ := m.State(ctx, artifact.KindModel)
	if s.Phase == rollback.Downloading || s.Pending != nil || slices.Contains(events, "fetch "+p3) || s.Current == nil || s.Current.Path != p2 {
		t.Errorf("after the server wanted nothing: slot %+v, events %v; want the download of %s given up unfetched, %s still committed", s, events, p3, p2)
	}
}

// recordingDirector is director noting each check-in in events.
type recordingDirector struct {
	director
	events *[]string
}

func (d *recordingDirector) CheckIn(ctx context.Context, st map[artifact.Kind]SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	*d.events = append(*d.events, "check-in")
	return d.director.CheckIn(ctx, st)
}

// fetchFunc is a rollback.Fetcher from a function.
type fetchFunc func(ctx context.Context, t rollback.Target, dst string) error

func (f fetchFunc) Fetch(ctx context.Context, t rollback.Target, dst string) error {
	return f(ctx, t, dst)
}

// TestWithheldRootHoldsInstalls: the server announces root v2 at the check-in while the
// device's metadata source still serves v1 (a mirror withholding the root that rotated
// a stolen key away, under which the old keys still count). The round installs nothing
// and says why (metadata_behind, both versions named); once the source serves v2 the
// install goes ahead. A server that announces nothing (0) holds nothing back. The
// device used to install whatever verified under the withheld root's keys.
func TestWithheldRootHoldsInstalls(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	c, m, _ := deviceState(t, r)
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: p1}, root: 2}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
		RefreshEveryRound: true, Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil {
			return ""
		}
		return s.Current.Version
	}
	err = a.Step(ctx)
	if !errors.Is(err, ErrMetadataBehind) {
		t.Fatalf("round with root v2 announced and v1 served = %v; want ErrMetadataBehind", err)
	}
	if got := current(); got != "" {
		t.Fatalf("installed %q from a source that withholds the announced root; want nothing", got)
	}
	e := a.LastError()
	if e == nil || e.Kind != wire.ErrorMetadataBehind || !strings.Contains(e.Message, "root v1") || !strings.Contains(e.Message, "root v2") {
		t.Errorf("LastError() = %+v; want kind %q naming root v1 and root v2", e, wire.ErrorMetadataBehind)
	}

	r.RotateRoot()
	r.Publish()
	if err := a.Step(ctx); err != nil {
		t.Fatalf("round once the source serves root v2 = %v", err)
	}
	if got := current(); got != "1.0.0" {
		t.Errorf("committed %q once the source serves the announced root; want 1.0.0", got)
	}
	if e := a.LastError(); e != nil {
		t.Errorf("LastError() = %+v after the install; want nil", e)
	}
}

// TestUnannouncedRootHoldsNothing: a server that does not announce its root (0, before
// 3 Dec), or announces an older one than the device has (its cache lagging a
// publish), does not hold installs back.
func TestUnannouncedRootHoldsNothing(t *testing.T) {
	for _, announced := range []int64{0, 1} {
		ctx := context.Background()
		r := tuftest.New(t)
		p1, _ := r.AddModel("iris", "1.0.0", 0)
		r.RotateRoot()
		r.Publish()
		c, m, _ := deviceState(t, r)
		d := &director{want: map[artifact.Kind]string{artifact.KindModel: p1}, root: announced}
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
			RefreshEveryRound: true, Now: time.Now})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.Step(ctx); err != nil {
			t.Errorf("announced root v%d, served v2: round = %v; want nil", announced, err)
		}
		if s, _ := m.State(ctx, artifact.KindModel); s.Current == nil || s.Current.Version != "1.0.0" {
			t.Errorf("announced root v%d, served v2: slot %+v; want 1.0.0 committed", announced, s.Current)
		}
	}
}
