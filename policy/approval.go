package policy

import (
	"fmt"
	"slices"
)

// WaveToApprove resolves the wave an operator asked to approve, before Approve: asked
// is the index they gave, numbered from 0 as `rollout status` shows the waves, or nil
// when they gave none, which means the wave after the current one (the one awaiting
// approval, if any). It refuses a wave r does not have (ErrNoSuchWave) and wave 0,
// which starts with the rollout (ErrNoApprovalNeeded); the error names the wave asked
// for, the waves r has, the current one and the next. Other refusals are Approve's.
// It is pure.
func WaveToApprove(r *Rollout, s RolloutState, asked *int) (int, error) {
	started := !s.Started.IsZero() && s.AppliesTo(r)
	next := 0
	if started {
		next = s.Wave + 1
	}
	wave, what := next, fmt.Sprintf("wave %d (no wave given: the one after the current)", next)
	if asked != nil {
		wave, what = *asked, fmt.Sprintf("wave %d (as asked)", *asked)
	}
	switch {
	case wave < 0 || wave >= len(r.Waves):
		return 0, fmt.Errorf("approve rollout %q %s: %w: %s", r.ID, what, ErrNoSuchWave, describeWaves(r, s, started))
	case wave == 0:
		return 0, fmt.Errorf("approve rollout %q wave 0: %w: the first wave starts as soon as the rollout is created; %s", r.ID, ErrNoApprovalNeeded, describeWaves(r, s, started))
	}
	return wave, nil
}

// describeWaves says which waves r has, which is current and which is next, numbered
// as `rollout status` shows them.
func describeWaves(r *Rollout, s RolloutState, started bool) string {
	var out string
	if len(r.Waves) == 1 {
		out = "it has one wave, wave 0"
	} else {
		out = fmt.Sprintf("its waves are 0-%d", len(r.Waves)-1)
	}
	if !started {
		return out + "; it has not started (wave 0 starts first)"
	}
	next := s.Wave + 1
	if next >= len(r.Waves) {
		return out + fmt.Sprintf("; wave %d, the last, is current: no wave is left to approve", s.Wave)
	}
	out += fmt.Sprintf("; wave %d is current and wave %d is next", s.Wave, next)
	switch {
	case !r.Waves[next].Approval:
		out += fmt.Sprintf(" (it needs no approval: it starts once wave %d has soaked)", s.Wave)
	case slices.Contains(s.Approved, next):
		out += " (approved already)"
	default:
		out += fmt.Sprintf(" (it needs approval: edgeward rollout approve %s --wave %d)", r.ID, next)
	}
	return out
}
