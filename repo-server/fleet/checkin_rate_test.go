package fleet

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// TestCheckInLimitPace: the bound admits Burst check-ins at once, then one per Every,
// says how long until the next, takes a state written by a replica whose clock is ahead
// as full, and a zero limit bounds nothing.
func TestCheckInLimitPace(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	l := CheckInLimit{Burst: 3, Every: 10 * time.Second}
	steps := []struct {
		at   time.Duration // after t0
		wait time.Duration // 0: admitted
	}{
		{0, 0}, {0, 0}, {0, 0}, // the burst
		{0, 10 * time.Second},          // refused: one comes back at t0+10s
		{9 * time.Second, time.Second}, // still refused
		{10 * time.Second, 0},          // admitted
		{10 * time.Second, 10 * time.Second},
		{45 * time.Second, 0}, // 35 s idle: 3 back (the bucket is full again at t0+40s)
		{45 * time.Second, 0},
		{45 * time.Second, 0},
		{45 * time.Second, 10 * time.Second},
	}
	var tat time.Time
	for i, s := range steps {
		next, err := l.pace(tat, t0.Add(s.at))
		var soon *TooSoonError
		switch {
		case s.wait == 0 && err != nil:
			t.Fatalf("step %d at +%v: %v; want admitted", i, s.at, err)
		case s.wait != 0 && !errors.As(err, &soon):
			t.Fatalf("step %d at +%v: %v; want refused for %v", i, s.at, err, s.wait)
		case s.wait != 0 && soon.Wait != s.wait:
			t.Fatalf("step %d at +%v: wait %v; want %v", i, s.at, soon.Wait, s.wait)
		case err == nil:
			tat = next
		}
	}
	// A state further ahead than any admission on this clock can leave it (another
	// replica's clock ahead, or a request whose time is old) is kept: the device waits
	// the difference, and gets no fresh burst from it.
	var soon *TooSoonError
	if _, err := l.pace(t0.Add(time.Hour), t0); !errors.As(err, &soon) || soon.Wait != time.Hour-20*time.Second {
		t.Fatalf("pace(state an hour ahead) = %v; want refused until the state is in reach", err)
	}
	for _, off := range []CheckInLimit{{}, {Burst: 3}, {Every: time.Second}} {
		for range 100 {
			if _, err := off.pace(t0.Add(time.Hour), t0); err != nil {
				t.Fatalf("%+v: %v; want no bound", off, err)
			}
		}
	}
}

// testCheckInRate: a device's check-ins beyond its limit are refused and change nothing
// (no verdict, no report, no audit record, the nonce not used up), across replicas; a
// replayed nonce is refused as a replay, not as too soon; once the wait is over the same
// check-in is admitted and its report stored once.
func testCheckInRate(t *testing.T, db opener) {
	ctx := context.Background()
	a0, b0 := twoReplicas(t, db)
	var records int
	count := func(ctx context.Context, tx Tx, r AuditRecord) error { records++; return nil }
	a, b := a0.WithAudit(count), b0.WithAudit(count)
	l := CheckInLimit{Burst: 2, Every: 10 * time.Second}
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	stored := func() (reports, verdicts int) {
		t.Helper()
		if err := a.db.QueryRow(`SELECT count(*) FROM reports`).Scan(&reports); err != nil {
			t.Fatal(err)
		}
		if err := a.db.QueryRow(`SELECT count(*) FROM verdicts`).Scan(&verdicts); err != nil {
			t.Fatal(err)
		}
		return
	}
	admit := func(s *Store, at time.Time, report string) (Admission, error) {
		t.Helper()
		n, err := s.IssueNonce(ctx, "dev-1", at.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		adm := nonceAdmission(n, at, report)
		adm.Limit = l
		_, err = s.Admit(ctx, adm, nil)
		return adm, err
	}
	if _, err := admit(a, t0, "r1"); err != nil { // enrolls
		t.Fatal(err)
	}
	last, err := admit(b, t0, "r2")
	if err != nil {
		t.Fatal(err)
	}
	r0, v0 := stored()
	rec0 := records
	refused, err := admit(a, t0.Add(time.Second), "r3")
	var soon *TooSoonError
	if !errors.As(err, &soon) || soon.Wait != 9*time.Second {
		t.Fatalf("third check-in within the burst of 2 = %v; want TooSoonError{9s}", err)
	}
	if r, v := stored(); r != r0 || v != v0 || records != rec0 {
		t.Fatalf("a refused check-in stored %d reports, %d verdicts, %d audit records", r-r0, v-v0, records-rec0)
	}
	// A replay of an admitted check-in (its nonce used) is refused as a replay.
	if _, err := b.Admit(ctx, last, nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("replayed check-in while too soon = %v; want ErrNonceUnknown", err)
	}
	// The refused check-in, sent again once the wait is over with the nonce it had: the
	// refusal did not use the nonce up, and its report is stored once.
	refused.Now, refused.CheckIn.At = t0.Add(10*time.Second), t0.Add(10*time.Second)
	res, err := b.Admit(ctx, refused, nil)
	if err != nil || res.Accepted != 1 {
		t.Fatalf("the refused check-in after its wait = %+v, %v; want admitted, 1 report", res, err)
	}
	if r, v := stored(); r != r0+1 || v != v0+1 {
		t.Fatalf("after the admitted retry: %d reports, %d verdicts more; want 1 and 1", r-r0, v-v0)
	}
	if _, err := admit(a, t0.Add(10*time.Second), "r4"); !errors.As(err, &soon) {
		t.Fatalf("check-in right after = %v; want TooSoonError", err)
	}
	// Without a limit (an older server, or --check-in-burst -1) nothing is refused.
	for i := range 5 {
		n, err := a.IssueNonce(ctx, "dev-1", t0.Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := a.Admit(ctx, nonceAdmission(n, t0.Add(10*time.Second), ""), nil); err != nil {
			t.Fatalf("unbounded check-in %d: %v", i, err)
		}
	}
}

// testSmallWavePauses: through the store, a rollout whose wave has one device (fewer
// than its min_reports of 3) pauses itself when that device fails, once the wave has
// soaked (before, the next wave started instead: found from outside, 2 Dec): the store
// counts the devices each wave offered the target to. Before the soak ends it does not
// (the first device of a large wave to fail must not pause it alone).
func testSmallWavePauses(t *testing.T, db opener) {
	ctx := context.Background()
	for _, soak := range []string{"1h"} {
		s, _ := openStore(t, db)
		p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
attestation: {required: false}
rollouts:
  - id: canary
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {site: a}}
    waves: [{percent: 100, soak: ` + soak + `}]
`)})
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
		checkIn := func(at time.Time, reps ...wire.Report) CheckInResult {
			t.Helper()
			res, err := s.Admit(ctx, Admission{CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: at,
				Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}},
				Labels: map[string]string{"site": "a"}, Reports: reps, Verdict: policy.VerdictTrusted, Policy: p, Now: at}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return res
		}
		res := checkIn(t0)
		if sd := res.Decision.Slots[0]; sd.Action != policy.ActionInstall || sd.Rollout != "canary" {
			t.Fatalf("soak %s: decision %+v; want install from canary", soak, sd)
		}
		checkIn(t0.Add(time.Minute), wire.Report{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, Cause: "accuracy", At: t0})
		if st, err := s.RolloutState(ctx, "canary"); err != nil || st.Status == policy.StatusPaused {
			t.Fatalf("soak %s: state before the soak ended = %+v, %v; want not paused yet", soak, st, err)
		}
		if _, err := s.PlanRollouts(ctx, p, t0.Add(2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		st, err := s.RolloutState(ctx, "canary")
		if err != nil || st.Status != policy.StatusPaused || !strings.Contains(st.Reason, "1 of 1 devices failed") {
			t.Fatalf("soak %s: state after its one device failed = %+v, %v; want paused", soak, st, err)
		}
	}
}
