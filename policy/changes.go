package policy

import (
	"reflect"
	"sort"
)

// Changes summarises what differs from old to new, for the audit log: the digests,
// whether attestation is required and its maximum age, and the rollouts added, removed
// and changed (by ID). old may be nil (the first policy).
func Changes(old, new *Policy) map[string]any {
	out := map[string]any{"digest": new.Digest, "rollouts": len(new.Rollouts),
		"attestation_required": !new.Attestation.Disabled}
	if old == nil {
		return out
	}
	out["previous_digest"] = old.Digest
	if old.Attestation.Disabled != new.Attestation.Disabled {
		out["attestation_required_was"] = !old.Attestation.Disabled
	}
	if old.Attestation.MaxAge != new.Attestation.MaxAge {
		out["attestation_max_age"] = []string{old.Attestation.MaxAge.String(), new.Attestation.MaxAge.String()}
	}
	if !reflect.DeepEqual(old.Attestation, new.Attestation) {
		out["attestation_changed"] = true
	}
	if old.Gates != new.Gates {
		out["default_gates_changed"] = true
	}
	was := map[string]*Rollout{}
	for _, r := range old.Rollouts {
		was[r.ID] = r
	}
	var added, changed, removed []string
	for _, r := range new.Rollouts {
		o, ok := was[r.ID]
		switch {
		case !ok:
			added = append(added, r.ID)
		case !reflect.DeepEqual(withoutPrograms(o), withoutPrograms(r)):
			changed = append(changed, r.ID)
		}
		delete(was, r.ID)
	}
	for id := range was {
		removed = append(removed, id)
	}
	sort.Strings(removed)
	for k, v := range map[string][]string{"rollouts_added": added, "rollouts_changed": changed, "rollouts_removed": removed} {
		if len(v) > 0 {
			out[k] = v
		}
	}
	return out
}

// withoutPrograms is a copy of r without its compiled CEL program (compiled anew at every
// load, so never deeply equal) and without its position in the files (a comment added
// above a rollout moves it, and changes nothing it does), for comparing what the files
// say.
func withoutPrograms(r *Rollout) Rollout {
	c := *r
	c.Pos = Pos{}
	if c.Selector != nil {
		s := *c.Selector
		s.prg = nil
		c.Selector = &s
	}
	return c
}
