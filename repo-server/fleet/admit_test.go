package fleet

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// summary is the part of Admitted a scenario checks, one line.
func summary(out Admitted) string {
	var b strings.Builder
	fmt.Fprintf(&b, "enroll=%v accepted=%d replan=%v verdict=%s quarantined=%v slot=%+v reports=[", out.Enroll, out.Accepted, out.Replan,
		out.Verdict.Verdict, out.Device.Quarantined, out.Device.Slots[artifact.KindModel])
	for _, r := range out.Reports {
		fmt.Fprintf(&b, " %s:%s@%s", r.RolloutID, r.Outcome, r.Version)
	}
	fmt.Fprintf(&b, " ] seen=%v audit=[", out.Seen)
	for _, a := range out.Audit {
		fmt.Fprintf(&b, " %s:%s", a.Actor, a.Kind)
	}
	b.WriteString(" ]")
	for _, r := range out.Refused {
		fmt.Fprintf(&b, " refused=%s(%s)", r.ID, r.Reason)
	}
	return b.String()
}

func TestAdmit(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-2
    target: {kind: model, name: vib, version: 2.0.0}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	running := func(version, verdict string, quarantined bool) *Device {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict, d.Quarantined = "dev-1", policy.Verdict(verdict), quarantined
		d.Slots = map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: version}}
		return d
	}
	committed := wire.Report{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeCommitted, At: t0}
	failed := wire.Report{ID: "r2", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, At: t0}
	slot := func(v string) map[artifact.Kind]policy.Slot {
		return map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: v}}
	}
	type admission struct {
		stored  *Device
		slots   map[artifact.Kind]policy.Slot
		seen    map[string]bool
		reports []wire.Report
		verdict policy.Verdict
		reasons []string
	}
	trusted, untrusted := policy.VerdictTrusted, policy.VerdictUntrusted
	for _, tc := range []struct {
		name    string
		a       admission
		want    string
		wantErr string
	}{
		{"first check-in enrolls", admission{verdict: trusted},
			"enroll=true accepted=0 replan=false verdict=trusted quarantined=false slot={Name: Version: Previous: Failed: Rekey:false Retry:} reports=[ ] seen=[] audit=[ device:dev-1:device.enroll device:dev-1:attestation.verdict ]", ""},
		{"a commit report is stored, attributed, marked seen", admission{stored: running("1.0.0", "trusted", false), slots: slot("2.0.0"), reports: []wire.Report{committed}, verdict: trusted},
			"enroll=false accepted=1 replan=true verdict=trusted quarantined=false slot={Name:vib Version:2.0.0 Previous:1.0.0 Failed: Rekey:false Retry:} reports=[ vib-2:committed@2.0.0 ] seen=[r1] audit=[ device:dev-1:install.report device:dev-1:attestation.verdict ]", ""},
		{"a retried report is acknowledged, not stored again", admission{stored: running("2.0.0", "trusted", false), slots: slot("2.0.0"), seen: map[string]bool{"r1": true}, reports: []wire.Report{committed}, verdict: trusted},
			"enroll=false accepted=1 replan=false verdict=trusted quarantined=false slot={Name:vib Version:2.0.0 Previous: Failed: Rekey:false Retry:} reports=[ ] seen=[] audit=[ device:dev-1:attestation.verdict ]", ""},
		{"a report sent twice in one request is stored once", admission{stored: running("1.0.0", "trusted", false), slots: slot("1.0.0"), reports: []wire.Report{failed, failed}, verdict: trusted},
			"enroll=false accepted=2 replan=true verdict=trusted quarantined=false slot={Name:vib Version:1.0.0 Previous: Failed:2.0.0 Rekey:false Retry:} reports=[ vib-2:probe_failed@2.0.0 ] seen=[r2] audit=[ device:dev-1:install.report device:dev-1:attestation.verdict ]", ""},
		{"turning untrusted on the target: a failure for its rollout, quarantine", admission{stored: running("2.0.0", "trusted", false), slots: slot("2.0.0"), verdict: untrusted, reasons: []string{"artifact_mismatch"}},
			"enroll=false accepted=0 replan=true verdict=untrusted quarantined=true slot={Name:vib Version:2.0.0 Previous: Failed: Rekey:false Retry:} reports=[ vib-2:attestation_untrusted@2.0.0 ] seen=[] audit=[ device:dev-1:attestation.verdict server:device.quarantine ]", ""},
		{"staying untrusted: no new failure, no second quarantine", admission{stored: running("2.0.0", "untrusted", true), slots: slot("2.0.0"), verdict: untrusted},
			"enroll=false accepted=0 replan=false verdict=untrusted quarantined=true slot={Name:vib Version:2.0.0 Previous: Failed: Rekey:false Retry:} reports=[ ] seen=[] audit=[ device:dev-1:attestation.verdict ]", ""},
		{"a bad report is refused alone: the others are stored, the check-in goes on", admission{stored: running("1.0.0", "trusted", false), slots: slot("1.0.0"), reports: []wire.Report{{ID: "x", Kind: artifact.KindModel, Name: "vib", Version: "not-a-version", Outcome: wire.OutcomeCommitted, At: t0}, failed}, verdict: trusted},
			"enroll=false accepted=1 replan=true verdict=trusted quarantined=false slot={Name:vib Version:1.0.0 Previous: Failed:2.0.0 Rekey:false Retry:} reports=[ vib-2:probe_failed@2.0.0 ] seen=[r2] audit=[ device:dev-1:install.report device:dev-1:attestation.verdict ] refused=x(version: version \"not-a-version\": want MAJOR.MINOR.PATCH[-PRERELEASE] (semantic version))", ""},
		{"a bad report without an ID refuses the whole check-in (the device could not tell which)", admission{stored: running("1.0.0", "trusted", false), reports: []wire.Report{{Kind: artifact.KindModel, Name: "vib", Version: "not-a-version", Outcome: wire.OutcomeCommitted, At: t0}}, verdict: trusted},
			"", "version"},
	} {
		a := Admission{Stored: tc.a.stored, Seen: tc.a.seen, Reports: tc.a.reports, Verdict: tc.a.verdict, Reasons: tc.a.reasons, Quarantine: true, Policy: p, Now: t0,
			CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", Slots: tc.a.slots, At: t0}}
		out, err := Admit(a)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%s: Admit = %v; want an error about %s", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Admit = %v", tc.name, err)
			continue
		}
		if got := summary(out); got != tc.want {
			t.Errorf("%s: Admit =\n  %s\nwant\n  %s", tc.name, got, tc.want)
		}
	}
}

// TestReportGoesToTheRolloutThatShippedIt: two rollouts ship one version to different
// devices; a device of the second (in the policy's order) fails its probe. The report
// belongs to that rollout and counts for it, not to the first shipping the version
// (which does not select the device, so the failure counted for neither and the
// rollout that shipped it never paused: found from outside, 2 Dec). A device neither
// selects is attributed to the first and counts for none.
func TestReportGoesToTheRolloutThatShippedIt(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: site-b
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {site: b}}
    waves: [{percent: 100}]
  - id: site-a
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {site: a}}
    waves: [{percent: 100}]
  - id: old-a
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {site: a}}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		site    string
		aborted string // a rollout's state is aborted
		want    string // rollout:counted
	}{
		{"a", "", "site-a:true"},
		{"b", "", "site-b:true"},
		{"c", "", "site-b:false"},
		{"a", "site-a", "old-a:true"},  // the one still shipping it
		{"a", "old-a", "site-a:true"},  // unchanged
		{"b", "site-b", "site-b:true"}, // the aborted one, when no other
	} {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict, d.Labels = "dev-1", policy.VerdictTrusted, map[string]string{"site": tc.site}
		d.Slots = map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}
		states := map[string]policy.RolloutState{}
		for _, ro := range p.Rollouts {
			st := policy.RolloutState{ID: ro.ID, Target: ro.Target, Status: policy.StatusActive, Started: t0.Add(-time.Hour)}
			if ro.ID == tc.aborted {
				st.Status = policy.StatusAborted
			}
			states[ro.ID] = st
		}
		out, err := Admit(Admission{Stored: d, CheckIn: CheckIn{ID: "dev-1", Slots: d.Slots, At: t0}, Verdict: policy.VerdictTrusted, Policy: p,
			States: states, Offered: map[policy.Target]bool{p.Rollouts[0].Target: true}, Now: t0,
			Reports: []wire.Report{{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, At: t0}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Reports) != 1 {
			t.Fatalf("site %s: reports %+v", tc.site, out.Reports)
		}
		if got := fmt.Sprintf("%s:%v", out.Reports[0].RolloutID, out.Reports[0].Counted); got != tc.want {
			t.Errorf("site %s, %q aborted: report went to %s; want %s", tc.site, tc.aborted, got, tc.want)
		}
	}
}

// TestFailedWayBackIsNotCounted: a device sent back to an older version (after an
// abort) whose anti-rollback floor refuses it reports the failure for the rollout that
// names that version; it is stored, and the device's slot marks it failed, but it does
// not count for that rollout (it paused an older, good rollout: found from outside,
// 2 Dec). A failure of a newer version counts as before.
func TestFailedWayBackIsNotCounted(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: old
    target: {kind: model, name: vib, version: 1.1.0}
  - id: new
    target: {kind: model, name: vib, version: 1.3.0}
`)})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		version string
		counted bool
	}{{"1.1.0", false}, {"1.3.0", true}} {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict, d.Labels = "dev-1", policy.VerdictTrusted, map[string]string{}
		d.Slots = map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.2.0", Previous: "1.1.0"}}
		states := map[string]policy.RolloutState{}
		for _, ro := range p.Rollouts {
			states[ro.ID] = policy.RolloutState{ID: ro.ID, Target: ro.Target, Status: policy.StatusActive, Started: t0.Add(-time.Hour)}
		}
		out, err := Admit(Admission{Stored: d, CheckIn: CheckIn{ID: "dev-1", Slots: d.Slots, At: t0}, Verdict: policy.VerdictTrusted, Policy: p,
			States: states, Offered: map[policy.Target]bool{p.Rollouts[0].Target: true, p.Rollouts[1].Target: true}, Now: t0,
			Reports: []wire.Report{{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: tc.version, Outcome: wire.OutcomeInstallError,
				Cause: "refusing model version " + tc.version + ": older than the committed version", At: t0}}})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Reports) != 1 || out.Reports[0].Counted != tc.counted {
			t.Errorf("failed install of %s on a device at 1.2.0: %+v; want counted %v", tc.version, out.Reports, tc.counted)
		}
		if sl := out.Device.Slots[artifact.KindModel]; sl.Failed != tc.version || sl.Version != "1.2.0" {
			t.Errorf("failed install of %s: slot %+v; want %s marked failed, 1.2.0 kept", tc.version, sl, tc.version)
		}
	}
}

// TestUntrustedDeviceDoesNotPauseACompletedRollout: a device of a completed rollout
// turning untrusted (its files changed long after it committed) is reported against the
// rollout but not counted: a completed rollout, which still pauses on failed installs,
// is not paused by one device's tampering (the demo's vib-1.1.0 was, once completed
// rollouts were judged). While the rollout is under way it counts, as before.
func TestUntrustedDeviceDoesNotPauseACompletedRollout(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 8, 0, 0, 0, time.UTC)
	p := hostilePolicy(t)
	ro := p.Rollouts[0]
	for _, status := range []policy.Status{policy.StatusActive, policy.StatusCompleted} {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict, d.Labels = "dev-1", policy.VerdictTrusted, map[string]string{"site": "a"}
		d.Slots = map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "2.0.0"}}
		out, err := Admit(Admission{Stored: d, CheckIn: CheckIn{ID: "dev-1", Slots: d.Slots, At: t0}, Verdict: policy.VerdictUntrusted, Reasons: []string{"artifact_mismatch"},
			Policy: p, States: map[string]policy.RolloutState{ro.ID: {ID: ro.ID, Status: status, Target: ro.Target, Started: t0.Add(-time.Hour), WaveStarted: t0.Add(-time.Hour)}},
			Offered: map[policy.Target]bool{ro.Target: true}, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		if len(out.Reports) != 1 || out.Reports[0].Outcome != wire.OutcomeAttestationUntrusted || out.Reports[0].Counted != (status == policy.StatusActive) {
			t.Errorf("%s rollout: reports %+v; want one attestation_untrusted, counted only while active", status, out.Reports)
		}
	}
}

// TestCommittedReportNeedsTheSlot: a "committed" report counts toward its rollout only
// when the same check-in's slots show that version, or a later one. A device reporting
// committed with its slot empty made a wave look successful (found from outside, 2 Dec).
func TestCommittedReportNeedsTheSlot(t *testing.T) {
	rep := wire.Report{Kind: artifact.KindModel, Name: "vib", Version: "1.1.0", Outcome: wire.OutcomeCommitted}
	for _, tc := range []struct {
		name  string
		slots map[artifact.Kind]policy.Slot
		rep   wire.Report
		want  bool
	}{
		{"slot shows it", map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.1.0"}}, rep, true},
		{"moved on since", map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.2.0"}}, rep, true},
		{"slot empty", map[artifact.Kind]policy.Slot{}, rep, false},
		{"no slots sent", nil, rep, false},
		{"an older version", map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}, rep, false},
		{"another model", map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "other", Version: "1.1.0"}}, rep, false},
		{"another kind's slot", map[artifact.Kind]policy.Slot{artifact.KindRuntime: {Name: "vib", Version: "1.1.0"}}, rep, false},
		{"a failure needs no slot", nil, wire.Report{Kind: artifact.KindModel, Name: "vib", Version: "1.1.0", Outcome: wire.OutcomeProbeFailed}, true},
	} {
		a := Admission{CheckIn: CheckIn{Slots: tc.slots}}
		if got := a.shows(tc.rep); got != tc.want {
			t.Errorf("%s: shows = %v; want %v", tc.name, got, tc.want)
		}
	}
}
