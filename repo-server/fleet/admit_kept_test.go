package fleet

import (
	"reflect"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// TestAdmitReadsOnlyWhatACheckInKeeps: Store.Admit reads only the columns of the
// device's row that keptByCheckIn keeps (admitQuery); the pure Admit must decide the
// same with them as with the whole row, whatever the rest holds.
func TestAdmitReadsOnlyWhatACheckInKeeps(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-2
    target: {kind: model, name: vib, version: 2.0.0}
    selector: {labels: {line: press}}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	full := func(verdict policy.Verdict, quarantined bool) Device {
		d := Device{QuarantineReason: "because", EnrolledAt: t0.Add(-time.Hour), LastCheckIn: t0.Add(-time.Minute),
			LastError: &wire.UpdateError{Kind: "download", Message: "old"}, Boot: &reference.BootState{}}
		d.Device = policy.Device{ID: "dev-1", Labels: map[string]string{"line": "press"}, Hardware: "arm64", AgentVersion: "0.0.9",
			Slots:   map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0", Previous: "0.9.0", Failed: "1.5.0"}},
			Attrs:   map[string]any{"old": true},
			Verdict: verdict, VerdictAt: t0.Add(-time.Minute), Quarantined: quarantined}
		return d
	}
	reports := []wire.Report{{ID: "r1", Kind: artifact.KindModel, Name: "vib", Version: "2.0.0", Outcome: wire.OutcomeCommitted, At: t0}}
	n := 0
	for _, stored := range []Device{full(policy.VerdictTrusted, false), full(policy.VerdictUntrusted, true), full(policy.VerdictTrusted, true)} {
		for _, verdict := range []policy.Verdict{policy.VerdictTrusted, policy.VerdictUntrusted} {
			for _, reps := range [][]wire.Report{nil, reports} {
				a := Admission{Reports: reps, Verdict: verdict, Reasons: []string{"r"}, Quarantine: true, Policy: p, Now: t0,
					Offered: map[policy.Target]bool{p.Rollouts[0].Target: true},
					CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: t0, Attrs: map[string]any{"new": 1.0},
						Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "2.0.0"}}}}
				whole, kept := a, a
				s, k := stored, keptByCheckIn(stored)
				whole.Stored, kept.Stored = &s, &k
				want, err1 := Admit(whole)
				got, err2 := Admit(kept)
				if err1 != nil || err2 != nil {
					t.Fatalf("Admit: %v, %v", err1, err2)
				}
				if !reflect.DeepEqual(want.Device.Labels, stored.Labels) {
					t.Errorf("stored %+v: Admit changed the labels to %v (putDevice does not write them back)", stored, want.Device.Labels)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("stored %+v, verdict %s, %d reports: Admit with the kept columns =\n  %+v\nwith the whole row\n  %+v", stored, verdict, len(reps), got, want)
				}
				n++
			}
		}
	}
	if n != 12 {
		t.Fatalf("%d cases", n)
	}
}
