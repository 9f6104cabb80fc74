package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// RolloutStatus is what `edgeward rollout status` and the dashboard show.
type RolloutStatus struct {
	ID     string              `json:"id"`
	Target policy.Target       `json:"target"`
	State  policy.RolloutState `json:"state"`
	// Selected is the number of enrolled devices the rollout's selector matches, in
	// service and not quarantined.
	Selected int `json:"selected"`
	// Quarantined is the number of devices the selector matches that are quarantined:
	// they get nothing until released, so the rollout does not wait for them.
	Quarantined int          `json:"quarantined,omitempty"`
	Waves       []WaveStatus `json:"waves"`
	KPI         RolloutKPI   `json:"kpi"`
	// TimeTo gives the time from the start to the first commit on 50%, 90% and 100% of
	// the selected devices, for the percentages reached.
	TimeTo map[string]time.Duration `json:"time_to,omitempty"`
	// Done counts the selected devices whose latest report for the target is final:
	// Committed, or Excused (the trial failed and the device keeps its version).
	Committed int `json:"committed"`
	Excused   int `json:"excused"`
	// AlreadyRunning counts, among Committed, the selected devices that had the target
	// committed without a report of this rollout's (installed before it, or by another
	// rollout): they are done too. A rollout of a version the fleet ran already waited
	// for them for good (found from outside, 2 Dec).
	AlreadyRunning int `json:"already_running,omitempty"`
	// Progress says where the rollout stands in words an operator can act on
	// (Progress): the planner's State.Status says only how far its waves went, and
	// "completed" there means that the last wave soaked, not that any device installed.
	Progress string `json:"progress"`
	// ShadowedBy counts, by rollout ID, the selected devices whose target a rollout
	// listed before this one in the policy decides (policy.Policy.Deciding): they do not
	// get this rollout's target while it does. A rollout created through the API is
	// listed before the ones created earlier, but a hand-written file whose name sorts
	// first takes precedence over it.
	ShadowedBy map[string]int `json:"shadowed_by,omitempty"`
	// NextWaveAt is when the next wave may start (its soak ends), if the rollout is
	// active and has one.
	NextWaveAt time.Time      `json:"next_wave_at,omitzero"`
	Events     []policy.Event `json:"events"`
}

// WaveStatus is one wave's plan and progress.
type WaveStatus struct {
	Percent  float64       `json:"percent"`
	Soak     time.Duration `json:"soak"`
	Approval bool          `json:"approval,omitempty"`
	// MaxFailureRatio and MinReports are the wave's auto-pause thresholds: it pauses the
	// rollout once more than MaxFailureRatio of at least MinReports reports failed.
	MaxFailureRatio float64 `json:"max_failure_ratio"`
	MinReports      int     `json:"min_reports"`
	// Devices is the number of selected devices in this wave (not counting earlier ones).
	Devices int `json:"devices"`
	policy.WaveStat
}

// Status assembles a rollout's status from the store: its state, the devices it
// selects (a pass over all devices), the waves' statistics and KPIs, and its last events.
// ErrNotFound if the policy has no such rollout.
func (s *Store) Status(ctx context.Context, p *policy.Policy, id string) (RolloutStatus, error) {
	r := p.Rollout(id)
	if r == nil {
		return RolloutStatus{}, fmt.Errorf("rollout %s: %w", id, ErrNotFound)
	}
	st, err := s.RolloutState(ctx, id)
	if err != nil && !isNotFound(err) {
		return RolloutStatus{}, err
	}
	st.ID = id
	// The reports the planner counted, as it does: a device outside the selector, one
	// never offered the target, an untrusted or quarantined one is stored with the
	// rollout's ID but must not make a wave look failing (or succeeding) here while the
	// planner, rightly, ignores it.
	reps, err := s.Reports(ctx, ReportFilter{RolloutID: id, CountedOnly: true})
	if err != nil {
		return RolloutStatus{}, err
	}
	states, err := s.RolloutStates(ctx)
	if err != nil {
		return RolloutStatus{}, err
	}
	order := map[string]int{}
	for i, ro := range p.Rollouts {
		order[ro.ID] = i
	}
	out := RolloutStatus{ID: id, Target: r.Target, State: st, TimeTo: map[string]time.Duration{}}
	perWave := make([]int, len(r.Waves)+1)
	selected := map[string]bool{}
	running := map[string]bool{} // selected devices with the target committed
	for after := ""; ; {
		devs, err := s.Devices(ctx, ListOptions{After: after, Limit: MaxListLimit})
		if err != nil {
			return RolloutStatus{}, err
		}
		for i := range devs {
			if devs[i].Decommissioned() {
				continue // out of service: it will never commit, and must not hold the rollout short of 100 %
			}
			if ok, _ := r.Selected(&devs[i].Device); ok {
				if devs[i].Quarantined {
					// Held until released: waiting for it kept a rollout "waiting for
					// devices" for good (found from outside, 2 Dec).
					out.Quarantined++
					continue
				}
				out.Selected++
				perWave[r.WaveOf(devs[i].ID)]++
				selected[devs[i].ID] = true
				if sl := devs[i].Slots[r.Target.Kind]; sl.Name == r.Target.Name && sl.Version == r.Target.Version && !sl.Rekey {
					running[devs[i].ID] = true
				} else if dec := p.Deciding(r.Target.Kind, &devs[i].Device, states); dec != nil && order[dec.ID] < order[id] {
					if out.ShadowedBy == nil {
						out.ShadowedBy = map[string]int{}
					}
					out.ShadowedBy[dec.ID]++
				}
			}
		}
		if len(devs) < MaxListLimit {
			break
		}
		after = devs[len(devs)-1].ID
	}
	out.Committed, out.Excused, out.AlreadyRunning = finalReports(r, reps, selected, running)
	out.Progress = Progress(st, out.Selected, out.Committed, out.Excused)
	if out.AlreadyRunning > 0 {
		out.Progress += fmt.Sprintf("; %d of them ran the target already", out.AlreadyRunning)
	}
	if out.Quarantined > 0 {
		out.Progress += fmt.Sprintf("; %d more selected but quarantined, held until released", out.Quarantined)
	}
	for _, by := range slices.Sorted(maps.Keys(out.ShadowedBy)) {
		out.Progress += fmt.Sprintf("; %d of them get the target of rollout %s instead, listed before this one in the policy (%s): it takes precedence while it selects them",
			out.ShadowedBy[by], by, p.Rollout(by).Pos.File)
	}
	stats := policy.WaveStats(r, reps, st.CountSince)
	for i, w := range r.Waves {
		out.Waves = append(out.Waves, WaveStatus{Percent: w.Percent, Soak: w.Soak, Approval: w.Approval, MaxFailureRatio: w.MaxFailureRatio, MinReports: w.MinReports,
			Devices: perWave[i], WaveStat: stats[i]})
	}
	out.KPI = ComputeRollout(id, st.Started, reps)
	for _, pct := range []float64{50, 90, 100} {
		if d, ok := TimeToPercent(id, st.Started, out.Selected, reps, pct); ok {
			out.TimeTo[fmt.Sprintf("%g%%", pct)] = d
		}
	}
	if (st.Status == policy.StatusActive || st.Status == "") && !st.Started.IsZero() && st.Wave+1 < len(r.Waves) {
		out.NextWaveAt = st.WaveStarted.Add(r.Waves[st.Wave].Soak)
	}
	if out.Events, err = s.RolloutEvents(ctx, id, 50); err != nil {
		return RolloutStatus{}, err
	}
	return out, nil
}

// finalReports counts the selected devices whose latest final report for r's target
// committed it, and those whose latest failed (their trial rolled back: excused); and,
// counted as committed too (already), those without a final report that run the target
// committed (running).
func finalReports(r *policy.Rollout, reps []wire.Report, selected, running map[string]bool) (committed, excused, already int) {
	latest := map[string]wire.Report{}
	for _, rep := range reps {
		if !selected[rep.DeviceID] || rep.Name != r.Target.Name || rep.Version != r.Target.Version || !rep.Outcome.Final() {
			continue
		}
		if prev, ok := latest[rep.DeviceID]; !ok || !rep.At.Before(prev.At) {
			latest[rep.DeviceID] = rep
		}
	}
	for _, rep := range latest {
		if rep.Outcome.Failed() {
			excused++
		} else {
			committed++
		}
	}
	for id := range running {
		if _, reported := latest[id]; !reported {
			already++
		}
	}
	return committed + already, excused, already
}

// Progress says where a rollout stands for an operator, from its planner state and how
// many of the selected devices committed the target or were excused (failed its trial).
// It is pure. A rollout is "completed" only when its last wave soaked and every
// selected device is done; until then it is "pending" (not started) or "waiting for
// devices", which a rollout that selects none stays.
func Progress(st policy.RolloutState, selected, committed, excused int) string {
	done := committed + excused
	counts := fmt.Sprintf("%d of %d selected devices committed", committed, selected)
	if excused > 0 {
		counts += fmt.Sprintf(", %d excused (trial failed)", excused)
	}
	switch {
	case st.Status == policy.StatusAborted:
		return "aborted (" + counts + ")"
	case st.Status == policy.StatusPaused:
		return "paused (" + counts + ")"
	case st.Started.IsZero():
		return "pending: not started yet"
	case selected == 0:
		return "waiting for devices: the selector matches no enrolled device"
	case done < selected:
		return "waiting for devices (" + counts + ")"
	case st.Status == policy.StatusCompleted && committed == 0 && excused > 0:
		// Its waves all ran, but no device that tried the target kept it: not a success
		// to report as one (found by an outside operator journey).
		return "completed, but no device committed the target: every one that tried failed its trial (" + counts + "); pause or abort it, or it keeps offering the target"
	case st.Status == policy.StatusCompleted:
		return "completed (" + counts + ")"
	default: // every selected device is done; the waves have not all soaked
		return "rolling out (" + counts + "; soaking)"
	}
}

func isNotFound(err error) bool { return err != nil && errors.Is(err, ErrNotFound) }
