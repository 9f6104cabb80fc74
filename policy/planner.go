package policy

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
)

// Status of a rollout.
type Status string

const (
	// StatusActive (also the zero value): waves advance as their soak times pass.
	StatusActive Status = "active"
	// StatusPaused: devices that have the target keep it; no other device gets it.
	StatusPaused Status = "paused"
	// StatusAborted: the rollout no longer claims devices; those running its target are
	// sent back to their previous committed version. Final.
	StatusAborted Status = "aborted"
	// StatusCompleted: the last wave has soaked. Devices keep getting the target.
	StatusCompleted Status = "completed"
)

// RolloutState is the mutable state of a rollout, persisted by the server. The zero
// value is a rollout that has not started: Plan starts it.
type RolloutState struct {
	ID     string `json:"id"`
	Status Status `json:"status,omitempty"`
	// Target is the rollout's target when it started. A state whose Target differs
	// from the rollout's (the policy was edited to ship another version under the same
	// ID) does not apply to it: the rollout starts again from its first wave.
	Target Target `json:"target,omitzero"`
	// Wave is the index (from 0) of the last wave started.
	Wave        int       `json:"wave"`
	WaveStarted time.Time `json:"wave_started,omitzero"`
	Started     time.Time `json:"started,omitzero"`
	// Approved are the wave indices an operator approved.
	Approved []int `json:"approved,omitempty"`
	// AwaitingApproval is set while the next wave waits for an operator.
	AwaitingApproval bool `json:"awaiting_approval,omitempty"`
	// Reason for the last pause or abort.
	Reason string `json:"reason,omitempty"`
	// CountSince: reports before it do not count toward auto-pause (set on resume, so
	// the failures that caused a pause do not pause the rollout again at once).
	CountSince time.Time `json:"count_since,omitzero"`
	Updated    time.Time `json:"updated,omitzero"`
}

// AppliesTo reports whether s is a state of r as it is now: started for r's target,
// or not started at all.
func (s RolloutState) AppliesTo(r *Rollout) bool {
	return s.Started.IsZero() || s.Target == (Target{}) || s.Target == r.Target
}

func (s RolloutState) status() Status {
	if s.Status == "" {
		return StatusActive
	}
	return s.Status
}

// EventType names a rollout event.
type EventType string

const (
	EventStarted          EventType = "started"
	EventRestarted        EventType = "restarted" // the target changed under the same rollout ID
	EventWaveStarted      EventType = "wave_started"
	EventAwaitingApproval EventType = "awaiting_approval"
	EventApproved         EventType = "approved"
	EventAutoPaused       EventType = "auto_paused"
	EventPaused           EventType = "paused"
	EventResumed          EventType = "resumed"
	EventAborted          EventType = "aborted"
	EventCompleted        EventType = "completed"
)

// Event is something that happened to a rollout, for the audit log and the API.
type Event struct {
	Rollout string    `json:"rollout"`
	Type    EventType `json:"type"`
	Wave    int       `json:"wave"`
	Reason  string    `json:"reason,omitempty"`
	Actor   string    `json:"actor,omitempty"` // operator, or "" for the planner
	At      time.Time `json:"at"`
}

// WaveStat counts the latest report of each device of one wave.
type WaveStat struct {
	Wave      int     `json:"wave"`
	Reported  int     `json:"reported"`
	Succeeded int     `json:"succeeded"`
	Failed    int     `json:"failed"`
	Ratio     float64 `json:"failure_ratio"`
	// Offered is how many devices of the wave the rollout offered its target to so far
	// (0: not known). Once the wave has soaked, every device of it that checks in was
	// offered the target, so a wave of fewer devices than its MinReports is judged once
	// each of them reported.
	Offered int `json:"offered,omitempty"`
}

// enough reports whether st has reports enough for wave w's failure ratio to pause its
// rollout: w.MinReports; or, once the wave has soaked (a soak it has: without one its
// devices were not given the time to check in), every device it offered the target to
// when that is fewer, so that a canary of one device that failed pauses the rollout
// instead of letting the next wave start. Before its soak ends Offered counts only the
// devices that checked in so far: the first of a wave of hundreds to fail must not
// pause the rollout alone.
func (st WaveStat) enough(w Wave, soaked bool) bool {
	need := w.MinReports
	if soaked && w.Soak > 0 && st.Offered > 0 && st.Offered < need {
		need = st.Offered
	}
	return st.Reported > 0 && st.Reported >= need
}

// WaveStats counts, per wave of r, the devices whose latest report for r's target (at
// or after since) succeeded or failed. Reports for other rollouts or versions, and
// infrastructure failures (the device retries; not a result), are ignored.
func WaveStats(r *Rollout, reports []wire.Report, since time.Time) []WaveStat {
	latest := map[string]wire.Report{}
	for _, rep := range reports {
		if rep.RolloutID != r.ID || rep.Version != r.Target.Version || rep.Name != r.Target.Name || rep.At.Before(since) || !rep.Outcome.Final() {
			continue
		}
		if prev, ok := latest[rep.DeviceID]; !ok || !rep.At.Before(prev.At) {
			latest[rep.DeviceID] = rep
		}
	}
	stats := make([]WaveStat, len(r.Waves))
	for i := range stats {
		stats[i].Wave = i
	}
	for id, rep := range latest {
		w := r.WaveOf(id)
		if w >= len(stats) {
			continue
		}
		stats[w].Reported++
		if rep.Outcome.Failed() {
			stats[w].Failed++
		} else {
			stats[w].Succeeded++
		}
	}
	for i := range stats {
		if stats[i].Reported > 0 {
			stats[i].Ratio = float64(stats[i].Failed) / float64(stats[i].Reported)
		}
	}
	return stats
}

// Plan advances rollout r from state s given all reports for it so far and the time
// now. It is pure: the caller persists the returned state, then records the events.
//
// In order: a zero state is started (first wave). An aborted rollout does not change.
// If any started wave has at least MinReports reports (or, once it soaked, when fewer,
// as many as the devices it offered the target to: WaveStat.Offered) and a failure ratio above
// MaxFailureRatio, or the started waves that could not be judged alone together have
// enough reports and a failure ratio above the most lenient of theirs, the rollout pauses
// itself, completed or not: a completed rollout still offers its target. A paused
// rollout waits for Resume. Otherwise, once the
// current wave has soaked, the next wave starts, unless it needs an approval not yet
// given; after the last wave soaks the rollout is completed.
func Plan(r *Rollout, s RolloutState, reports []wire.Report, now time.Time) (RolloutState, []Event) {
	return PlanStats(r, s, WaveStats(r, reports, StatsSince(r, s)), now)
}

// StatsSince is the time from which Plan counts reports for r in state s: s.CountSince,
// or the zero time when s does not apply to r (Plan restarts the rollout).
func StatsSince(r *Rollout, s RolloutState) time.Time {
	if !s.AppliesTo(r) {
		return time.Time{}
	}
	return s.CountSince
}

// Counts are the latest reports of the devices of one bucket range: how many succeeded
// and how many failed; and how many devices of the range were offered the target (0:
// not known).
type Counts struct{ Succeeded, Failed, Offered int }

// WaveRange is the range of buckets [Lo, Hi) whose devices belong to wave i of r (see
// Bucket and WaveOf): a store can count a wave's reports through an index on the bucket.
func (r *Rollout) WaveRange(i int) (lo, hi int) {
	for _, w := range r.Waves[:i] {
		lo = max(lo, int(w.Percent*100+0.5))
	}
	hi = int(r.Waves[i].Percent*100 + 0.5)
	return min(lo, hi), hi
}

// StatsOf builds the wave statistics of r from per-wave counts of the devices' latest
// reports (what WaveStats computes from the reports themselves).
func StatsOf(r *Rollout, counts []Counts) []WaveStat {
	stats := make([]WaveStat, len(r.Waves))
	for i := range stats {
		stats[i].Wave = i
		if i < len(counts) {
			c := counts[i]
			stats[i].Succeeded, stats[i].Failed, stats[i].Reported, stats[i].Offered = c.Succeeded, c.Failed, c.Succeeded+c.Failed, c.Offered
			if stats[i].Reported > 0 {
				stats[i].Ratio = float64(c.Failed) / float64(stats[i].Reported)
			}
		}
	}
	return stats
}

// PlanStats is Plan given the wave statistics (WaveStats of r's reports since
// StatsSince(r, s)) instead of the reports, so that a store can count them through an
// index rather than read every report. It is pure.
func PlanStats(r *Rollout, s RolloutState, stats []WaveStat, now time.Time) (RolloutState, []Event) {
	var evs []Event
	emit := func(t EventType, reason string) {
		evs = append(evs, Event{Rollout: r.ID, Type: t, Wave: s.Wave, Reason: reason, At: now})
		s.Updated = now
	}
	s.ID = r.ID
	if !s.AppliesTo(r) {
		old := s.Target
		s = RolloutState{ID: r.ID}
		emit(EventRestarted, fmt.Sprintf("target changed from %s to %s", old, r.Target))
	}
	if s.Started.IsZero() {
		s.Status, s.Wave, s.Started, s.WaveStarted, s.Target = StatusActive, 0, now, now, r.Target
		emit(EventStarted, "")
		emit(EventWaveStarted, fmt.Sprintf("%v%%", r.Waves[0].Percent))
	}
	if s.Wave >= len(r.Waves) { // the policy lost waves since the state was written
		s.Wave = len(r.Waves) - 1
	}
	if s.status() == StatusAborted {
		return s, evs
	}
	// A completed rollout still offers its target to the devices it selects (a last
	// wave without soak completes as it starts): failures reported since still pause it.
	for i := 0; i <= s.Wave && i < len(stats); i++ {
		w, st := r.Waves[i], stats[i]
		soaked := i < s.Wave || s.status() == StatusCompleted || now.Sub(s.WaveStarted) >= w.Soak
		if (s.status() == StatusActive || s.status() == StatusCompleted) && st.enough(w, soaked) && st.Ratio > w.MaxFailureRatio {
			s.Status = StatusPaused
			s.Reason = fmt.Sprintf("wave %d: %d of %d devices failed (%.0f%% > %.0f%%)", i, st.Failed, st.Reported, st.Ratio*100, w.MaxFailureRatio*100)
			emit(EventAutoPaused, s.Reason)
		}
	}
	// The started waves too few of whose devices reported to be judged alone, judged
	// together: waves of fewer devices than their MinReports are never judged alone
	// (until they soak), so a small fleet whose waves each hold a device or two, or
	// waves without soaks (all started at once), never paused however many devices
	// failed (found from outside, 2 Dec: four of four devices failed their probes, in
	// three waves, and the rollout completed). Judged by the most lenient of their
	// thresholds (the largest MaxFailureRatio and MinReports), and without a wave
	// judged alone already: a stricter wave after a lenient canary must not pause on
	// the canary's failures, which its own threshold accepted (found in review).
	if s.Wave > 0 && (s.status() == StatusActive || s.status() == StatusCompleted) {
		var pool WaveStat
		var ratio float64
		need, waves := 0, []string{}
		for i := 0; i <= s.Wave && i < len(stats); i++ {
			w, st := r.Waves[i], stats[i]
			soaked := i < s.Wave || s.status() == StatusCompleted || now.Sub(s.WaveStarted) >= w.Soak
			if st.enough(w, soaked) {
				continue
			}
			pool.Reported += st.Reported
			pool.Failed += st.Failed
			ratio, need = max(ratio, w.MaxFailureRatio), max(need, w.MinReports)
			waves = append(waves, fmt.Sprint(i))
		}
		if len(waves) > 1 && pool.Reported > 0 && pool.Reported >= need {
			if got := float64(pool.Failed) / float64(pool.Reported); got > ratio {
				s.Status = StatusPaused
				s.Reason = fmt.Sprintf("waves %s together: %d of %d devices failed (%.0f%% > %.0f%%)", strings.Join(waves, ", "), pool.Failed, pool.Reported, got*100, ratio*100)
				emit(EventAutoPaused, s.Reason)
			}
		}
	}
	if s.status() != StatusActive {
		return s, evs
	}
	for now.Sub(s.WaveStarted) >= r.Waves[s.Wave].Soak {
		if s.Wave == len(r.Waves)-1 {
			s.Status = StatusCompleted
			emit(EventCompleted, "")
			break
		}
		next := s.Wave + 1
		if r.Waves[next].Approval && !slices.Contains(s.Approved, next) {
			if !s.AwaitingApproval {
				s.AwaitingApproval = true
				emit(EventAwaitingApproval, fmt.Sprintf("wave %d needs approval", next))
			}
			break
		}
		// The next wave starts now, when Plan runs and its devices can first be offered
		// the target, and soaks from then. It used to start when the previous wave had
		// soaked (its nominal time): a planner that ran late (every replica down, the
		// database away, a leader failing over) started several waves in one call, the
		// middle ones never soaked (found from outside, 2 Dec: waves 1-3 of 4 at one
		// instant after 35 s without a planner). A wave now starts at most a planner tick
		// after its time.
		s.Wave, s.WaveStarted, s.AwaitingApproval = next, now, false
		emit(EventWaveStarted, fmt.Sprintf("%v%%", r.Waves[next].Percent))
	}
	return s, evs
}

// Errors of operator actions.
var (
	ErrBadTransition = errors.New("rollout cannot do that in its current status")
	ErrNoSuchWave    = errors.New("no such wave")
	// ErrNoApprovalNeeded: Approve of a wave that needs none, has started, or was
	// approved before.
	ErrNoApprovalNeeded = errors.New("wave needs no approval")
)

// Pause stops a rollout's progress (operator action): an active one, or a completed one,
// which still offers its target to devices it selects that do not run it yet.
func Pause(s RolloutState, actor, reason string, now time.Time) (RolloutState, Event, error) {
	if st := s.status(); st != StatusActive && st != StatusCompleted {
		return s, Event{}, fmt.Errorf("pause rollout %q (%s): %w", s.ID, st, ErrBadTransition)
	}
	s.Status, s.Reason, s.Updated = StatusPaused, reason, now
	return s, Event{Rollout: s.ID, Type: EventPaused, Wave: s.Wave, Reason: reason, Actor: actor, At: now}, nil
}

// Resume restarts a paused rollout. Reports made before now no longer count toward
// auto-pause, and the current wave soaks again from now.
func Resume(s RolloutState, actor string, now time.Time) (RolloutState, Event, error) {
	if st := s.status(); st != StatusPaused {
		return s, Event{}, fmt.Errorf("resume rollout %q (%s): %w", s.ID, st, ErrBadTransition)
	}
	s.Status, s.Reason, s.CountSince, s.WaveStarted, s.Updated = StatusActive, "", now, now, now
	return s, Event{Rollout: s.ID, Type: EventResumed, Wave: s.Wave, Actor: actor, At: now}, nil
}

// Abort ends a rollout for good: see StatusAborted.
func Abort(s RolloutState, actor, reason string, now time.Time) (RolloutState, Event, error) {
	if st := s.status(); st == StatusAborted {
		return s, Event{}, fmt.Errorf("abort rollout %q (%s): %w", s.ID, st, ErrBadTransition)
	}
	if s.Started.IsZero() {
		s.Started = now
	}
	s.Status, s.Reason, s.Updated = StatusAborted, reason, now
	return s, Event{Rollout: s.ID, Type: EventAborted, Wave: s.Wave, Reason: reason, Actor: actor, At: now}, nil
}

// Approve lets wave (an index) of r start once the wave before it has soaked.
func Approve(r *Rollout, s RolloutState, wave int, actor string, now time.Time) (RolloutState, Event, error) {
	if wave <= 0 || wave >= len(r.Waves) {
		return s, Event{}, fmt.Errorf("approve rollout %q wave %d (%d waves): %w", r.ID, wave, len(r.Waves), ErrNoSuchWave)
	}
	if st := s.status(); st == StatusAborted || st == StatusCompleted {
		return s, Event{}, fmt.Errorf("approve rollout %q (%s): %w", r.ID, st, ErrBadTransition)
	}
	switch {
	case !r.Waves[wave].Approval:
		return s, Event{}, fmt.Errorf("approve rollout %q wave %d: %w: it starts once the wave before it has soaked", r.ID, wave, ErrNoApprovalNeeded)
	case !s.Started.IsZero() && s.AppliesTo(r) && wave <= s.Wave:
		return s, Event{}, fmt.Errorf("approve rollout %q wave %d: %w: it has started", r.ID, wave, ErrNoApprovalNeeded)
	case slices.Contains(s.Approved, wave):
		return s, Event{}, fmt.Errorf("approve rollout %q wave %d: %w: it was approved before", r.ID, wave, ErrNoApprovalNeeded)
	}
	s.Approved = append(slices.Clone(s.Approved), wave)
	slices.Sort(s.Approved)
	s.Updated = now
	return s, Event{Rollout: r.ID, Type: EventApproved, Wave: wave, Actor: actor, At: now}, nil
}
