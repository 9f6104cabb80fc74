package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

const evalPolicy = `
attestation: {max_age: 30m}
gates: {min_accuracy: 0.9}
windows:
  - {name: nights, timezone: UTC, days: [all], from: "22:00", to: "04:00"}
maintenance:
  - window: nights
    selector: {labels: {site: berlin}}
rollouts:
  - id: new
    target: {kind: model, name: vib, version: 3.1.0}
    selector: {labels: {line: press}}
    gates: {min_accuracy: 0.97}
    waves:
      - {percent: 10, soak: 1h}
      - {percent: 100}
  - id: old
    target: {kind: model, name: vib, version: 3.0.0}
    selector: {labels: {line: press}}
  - id: rt
    target: {kind: runtime, name: ort, version: 1.24.1}
    selector: {hardware: [aarch64]}
`

// deviceIn returns a device ID whose wave in rollout r is (or is not) 0.
func deviceIn(t *testing.T, r *Rollout, wave int) string {
	t.Helper()
	for i := range 10000 {
		id := fmt.Sprintf("d%d", i)
		if r.WaveOf(id) == wave {
			return id
		}
	}
	t.Fatalf("no device in wave %d", wave)
	return ""
}

func TestEvaluate(t *testing.T) {
	p, err := Parse(File{Name: "p.yaml", Data: []byte(evalPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) // noon: outside "nights"
	first, later := deviceIn(t, p.Rollout("new"), 0), deviceIn(t, p.Rollout("new"), 1)
	dev := func(id string, edit func(*Device)) *Device {
		d := &Device{
			ID: id, Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
			Slots:   map[artifact.Kind]Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0", Previous: "2.9.0"}},
			Verdict: VerdictTrusted, VerdictAt: now.Add(-10 * time.Minute),
		}
		if edit != nil {
			edit(d)
		}
		return d
	}
	active := map[string]RolloutState{}
	tests := []struct {
		name    string
		d       *Device
		states  map[string]RolloutState
		now     time.Time
		want    SlotDecision // model slot; only the fields set here are compared
		revert  bool
		version string
	}{
		{"first wave installs", dev(first, nil), active, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave, Rollout: "new"}, false, "3.1.0"},
		{"later wave falls back to the old rollout", dev(later, nil), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonUpToDate, Rollout: "old"}, false, "3.0.0"},
		{"later wave without an older version installs the old rollout", dev(later, func(d *Device) { d.Slots = nil }), active, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave, Rollout: "old"}, false, "3.0.0"},
		{"second wave reached", dev(later, nil), map[string]RolloutState{"new": {Wave: 1}}, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave, Rollout: "new", Wave: 1}, false, "3.1.0"},
		{"already there though its wave is not reached", dev(later, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0"} }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonUpToDate, Rollout: "new"}, false, "3.1.0"},
		{"already there", dev(first, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0"} }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonUpToDate, Rollout: "new"}, false, "3.1.0"},
		{"already there, from a superseded ciphertext: offered again", dev(first, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Rekey: true} }), active, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonRekey, Rollout: "new"}, false, "3.1.0"},
		{"rekey held for a quarantined device", dev(first, func(d *Device) {
			d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Rekey: true}
			d.Quarantined = true
		}), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonQuarantined, Rollout: "new"}, false, "3.1.0"},
		{"rekey of a version whose rollout is not reached is still offered", dev(later, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Rekey: true} }), active, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonRekey, Rollout: "new"}, false, "3.1.0"},
		{"not selected", dev(first, func(d *Device) { d.Labels = nil }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonNotSelected}, false, ""},
		{"quarantined", dev(first, func(d *Device) { d.Quarantined = true }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonQuarantined, Rollout: "new"}, false, "3.1.0"},
		{"untrusted", dev(first, func(d *Device) { d.Verdict = VerdictUntrusted }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonAttestationUntrusted}, false, "3.1.0"},
		{"never attested", dev(first, func(d *Device) { d.Verdict = "" }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonAttestationUntrusted}, false, "3.1.0"},
		{"stale verdict", dev(first, func(d *Device) { d.VerdictAt = now.Add(-31 * time.Minute) }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonAttestationStale}, false, "3.1.0"},
		{"verdict exactly at the bound is fresh", dev(first, func(d *Device) { d.VerdictAt = now.Add(-30 * time.Minute) }), active, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave}, false, "3.1.0"},
		{"paused holds devices without the target", dev(first, nil), map[string]RolloutState{"new": {Status: StatusPaused, Reason: "bad"}}, now,
			SlotDecision{Action: ActionHold, Reason: ReasonPaused, Detail: "bad"}, false, "3.1.0"},
		{"paused keeps devices with the target", dev(first, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Previous: "3.0.0"} }),
			map[string]RolloutState{"new": {Status: StatusPaused}}, now,
			SlotDecision{Action: ActionHold, Reason: ReasonUpToDate}, false, "3.1.0"},
		{"aborted: devices with the target fall back to the old rollout", dev(first, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Previous: "3.0.0"} }),
			map[string]RolloutState{"new": {Status: StatusAborted}}, now,
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave, Rollout: "old"}, true, "3.0.0"},
		{"failed here before: not retried", dev(first, func(d *Device) { d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.0.0", Failed: "3.1.0"} }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonFailedOnDevice, Rollout: "new"}, false, "3.1.0"},
		{"aborted: devices without the target are untouched", dev(first, nil), map[string]RolloutState{"new": {Status: StatusAborted}}, now,
			SlotDecision{Action: ActionHold, Reason: ReasonUpToDate, Rollout: "old"}, false, "3.0.0"},
		{"outside window downloads", dev(first, func(d *Device) { d.Labels["site"] = "berlin" }), active, now,
			SlotDecision{Action: ActionDownload, Reason: ReasonOutsideWindow, NextWindow: time.Date(2026, 11, 25, 22, 0, 0, 0, time.UTC)}, false, "3.1.0"},
		{"inside window installs", dev(first, func(d *Device) { d.Labels["site"] = "berlin"; d.VerdictAt = now.Add(11 * time.Hour) }), active, now.Add(11 * time.Hour),
			SlotDecision{Action: ActionInstall, Reason: ReasonInWave}, false, "3.1.0"},
		{"quarantine wins over the window", dev(first, func(d *Device) { d.Labels["site"] = "berlin"; d.Quarantined = true }), active, now,
			SlotDecision{Action: ActionHold, Reason: ReasonQuarantined}, false, "3.1.0"},
	}
	for _, tt := range tests {
		dec := Evaluate(p, tt.d, tt.states, tt.now, nil)
		if len(dec.Slots) != 2 || dec.Slots[0].Kind != artifact.KindModel || dec.PolicyDigest != p.Digest || dec.DeviceID != tt.d.ID {
			t.Fatalf("%s: Evaluate = %+v", tt.name, dec)
		}
		got := dec.Slots[0]
		version := ""
		if got.Target != nil {
			version = got.Target.Version
		}
		if got.Action != tt.want.Action || got.Reason != tt.want.Reason || version != tt.version || got.Revert != tt.revert ||
			(tt.want.Rollout != "" && got.Rollout != tt.want.Rollout) || (tt.want.Wave != 0 && got.Wave != tt.want.Wave) ||
			(tt.want.Detail != "" && got.Detail != tt.want.Detail) || !got.NextWindow.Equal(tt.want.NextWindow) {
			t.Errorf("%s: Evaluate model slot = %+v (target %s); want %+v (target %q, revert %v)", tt.name, got, version, tt.want, tt.version, tt.revert)
		}
	}
}

func TestEvaluateGatesAndRevert(t *testing.T) {
	p, err := Parse(File{Name: "p.yaml", Data: []byte(evalPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	first := deviceIn(t, p.Rollout("new"), 0)
	d := &Device{ID: first, Labels: map[string]string{"line": "press"}, Hardware: "aarch64",
		Slots:   map[artifact.Kind]Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}},
		Verdict: VerdictTrusted, VerdictAt: now}
	dec := Evaluate(p, d, nil, now, nil)
	if g := dec.Slots[0].Gates; g == nil || g.MinAccuracy != 0.97 {
		t.Errorf("rollout gates = %+v; want the rollout's own (0.97)", g)
	}
	rt := dec.Slots[1]
	if rt.Kind != artifact.KindRuntime || rt.Action != ActionInstall || rt.Target.Version != "1.24.1" || rt.Gates == nil || rt.Gates.MinAccuracy != 0.9 {
		t.Errorf("runtime slot = %+v; want install 1.24.1 with the default gates (0.9)", rt)
	}

	// Without an older rollout, abort sends the device back to its previous version.
	p2, err := Parse(File{Name: "p.yaml", Data: []byte("rollouts:\n  - id: new\n    target: {kind: model, name: vib, version: 3.1.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Previous: "3.0.0"}
	got := Evaluate(p2, d, map[string]RolloutState{"new": {Status: StatusAborted, Reason: "bad model"}}, now, nil).Slots[0]
	if got.Action != ActionInstall || !got.Revert || got.Reason != ReasonAborted || got.Target.Version != "3.0.0" || got.Rollout != "new" {
		t.Errorf("abort without older rollout = %+v; want revert install of 3.0.0", got)
	}
	// A revert needs attestation too.
	d.Verdict = VerdictUntrusted
	if got := Evaluate(p2, d, map[string]RolloutState{"new": {Status: StatusAborted}}, now, nil).Slots[0]; got.Action != ActionHold || got.Reason != ReasonAttestationUntrusted || !got.Revert {
		t.Errorf("revert of an untrusted device = %+v; want hold attestation_untrusted", got)
	}
	// A revert that failed (the floor refused it) is not asked again.
	d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0", Previous: "3.0.0", Failed: "3.0.0"}
	if got := Evaluate(p2, d, map[string]RolloutState{"new": {Status: StatusAborted}}, now, nil).Slots[0]; got.Action != ActionHold || got.Reason != ReasonFailedOnDevice {
		t.Errorf("failed revert = %+v; want hold failed_on_device", got)
	}
	// No previous version: nothing to go back to.
	d.Verdict = VerdictTrusted
	d.Slots[artifact.KindModel] = Slot{Name: "vib", Version: "3.1.0"}
	if got := Evaluate(p2, d, map[string]RolloutState{"new": {Status: StatusAborted}}, now, nil).Slots[0]; got.Action != ActionHold || got.Reason != ReasonNotSelected {
		t.Errorf("abort without previous = %+v; want hold not_selected", got)
	}
	// Disabled attestation lets unattested devices install.
	p3, err := Parse(File{Name: "p.yaml", Data: []byte("attestation: {required: false}\nrollouts:\n  - id: new\n    target: {kind: model, name: vib, version: 3.1.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if got := Evaluate(p3, &Device{ID: "x"}, nil, now, nil).Slots[0]; got.Action != ActionInstall {
		t.Errorf("attestation disabled: %+v; want install", got)
	}
}

func TestEvaluateCatalog(t *testing.T) {
	p, err := Parse(File{Name: "p.yaml", Data: []byte("attestation: {required: false}\nrollouts:\n  - id: new\n    target: {kind: model, name: vib, version: 3.1.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	meta := artifact.Meta{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Hardware: []string{"x86_64"}, MinRuntime: "1.24.0"}
	cat := func(tg Target) (artifact.Meta, bool) {
		return meta, tg == Target{artifact.KindModel, "vib", "3.1.0"}
	}
	dev := func(hw, rt string) *Device {
		return &Device{ID: "d", Hardware: hw, Slots: map[artifact.Kind]Slot{artifact.KindRuntime: {Name: "ort", Version: rt}}}
	}
	tests := []struct {
		name   string
		d      *Device
		cat    Catalog
		reason Reason
		detail string
	}{
		{"fits", dev("x86_64", "1.24.0"), cat, ReasonInWave, ""},
		{"no catalog", dev("riscv", ""), nil, ReasonInWave, ""},
		{"wrong hardware", dev("aarch64", "1.24.0"), cat, ReasonIncompatible, `hardware "aarch64" not among [x86_64]`},
		{"old runtime", dev("x86_64", "1.23.9"), cat, ReasonIncompatible, `runtime "1.23.9" is below the target's min_runtime 1.24.0`},
		{"no runtime", dev("x86_64", ""), cat, ReasonIncompatible, "below"},
		{"unpublished", dev("x86_64", "1.24.0"), func(Target) (artifact.Meta, bool) { return artifact.Meta{}, false }, ReasonUnpublished, "model/vib@3.1.0 is not a published target"},
	}
	for _, tt := range tests {
		got := Evaluate(p, tt.d, nil, now, tt.cat).Slots[0]
		if got.Reason != tt.reason || !strings.Contains(got.Detail, tt.detail) {
			t.Errorf("%s: Evaluate = %s %s (%s); want %s (%s)", tt.name, got.Action, got.Reason, got.Detail, tt.reason, tt.detail)
		}
	}
}

// TestClearedFailureIsOfferedAsRetry: a version whose failure an operator cleared
// (Slot.Retry) is offered with ReasonRetry, which agents take as leave to try it once
// more; while it is still Failed it is held, and other versions are offered as usual.
func TestClearedFailureIsOfferedAsRetry(t *testing.T) {
	p, err := Parse(File{Name: "p.yaml", Data: []byte("version: 1\nattestation: {required: false}\nrollouts:\n  - id: r\n    target: {kind: model, name: vib, version: 2.0.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		slot Slot
		want Reason
	}{
		{Slot{Name: "vib", Version: "1.0.0", Retry: "2.0.0"}, ReasonRetry},
		{Slot{Name: "vib", Version: "1.0.0"}, ReasonInWave},
		{Slot{Name: "vib", Version: "1.0.0", Retry: "1.5.0"}, ReasonInWave},
		{Slot{Name: "vib", Version: "1.0.0", Failed: "2.0.0"}, ReasonFailedOnDevice},
	} {
		d := &Device{ID: "dev-1", Slots: map[artifact.Kind]Slot{artifact.KindModel: tc.slot}}
		sd := Evaluate(p, d, nil, now, nil).Slots[0]
		if sd.Reason != tc.want {
			t.Errorf("slot %+v: %s %s; want %s", tc.slot, sd.Action, sd.Reason, tc.want)
		}
	}
}
