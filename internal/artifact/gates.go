package artifact

// Stricter returns, measure by measure, the stricter of two sets of commit gates
// (higher minimum accuracy, lower maxima; a zero field is "no gate" and loses to any
// set one). The device commits against Stricter(signed target gates, rollout gates):
// a rollout can tighten what the publisher signed, never loosen it.
func Stricter(a, b Gates) Gates {
	lowest := func(x, y float64) float64 {
		switch {
		case x == 0:
			return y
		case y == 0:
			return x
		}
		return min(x, y)
	}
	return Gates{
		MinAccuracy: max(a.MinAccuracy, b.MinAccuracy),
		MaxAbsError: lowest(a.MaxAbsError, b.MaxAbsError),
		MaxP99Ms:    lowest(a.MaxP99Ms, b.MaxP99Ms),
		MaxRSSMB:    lowest(a.MaxRSSMB, b.MaxRSSMB),
	}
}

// CommitGates is what a trial is judged against: Stricter of the gates the target's
// signed metadata carries and the rollout's, either of which may be absent (nil; a
// rollout's zero Gates, no gate at all, counts as absent). It is nil only when both
// are.
func CommitGates(signed, rollout *Gates) *Gates {
	if rollout != nil && *rollout == (Gates{}) {
		rollout = nil
	}
	switch {
	case signed == nil && rollout == nil:
		return nil
	case signed == nil:
		g := *rollout
		return &g
	case rollout == nil:
		g := *signed
		return &g
	}
	g := Stricter(*signed, *rollout)
	return &g
}
