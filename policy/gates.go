package policy

import "github.com/edgeward/edgeward/internal/artifact"

// Stricter returns, measure by measure, the stricter of two sets of commit gates
// (higher minimum accuracy, lower maxima; a zero field is "no gate" and loses to any
// set one). The agent should commit against Stricter(signed target gates, decision
// gates): the policy can tighten what the publisher signed, never loosen it.
func Stricter(a, b artifact.Gates) artifact.Gates {
	lowest := func(x, y float64) float64 {
		switch {
		case x == 0:
			return y
		case y == 0:
			return x
		}
		return min(x, y)
	}
	return artifact.Gates{
		MinAccuracy: max(a.MinAccuracy, b.MinAccuracy),
		MaxAbsError: lowest(a.MaxAbsError, b.MaxAbsError),
		MaxP99Ms:    lowest(a.MaxP99Ms, b.MaxP99Ms),
		MaxRSSMB:    lowest(a.MaxRSSMB, b.MaxRSSMB),
	}
}
