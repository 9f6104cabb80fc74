package fleet

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// AuditRecord is an audit log entry that a store change carries: the store appends it
// in the change's own transaction (see Store.WithAudit), so the change and its record
// commit together or not at all.
type AuditRecord struct {
	Actor   string // "server", "cli:alice", "device:<id>"
	Kind    string // "install.report", "attestation.verdict", …
	Subject string // a device ID, a rollout ID, …
	Data    any    // JSON-encodable details
}

// Admission is what the server knows when it admits an authenticated check-in.
type Admission struct {
	// Stored is the device's stored row; nil on its first check-in (it is enrolled).
	// Admit reads only what a check-in keeps of it (ID, Labels, Slots, Verdict,
	// Quarantined, QuarantineReason, EnrolledAt: keptByCheckIn), the rest being what the
	// check-in reports again, and Store.Admit reads only those columns.
	Stored *Device
	// Seen holds the IDs of the request's reports that are already stored.
	Seen map[string]bool
	// CheckIn is the device's facts; Labels are its labels at enrollment.
	CheckIn CheckIn
	Labels  map[string]string
	// Reports are the install results the request carries, in order. Their IDs make
	// retries idempotent ("" for none: stored every time it is sent); DeviceID and
	// RolloutID are set by Admit, whatever the device wrote.
	Reports []wire.Report
	// Verdict of the device's evidence, and why (empty when trusted).
	Verdict policy.Verdict
	Reasons []string
	// Boot is what the device's boot event log proved (nil: it sent none, or it did
	// not verify); recorded with the verdict.
	Boot *reference.BootState
	// Runtime is what the device's IMA list proved (nil: none, or it did not verify),
	// with the files no policy list names; recorded with the verdict.
	Runtime *reference.RuntimeState
	// Decrypted are the encrypted artifacts the quote shows loaded, each with the
	// plaintext hash the device measured beside its ciphertext (issue 18); recorded
	// with the verdict. Empty: none.
	Decrypted []eventlog.Artifact
	// Policy in force; its rollouts attribute reports and receive the untrusted reports.
	Policy *policy.Policy
	// States are the stored states of Policy's rollouts at receipt, by ID (a rollout
	// never planned is absent): a report counts only for a wave the rollout reached.
	States map[string]policy.RolloutState
	// Offered holds the targets the server offered this device (install or download)
	// before this check-in: a report about a target never offered is not counted.
	Offered map[policy.Target]bool
	// Quarantine: quarantine the device if its verdict is not trusted.
	Quarantine bool
	// Now is the server's clock at receipt: every report's time (the device's own is
	// kept as DeviceAt, information only).
	Now time.Time
	// Nonce, if set, is the quote nonce of the check-in, issued by IssueNonce: Store.Admit
	// consumes it first in the check-in's transaction (as ConsumeNonce, at Now), so
	// that the nonce is used up exactly when the check-in commits, in one round trip.
	// The pure Admit does not look at it.
	Nonce []byte
	// Limit bounds how often the device's check-ins are admitted (zero: no bound).
	Limit CheckInLimit
}

// CheckInLimit bounds one device's check-ins: Burst at once, then one per Every (a
// token bucket, kept as the generic cell rate algorithm's one time per device,
// Device.CheckInTAT). A burst is what an agent's start, its report flushes and its
// retries need; Every is far below any agent's interval. Zero Burst or Every: no bound.
//
// A check-in beyond it changes nothing and is refused (*TooSoonError): a device whose
// agent checks in far faster than anyone configured (a loop, a hostile device) can
// otherwise add a verdict and its audit record at every request.
type CheckInLimit struct {
	Burst int
	Every time.Duration
}

// TooSoonError refuses a check-in beyond the device's CheckInLimit; Wait is how long
// until one is admitted again.
type TooSoonError struct{ Wait time.Duration }

func (e *TooSoonError) Error() string {
	return fmt.Sprintf("checking in too often: the next check-in is admitted in %v", e.Wait.Round(time.Millisecond))
}

// shows says whether the check-in's own slots bear a committed report out: the device
// says it runs that version of that name in that kind's slot, or a later one (it moved
// on since; its report was queued before). A report of another outcome needs no such
// evidence. A device reporting "committed" with its slot empty counted toward its
// rollout's wave, and a wave of such reports read as a success (found from outside,
// 2 Dec).
func (a Admission) shows(r wire.Report) bool {
	if r.Outcome != wire.OutcomeCommitted {
		return true
	}
	sl, ok := a.CheckIn.Slots[r.Kind]
	if !ok || sl.Name != r.Name {
		return false
	}
	have, err1 := artifact.ParseVersion(sl.Version)
	want, err2 := artifact.ParseVersion(r.Version)
	return err1 == nil && err2 == nil && have.Compare(want) >= 0
}

// TooSoon says, changing nothing, whether a check-in from device id at now would be
// refused under l for coming too soon: a *TooSoonError, else nil (also for an unknown
// device, or when the store cannot say: Admit decides). The device API asks before it
// verifies a check-in's evidence, which a device past its bound made the server do in
// full at every request (72 ms of CPU and 67 MB for a check-in with large logs) before
// Admit refused it (found from outside, 2 Dec). Admit's check stays the one that counts.
func (s *Store) TooSoon(ctx context.Context, id string, l CheckInLimit, now time.Time) error {
	if l.Burst <= 0 {
		return nil
	}
	var tat int64
	if err := s.db.QueryRowContext(ctx, `SELECT checkin_tat FROM devices WHERE id = ?`, id).Scan(&tat); err != nil {
		return nil
	}
	_, err := l.pace(fromNS(tat), now)
	return err
}

// pace applies l to a check-in at now of a device whose bound's state is tat (zero:
// none): the new state, or a *TooSoonError saying how long until the next is admitted.
// It never moves the state back: a state ahead of this replica's clock (another
// replica's clock ahead, this one stepped back, a request whose time is old) makes the
// device wait that much longer, so keep the replicas' clocks in step. (Reset to now, a
// request sent slowly on purpose bought a fresh burst; capped, it moved the state back
// by as much: both found 2 Dec.)
func (l CheckInLimit) pace(tat, now time.Time) (time.Time, error) {
	if l.Burst <= 0 || l.Every <= 0 {
		return tat, nil
	}
	tolerance := time.Duration(l.Burst-1) * l.Every
	if tat.Before(now) {
		tat = now
	}
	if ahead := tat.Sub(now); ahead > tolerance {
		return tat, &TooSoonError{Wait: ahead - tolerance}
	}
	return tat.Add(l.Every), nil
}

// AdmittedReport is a report to store. At is the server's receipt time; DeviceAt is the
// time the device wrote, kept as information only. Counted: the report enters
// rollout_latest, what the planner counts (see Admit).
type AdmittedReport struct {
	wire.Report
	DeviceAt time.Time
	Counted  bool
}

// Admitted is what admitting a check-in changes: the writes to apply and the audit
// records to append, all in one transaction.
type Admitted struct {
	Enroll  bool   // insert Device (first check-in) rather than update it
	Device  Device // the device row after the check-in
	Reports []AdmittedReport
	Seen    []string // report IDs to mark stored
	Verdict VerdictRecord
	Audit   []AuditRecord
	// Replan: reports were stored or the device was quarantined, so the rollouts are
	// planned again at once (a failing wave pauses promptly).
	Replan bool
	// Accepted is the number of reports stored, new or retried; Refused names those
	// refused as invalid. The device may drop both from its outbox.
	Accepted int
	Refused  []wire.RefusedReport
}

// Admit decides what an authenticated check-in changes. It is pure: it reads only its
// input, and the caller (Store.Admit) applies the result in one transaction. In order:
// enrollment on first sight, the device's facts, its new reports (a report whose ID is
// in a.Seen was stored by an earlier attempt and is only acknowledged), the verdict
// (and, when the device turns untrusted, one attestation_untrusted report against
// every rollout whose target it runs), then the quarantine.
//
// Every report is stored, but only some count toward a rollout's waves (Counted), so
// that one device cannot pause a rollout it is not part of: the device must be
// selected by the rollout, in a wave the rollout has reached, have been offered the
// target by the server (a.Offered), and, for its own reports, be trusted at this
// check-in and not quarantined. A report's time is a.Now, never the device's: a time
// in the future cannot make a failure outlive a resume.
func Admit(a Admission) (Admitted, error) {
	id := a.CheckIn.ID
	if err := a.CheckIn.validate(); err != nil {
		return Admitted{}, err
	}
	if _, err := encodeAttrs(a.CheckIn.Attrs); err != nil {
		return Admitted{}, err
	}
	p := a.Policy
	if p == nil {
		p = &policy.Policy{}
	}
	actor := "device:" + id
	var out Admitted
	var before Device
	if a.Stored == nil {
		if err := ValidLabels(a.Labels); err != nil {
			return Admitted{}, err
		}
		labels := a.Labels
		if labels == nil {
			labels = map[string]string{}
		}
		before = Device{EnrolledAt: a.Now}
		before.ID, before.Labels, before.Slots = id, maps.Clone(labels), map[artifact.Kind]policy.Slot{}
		out.Enroll = true
		out.Audit = append(out.Audit, AuditRecord{actor, "device.enroll", id, map[string]any{"labels": labels, "hardware": a.CheckIn.Hardware}})
	} else {
		before = *a.Stored
	}
	tat, err := a.Limit.pace(before.CheckInTAT, a.Now)
	if err != nil {
		return Admitted{}, err
	}
	d := mergeFacts(before, a.CheckIn)
	d.CheckInTAT = tat

	seen := map[string]bool{}
	for _, rep := range a.Reports {
		if rep.ID != "" && (a.Seen[rep.ID] || seen[rep.ID]) {
			out.Accepted++
			continue
		}
		r := rep
		r.DeviceID, r.RolloutID = id, ""
		rollout, member := a.rolloutOf(p, r, &d)
		if rollout != nil {
			r.RolloutID = rollout.ID
		}
		if err := validateReport(&r); err != nil {
			if rep.ID == "" {
				return Admitted{}, err // the device could not tell which one
			}
			// Refused alone: the device's other reports and its check-in go on.
			out.Refused = append(out.Refused, wire.RefusedReport{ID: rep.ID, Reason: err.Error()})
			continue
		}
		out.Accepted++
		deviceAt := r.At
		r.At = a.Now
		back := goingBack(d.Slots[r.Kind], r)
		applyReport(&d, r)
		counted := member && a.Verdict == policy.VerdictTrusted && !before.Quarantined && a.shows(r) && !back
		out.Reports = append(out.Reports, AdmittedReport{Report: r, DeviceAt: deviceAt, Counted: counted})
		if rep.ID != "" {
			seen[rep.ID] = true
			out.Seen = append(out.Seen, rep.ID)
		}
		out.Audit = append(out.Audit, AuditRecord{actor, "install.report", id, r})
		out.Replan = true
	}

	detail := strings.Join(a.Reasons, "; ")
	detail = printable.Cut(detail, MaxCause) // it quotes the device's evidence
	if err := validShort("verdict", string(a.Verdict)); err != nil || a.Verdict == "" {
		return Admitted{}, invalid("verdict", "%q", a.Verdict)
	}
	out.Verdict = VerdictRecord{DeviceID: id, Verdict: a.Verdict, Detail: detail, At: a.Now}
	d.Verdict, d.VerdictAt, d.Boot = a.Verdict, a.Now, a.Boot
	// A device that stays untrusted check-in after check-in is one failure, not one per
	// check-in: only the change from trusted (or never attested) is reported.
	if a.Verdict != policy.VerdictTrusted && before.Verdict != policy.VerdictUntrusted {
		for _, ro := range p.Rollouts {
			sl := d.Slots[ro.Target.Kind]
			if sl.Name != ro.Target.Name || sl.Version != ro.Target.Version {
				continue
			}
			r := wire.Report{DeviceID: id, RolloutID: ro.ID, Kind: ro.Target.Kind, Name: sl.Name, Version: sl.Version,
				Outcome: wire.OutcomeAttestationUntrusted, Cause: detail, At: a.Now}
			applyReport(&d, r)
			// The server's own observation about the target: it counts if the device is
			// one of the rollout's (the verdict is what is being reported), while the
			// rollout is under way. A completed rollout is judged on installs only (it
			// pauses when its version fails where it is still offered): a device whose
			// files were changed long after it committed says nothing of the version.
			completed := a.States[ro.ID].Status == policy.StatusCompleted && a.States[ro.ID].AppliesTo(ro)
			out.Reports = append(out.Reports, AdmittedReport{Report: r, DeviceAt: a.Now, Counted: !before.Quarantined && !completed && a.member(ro, &d)})
			out.Replan = true
		}
	}
	verdictData := map[string]any{"verdict": a.Verdict, "reasons": a.Reasons}
	if a.Boot != nil {
		verdictData["boot"] = a.Boot
	}
	if a.Runtime != nil {
		verdictData["runtime"] = a.Runtime
	}
	if len(a.Decrypted) > 0 {
		verdictData["decrypted"] = a.Decrypted
	}
	out.Audit = append(out.Audit, AuditRecord{actor, "attestation.verdict", id, verdictData})
	if a.Verdict != policy.VerdictTrusted && a.Quarantine && !before.Quarantined {
		d.Quarantined, d.QuarantineReason = true, "attestation: "+detail
		d.QuarantineReason = printable.Cut(d.QuarantineReason, MaxCause)
		out.Audit = append(out.Audit, AuditRecord{"server", "device.quarantine", id, map[string]any{"reason": detail}})
		out.Replan = true
	}
	out.Device = d
	return out, nil
}

// rolloutOf is the rollout a report about r's target is attributed to, and whether d is
// one of its devices (member). Several rollouts may ship one target (to other devices,
// or a newer one superseding an older): the report belongs to the one the device is a
// member of, as Evaluate chose it (the first in the policy's order, an aborted one only
// when no other), else to the first shipping the target, stored but not counted. (Before
// 2 Dec it went to the first shipping the target, member or not: a device of a later
// rollout failing its probe counted for neither, and that rollout never paused.)
func (a *Admission) rolloutOf(p *policy.Policy, r wire.Report, d *Device) (ro *policy.Rollout, member bool) {
	var abortedMember *policy.Rollout
	for _, c := range p.Rollouts {
		if c.Target.Kind != r.Kind || c.Target.Name != r.Name || c.Target.Version != r.Version {
			continue
		}
		if ro == nil {
			ro = c
		}
		if !a.member(c, d) {
			continue
		}
		if st, ok := a.States[c.ID]; ok && st.Status == policy.StatusAborted && st.AppliesTo(c) {
			if abortedMember == nil {
				abortedMember = c
			}
			continue
		}
		return c, true
	}
	if abortedMember != nil {
		return abortedMember, true
	}
	return ro, false
}

// member reports whether d is one of r's devices at receipt: selected by r, in a wave
// r has reached (for r's current target), and offered r's target by the server.
func (a *Admission) member(r *policy.Rollout, d *Device) bool {
	if ok, _ := r.Selector.Match(&d.Device); !ok {
		return false
	}
	// A rollout not started yet (or started for another target) is at its first wave:
	// Evaluate offers it to that wave, and the planner starts it in this transaction.
	reached := 0
	if st, ok := a.States[r.ID]; ok && !st.Started.IsZero() && st.AppliesTo(r) {
		reached = st.Wave
	}
	if r.WaveOf(d.ID) > reached {
		return false
	}
	return a.Offered[r.Target]
}

// mergeFacts returns the device with the check-in's facts. When a slot's version
// changed, the old one becomes its Previous; a slot's Failed mark (set by reports) is
// kept until a commit report, ClearFailed, or the device running that very version
// clears it.
func mergeFacts(old Device, c CheckIn) Device {
	d := old
	d.Slots = map[artifact.Kind]policy.Slot{}
	for k, sl := range c.Slots {
		prev := old.Slots[k]
		if sl.Previous == "" && prev.Name == sl.Name && prev.Version != sl.Version {
			sl.Previous = prev.Version
		} else if sl.Previous == "" && prev.Version == sl.Version {
			sl.Previous = prev.Previous
		}
		if sl.Failed == "" && prev.Name == sl.Name && prev.Failed != sl.Version {
			sl.Failed = prev.Failed
		}
		if sl.Retry == "" && (prev.Name == sl.Name || prev.Name == "") && prev.Retry != sl.Version {
			sl.Retry = prev.Retry
		}
		d.Slots[k] = sl
	}
	d.Hardware, d.AgentVersion, d.Attrs, d.LastCheckIn, d.LastError = c.Hardware, c.AgentVersion, c.Attrs, c.At, c.LastError
	if d.Attrs == nil {
		d.Attrs = map[string]any{}
	}
	return d
}

// applyReport updates the device's slot for an install result. A failed install marks
// the version Failed, so policy evaluation does not offer it again; a committed one
// makes it the slot's version (the old one becoming Previous) and clears the mark.
// goingBack reports whether r is a failed install of a version older than the one the
// device has committed (sl): a way back after an abort, which the device's anti-rollback
// floor refuses once it raised it, or whose trial failed. It says nothing of the rollout
// that names that version: counted for it, the refusals of every device sent back
// paused an older, good rollout (found from outside, 2 Dec: "wave 0: 3 of 3 devices
// failed" after the newer rollout was aborted).
func goingBack(sl policy.Slot, r wire.Report) bool {
	if !r.Outcome.Failed() || sl.Name != r.Name || sl.Version == "" {
		return false
	}
	have, err1 := artifact.ParseVersion(sl.Version)
	got, err2 := artifact.ParseVersion(r.Version)
	return err1 == nil && err2 == nil && got.Compare(have) < 0
}

func applyReport(d *Device, r wire.Report) {
	if d.Slots == nil {
		d.Slots = map[artifact.Kind]policy.Slot{}
	} else {
		d.Slots = maps.Clone(d.Slots)
	}
	sl := d.Slots[r.Kind]
	switch {
	case r.Outcome == wire.OutcomeAttestationUntrusted && sl.Version == r.Version:
		return // about the running version, not a failed install
	case !r.Outcome.Final():
		return // retried by the device: says nothing about the version
	}
	if sl.Retry == r.Version {
		sl.Retry = "" // the cleared failure's retry has its result
	}
	switch {
	case r.Outcome.Failed():
		sl.Failed = r.Version
		if sl.Name == "" {
			sl.Name = r.Name
		}
	default: // committed: the device now runs it, until its next check-in says otherwise
		if sl.Name != r.Name || sl.Version != r.Version {
			if sl.Name == r.Name {
				sl.Previous = sl.Version
			} else {
				sl.Previous = ""
			}
			sl.Name, sl.Version = r.Name, r.Version
		}
		if sl.Failed == r.Version {
			sl.Failed = ""
		}
	}
	d.Slots[r.Kind] = sl
}
