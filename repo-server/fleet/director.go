package fleet

import (
	"context"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// Decide is the server's check-in: it records the device's facts (CheckIn), then
// evaluates and records the decision (DecideAt). The caller verifies the device's quote
// and calls Attest first, so the decision sees the fresh verdict. cat maps a target to
// its TUF custom metadata (nil: every target is taken as published and compatible).
func (s *Store) Decide(ctx context.Context, p *policy.Policy, cat policy.Catalog, c CheckIn) (policy.Decision, error) {
	if _, err := s.CheckIn(ctx, c); err != nil {
		return policy.Decision{}, err
	}
	return s.DecideAt(ctx, p, cat, c.ID, c.At)
}

// DecideAt evaluates the policy for a stored device at time at, with the rollouts'
// stored states, records the decision and returns it. Use it instead of Decide when the
// check-in's facts are already stored.
func (s *Store) DecideAt(ctx context.Context, p *policy.Policy, cat policy.Catalog, id string, at time.Time) (policy.Decision, error) {
	d, err := s.Device(ctx, id)
	if err != nil {
		return policy.Decision{}, err
	}
	states, err := s.RolloutStates(ctx)
	if err != nil {
		return policy.Decision{}, fmt.Errorf("decide for %s: %w", id, err)
	}
	dec := policy.Evaluate(p, &d.Device, states, at, cat)
	if err := s.RecordDecision(ctx, dec); err != nil {
		return policy.Decision{}, err
	}
	return dec, nil
}

// PlanRollouts runs the planner for every rollout of the policy, in one transaction,
// and saves the states that changed with their events and audit records (actor
// "server"); it returns the events. It counts waves through an index
// (rollout_latest), never reading a rollout's reports. Call it on a
// ticker (every minute, say) and after storing reports, so that a failing wave pauses
// promptly.
func (s *Store) PlanRollouts(ctx context.Context, p *policy.Policy, now time.Time) ([]policy.Event, error) {
	var evs []policy.Event
	err := s.tx(ctx, func(tx *txn) error {
		var err error
		evs, err = s.planTx(ctx, tx, p, now, nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("plan rollouts: %w", err)
	}
	return evs, nil
}

// Attest records an attestation verdict (RecordVerdict) and, when it turns untrusted,
// also records one attestation_untrusted report against every rollout whose target the
// device runs, so that a wave whose devices stop attesting pauses like one whose
// installs fail. Use it instead of RecordVerdict at check-in.
func (s *Store) Attest(ctx context.Context, p *policy.Policy, id string, v policy.Verdict, detail string, at time.Time) error {
	before, err := s.Device(ctx, id)
	if err != nil {
		return err
	}
	if err := s.RecordVerdict(ctx, id, v, detail, at); err != nil {
		return err
	}
	// A device that stays untrusted check-in after check-in is one failure, not one per
	// check-in: only the change from trusted (or never attested) is reported.
	if v == policy.VerdictTrusted || before.Verdict == policy.VerdictUntrusted {
		return nil
	}
	d, err := s.Device(ctx, id)
	if err != nil {
		return err
	}
	for _, r := range p.Rollouts {
		sl := d.Slots[r.Target.Kind]
		if sl.Name != r.Target.Name || sl.Version != r.Target.Version {
			continue
		}
		err := s.AddReport(ctx, wire.Report{DeviceID: id, RolloutID: r.ID, Kind: r.Target.Kind, Name: sl.Name, Version: sl.Version,
			Outcome: wire.OutcomeAttestationUntrusted, Cause: detail, At: at})
		if err != nil {
			return err
		}
	}
	return nil
}
