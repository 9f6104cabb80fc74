package policy

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Device is what the server knows about a device at check-in.
type Device struct {
	ID           string
	Labels       map[string]string
	Hardware     string
	AgentVersion string
	// Slots by kind (model, runtime): what the device has committed.
	Slots map[artifact.Kind]Slot
	// Attrs are further attributes the agent reports, for selector expressions.
	Attrs map[string]any
	// Verdict is the last attestation verdict and VerdictAt when it was made.
	Verdict     Verdict
	VerdictAt   time.Time
	Quarantined bool
}

// Slot is the committed content of one slot kind on a device.
type Slot struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"` // active, committed version; "" if none
	// Previous is the version committed before Version ("" if none): where an aborted
	// rollout sends the device back to.
	Previous string `json:"previous,omitempty"`
	// Failed is a version of Name whose last install on this device failed (probe,
	// rollback, install error). The device is not asked to install it again: a new
	// version or a Failed cleared by an operator is needed.
	Failed string `json:"failed,omitempty"`
	// Rekey: the device runs Version from a ciphertext superseded by a content-key
	// rotation (issue 18; the server saw it in the quote). A rollout to Version offers
	// it again (ReasonRekey): the same plaintext under the current key.
	Rekey bool `json:"rekey,omitempty"`
	// Retry is a version of Name whose failure an operator cleared (the store's
	// ClearFailed): offered again with ReasonRetry, which tells the agent to install it
	// although it remembers refusing it. Cleared by the device's next result for it, or
	// by its running it.
	Retry string `json:"retry,omitempty"`
}

// Verdict is the outcome of verifying a device's quote.
type Verdict string

const (
	VerdictTrusted   Verdict = "trusted"
	VerdictUntrusted Verdict = "untrusted"
)

// Action is what the device should do with a slot.
type Action string

const (
	// ActionHold: change nothing now (Reason says why).
	ActionHold Action = "hold"
	// ActionDownload: fetch and verify Target but do not install it yet (outside the
	// maintenance window).
	ActionDownload Action = "download"
	// ActionInstall: install Target, probe it against Gates, commit or roll back.
	ActionInstall Action = "install"
)

// Reason explains a SlotDecision.
type Reason string

const (
	ReasonNotSelected          Reason = "not_selected"
	ReasonUpToDate             Reason = "up_to_date"
	ReasonRekey                Reason = "rekey" // install: the version it runs, re-encrypted under a new content key
	ReasonInWave               Reason = "in_wave"
	ReasonAborted              Reason = "rollout_aborted" // install: back to the previous version
	ReasonWaveNotReached       Reason = "wave_not_reached"
	ReasonPaused               Reason = "rollout_paused"
	ReasonQuarantined          Reason = "quarantined"
	ReasonAttestationUntrusted Reason = "attestation_untrusted"
	ReasonAttestationStale     Reason = "attestation_stale"
	ReasonOutsideWindow        Reason = "outside_window"
	ReasonFailedOnDevice       Reason = "failed_on_device"
	ReasonRetry                Reason = "failure_cleared" // install: an operator cleared its failure on the device (wire.ReasonRetry)
	ReasonUnpublished          Reason = "unpublished"     // the repository has no such signed target
	ReasonIncompatible         Reason = "incompatible"    // hardware or runtime version does not fit the target
)

// Catalog tells Evaluate what the TUF repository holds: the custom metadata of a
// target, and false if it is not published. A nil Catalog trusts that every target
// exists and fits every device.
type Catalog func(Target) (artifact.Meta, bool)

// Compatible checks a target's requirements against a device: its hardware classes
// and its minimum runtime version (a model's min_runtime against the device's
// committed runtime).
func Compatible(m artifact.Meta, d *Device) error {
	if len(m.Hardware) > 0 && !slices.Contains(m.Hardware, d.Hardware) {
		return fmt.Errorf("hardware %q not among %v", d.Hardware, m.Hardware)
	}
	if m.MinRuntime != "" {
		rt := d.Slots[artifact.KindRuntime].Version
		need, err := artifact.ParseVersion(m.MinRuntime)
		if err != nil {
			return fmt.Errorf("target min_runtime: %w", err)
		}
		v, err := artifact.ParseVersion(rt)
		if err != nil || v.Compare(need) < 0 {
			return fmt.Errorf("runtime %q is below the target's min_runtime %s", rt, m.MinRuntime)
		}
	}
	return nil
}

// SlotDecision is the desired state of one slot kind.
type SlotDecision struct {
	Kind   artifact.Kind `json:"kind"`
	Action Action        `json:"action"`
	Reason Reason        `json:"reason"`
	// Target is the version the device should end up with: the one to install or
	// download, the one held back, or (up_to_date) the one it has. Nil when no rollout
	// selects the device.
	Target *Target `json:"target,omitempty"`
	// Revert marks an install of a version lower than the committed one (after an
	// abort). The agent still enforces its anti-rollback floor, so a device that has
	// raised its floor past Target refuses it and reports an install error.
	Revert  bool   `json:"revert,omitempty"`
	Rollout string `json:"rollout,omitempty"`
	// Wave is the index (from 0) of the device's wave in Rollout.
	Wave  int             `json:"wave"`
	Gates *artifact.Gates `json:"gates,omitempty"`
	// NextWindow is when the device's maintenance window opens next (outside_window).
	NextWindow time.Time `json:"next_window,omitzero"`
	Detail     string    `json:"detail,omitempty"`
}

// Decision is the answer to one check-in.
type Decision struct {
	DeviceID     string         `json:"device_id"`
	At           time.Time      `json:"at"`
	PolicyDigest string         `json:"policy_digest"`
	Slots        []SlotDecision `json:"slots"` // model, then runtime
}

// SlotKinds returns the kinds of slot a device has, in decision order.
func SlotKinds() [2]artifact.Kind { return [2]artifact.Kind{artifact.KindModel, artifact.KindRuntime} }

// Bucket returns the device's position in a rollout, in [0, 10000): the device is in
// every wave whose Percent*100 is above it. It depends only on the two IDs, so it is
// stable across restarts and servers, and a device in a wave stays in every larger one.
func Bucket(rolloutID, deviceID string) int {
	h := sha256.Sum256([]byte(rolloutID + "\x00" + deviceID))
	return int(binary.BigEndian.Uint64(h[:8]) % 10000)
}

// WaveOf returns the index of the first wave of r that includes the device, or
// len(r.Waves) if none does (the last wave is below 100%).
func (r *Rollout) WaveOf(deviceID string) int {
	b := Bucket(r.ID, deviceID)
	for i, w := range r.Waves {
		if b < int(w.Percent*100+0.5) {
			return i
		}
	}
	return len(r.Waves)
}

// Evaluate decides what device d should run at time now, given the rollouts' states by
// ID (a rollout missing from states is in its first wave, active). It is pure.
//
// Per slot kind the rollouts of that kind are taken in policy order; the first one
// that selects the device, is not aborted, and whose current wave includes the device
// sets the target. A device selected by an earlier rollout whose wave has not reached it
// falls through to later (older) rollouts, so it keeps getting the version it had. A
// device that runs the target of an aborted rollout and is not claimed by another
// rollout is sent back to its previous committed version.
//
// A change of version needs: the target published and compatible with the device
// (if cat is not nil), the device not quarantined, the rollout not paused, a
// trusted and fresh attestation verdict (unless disabled), and now inside the device's
// maintenance window (outside it the target is only downloaded).
func Evaluate(p *Policy, d *Device, states map[string]RolloutState, now time.Time, cat Catalog) Decision {
	dec := Decision{DeviceID: d.ID, At: now, PolicyDigest: p.Digest}
	for _, k := range SlotKinds() {
		dec.Slots = append(dec.Slots, p.evaluateSlot(k, d, states, now, cat))
	}
	return dec
}

// Deciding is the rollout that sets the target of d's slot of kind (Evaluate's choice:
// the first in policy order that selects d, is not aborted, and whose current wave
// includes d), or nil when none does. It is pure.
func (p *Policy) Deciding(kind artifact.Kind, d *Device, states map[string]RolloutState) *Rollout {
	chosen, _, _, _ := p.choose(kind, d, states)
	return chosen
}

// choose is Evaluate's pick among the rollouts of kind for d (see Evaluate): the one that
// decides, with its state, else what a hold says: the first rollout whose wave has not
// reached d, and the first aborted one whose target d runs.
func (p *Policy) choose(kind artifact.Kind, d *Device, states map[string]RolloutState) (chosen *Rollout, chosenState RolloutState, notReached, aborted *SlotDecision) {
	cur := d.Slots[kind]
	for _, r := range p.Rollouts {
		if r.Target.Kind != kind {
			continue
		}
		if ok, _ := r.Selector.Match(d); !ok {
			continue
		}
		st := states[r.ID]
		if !st.AppliesTo(r) {
			st = RolloutState{} // edited to another target: not started again yet
		}
		wave := r.WaveOf(d.ID)
		t := r.Target
		switch {
		case st.Status == StatusAborted:
			if aborted == nil && cur.Name == t.Name && cur.Version == t.Version {
				aborted = &SlotDecision{Rollout: r.ID, Wave: wave, Detail: "rollout aborted: " + st.Reason}
			}
			continue
		case wave > st.Wave && !(cur.Name == t.Name && cur.Version == t.Version):
			// (A device that already runs the target keeps it, even if an edit of the
			// waves moved it out of the waves reached.)
			if notReached == nil {
				notReached = &SlotDecision{Action: ActionHold, Reason: ReasonWaveNotReached, Target: &t, Rollout: r.ID, Wave: wave,
					Detail: fmt.Sprintf("device is in wave %d, rollout is at wave %d", wave, st.Wave)}
			}
			continue
		}
		chosen, chosenState = r, st
		break
	}
	return chosen, chosenState, notReached, aborted
}

func (p *Policy) evaluateSlot(kind artifact.Kind, d *Device, states map[string]RolloutState, now time.Time, cat Catalog) SlotDecision {
	cur := d.Slots[kind]
	chosen, chosenState, notReached, aborted := p.choose(kind, d, states)
	if chosen == nil {
		if aborted != nil && cur.Previous != "" {
			t := Target{Kind: kind, Name: cur.Name, Version: cur.Previous}
			sd := *aborted
			sd.Kind, sd.Target, sd.Revert, sd.Reason = kind, &t, true, ReasonAborted
			g := p.Gates
			sd.Gates = &g
			if cur.Failed == cur.Previous {
				sd.Action, sd.Reason = ActionHold, ReasonFailedOnDevice
				return sd
			}
			return p.gate(sd, d, nil, now, cat)
		}
		if notReached != nil {
			notReached.Kind = kind
			return *notReached
		}
		return SlotDecision{Kind: kind, Action: ActionHold, Reason: ReasonNotSelected}
	}

	t := chosen.Target
	g := p.Gates
	if chosen.Gates != nil {
		g = *chosen.Gates
	}
	sd := SlotDecision{Kind: kind, Target: &t, Rollout: chosen.ID, Wave: chosen.WaveOf(d.ID), Gates: &g}
	if cur.Name == t.Name && cur.Version == t.Version && !cur.Rekey {
		sd.Action, sd.Reason = ActionHold, ReasonUpToDate
		return sd
	}
	sd.Reason = ReasonInWave
	if cur.Name == t.Name && cur.Version == t.Version {
		sd.Reason = ReasonRekey
	} else if cur.Retry == t.Version && (cur.Name == t.Name || cur.Name == "") {
		sd.Reason = ReasonRetry
	}
	sd.Revert = cur.Name == t.Name && lower(t.Version, cur.Version)
	if cur.Failed == t.Version && (cur.Name == t.Name || cur.Name == "") {
		sd.Action, sd.Reason = ActionHold, ReasonFailedOnDevice
		return sd
	}
	if chosenState.Status == StatusPaused {
		sd.Action, sd.Reason, sd.Detail = ActionHold, ReasonPaused, chosenState.Reason
		return sd
	}
	return p.gate(sd, d, chosen, now, cat)
}

// gate applies the checks every change of version must pass.
func (p *Policy) gate(sd SlotDecision, d *Device, r *Rollout, now time.Time, cat Catalog) SlotDecision {
	sd.Action = ActionHold
	if cat != nil {
		m, ok := cat(*sd.Target)
		if !ok {
			sd.Reason, sd.Detail = ReasonUnpublished, sd.Target.String()+" is not a published target"
			return sd
		}
		if err := Compatible(m, d); err != nil {
			sd.Reason, sd.Detail = ReasonIncompatible, err.Error()
			return sd
		}
	}
	if d.Quarantined {
		sd.Reason = ReasonQuarantined
		return sd
	}
	if !p.Attestation.Disabled {
		if d.Verdict != VerdictTrusted {
			sd.Reason, sd.Detail = ReasonAttestationUntrusted, fmt.Sprintf("last verdict %q", d.Verdict)
			return sd
		}
		if age := now.Sub(d.VerdictAt); age > p.Attestation.maxAge() {
			sd.Reason, sd.Detail = ReasonAttestationStale, fmt.Sprintf("trusted verdict is %s old, limit %s", age.Round(time.Second), p.Attestation.maxAge())
			return sd
		}
	}
	w := p.windowFor(d, r)
	if !w.Contains(now) {
		sd.Action, sd.Reason = ActionDownload, ReasonOutsideWindow
		if next, ok := w.Next(now); ok {
			sd.NextWindow = next
		}
		sd.Detail = "maintenance window " + w.Name
		return sd
	}
	sd.Action = ActionInstall
	return sd
}

// windowFor returns the rollout's window, else the device's maintenance window, else nil
// (always open).
func (p *Policy) windowFor(d *Device, r *Rollout) *Window {
	if r != nil && r.Window != nil {
		return r.Window
	}
	for _, m := range p.Maintenance {
		if ok, _ := m.Selector.Match(d); ok {
			return m.Window
		}
	}
	return nil
}

// Selected reports whether rollout r selects device d, and if not, why.
func (r *Rollout) Selected(d *Device) (bool, string) { return r.Selector.Match(d) }

// lower reports whether version a is lower than b (false if either does not parse).
func lower(a, b string) bool {
	va, err1 := artifact.ParseVersion(a)
	vb, err2 := artifact.ParseVersion(b)
	return err1 == nil && err2 == nil && va.Compare(vb) < 0
}
