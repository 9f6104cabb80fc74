package runtimeapi

import (
	"fmt"
	"math"

	"github.com/edgeward/edgeward/internal/artifact"
)

// ProbeSet is the probe data of a model version, published as the TUF target
// probes/<name>/<version>.json. Axis 0 of every input indexes the cases; each case is
// run alone (shape [1, …]) so latency is that of one request.
//
// Classification sets give Labels (one per case): the predicted label is the Output
// value itself when the output has one element per case, else its argmax. Regression
// sets give Reference (the Output's values for all cases, row-major) and Tolerance; a
// case is correct when every value is within Tolerance. Check states these invariants;
// Score applies them to a run's outputs.
type ProbeSet struct {
	Model     string          `json:"model,omitempty"`
	Version   string          `json:"version,omitempty"`
	Inputs    []RequestTensor `json:"inputs"`
	Output    string          `json:"output"`
	Labels    []int64         `json:"labels,omitempty"`
	Reference []float64       `json:"reference,omitempty"`
	Tolerance float64         `json:"tolerance,omitempty"`
	// Warmup runs are not measured. Zero means 10.
	Warmup int `json:"warmup,omitempty"`
	// Runs are the measured single-case runs, cycling through the cases; at least one run
	// per case is always made. Zero means 200.
	Runs int `json:"runs,omitempty"`
	// Source says where the data came from (for people; not interpreted).
	Source string `json:"source,omitempty"`
}

// Check validates the set's structure without decoding tensor data and returns its
// number of cases: there is at least one input and an output; every input has a known
// datatype and the same positive axis 0; there is one label per case, or reference
// values that split evenly into the cases. Every error wraps ErrInvalid.
func (ps *ProbeSet) Check() (cases int, err error) {
	if len(ps.Inputs) == 0 || ps.Output == "" {
		return 0, fmt.Errorf("%w: probe set needs inputs and an output", ErrInvalid)
	}
	n := int64(-1)
	for _, t := range ps.Inputs {
		if !t.Datatype.Known() {
			return 0, fmt.Errorf("%w: probe input %q: datatype %q is not supported", ErrInvalid, t.Name, t.Datatype)
		}
		if len(t.Shape) == 0 || t.Shape[0] < 1 || (n >= 0 && t.Shape[0] != n) {
			return 0, fmt.Errorf("%w: probe input %q: shape %v: axis 0 must count the cases, the same for every input", ErrInvalid, t.Name, t.Shape)
		}
		n = t.Shape[0]
	}
	switch {
	case len(ps.Labels) > 0 && int64(len(ps.Labels)) != n:
		return 0, fmt.Errorf("%w: probe set has %d cases but %d labels", ErrInvalid, n, len(ps.Labels))
	case len(ps.Labels) == 0 && (len(ps.Reference) == 0 || int64(len(ps.Reference))%n != 0):
		return 0, fmt.Errorf("%w: probe set needs one label per case or reference outputs for all %d cases", ErrInvalid, n)
	}
	return int(n), nil
}

// ProbeReport is the outcome of a probe run: the measures and the gate decision
// (Failures is Decide's answer; Pass means it is empty).
type ProbeReport struct {
	Model       string  `json:"model"`
	Version     string  `json:"version"`
	Cases       int     `json:"cases"`
	Runs        int     `json:"runs"`
	Correct     int     `json:"correct"`
	Accuracy    float64 `json:"accuracy"`
	MaxAbsError float64 `json:"max_abs_error"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	MeanMs      float64 `json:"mean_ms"`
	// PeakRSSMB is the runtime process's peak resident set during the probe or while
	// it loaded the version, whichever is higher; LoadPeakRSSMB is the load's alone.
	PeakRSSMB     float64  `json:"peak_rss_mb"`
	LoadPeakRSSMB float64  `json:"load_peak_rss_mb,omitempty"`
	Pass          bool     `json:"pass"`
	Failures      []string `json:"failures,omitempty"`
}

// ProbeRequest is the body of POST /v2/models/{name}/versions/{version}/probe. Nil Gates
// means no gate: the report passes whatever it measured.
type ProbeRequest struct {
	Probe ProbeSet        `json:"probe"`
	Gates *artifact.Gates `json:"gates,omitempty"`
}

// Score compares the output of every case (got[i], flattened) with the probe set's
// expectations and returns how many cases are correct and the largest absolute error
// (regression sets; 0 for classification). A NaN output is an infinite error, never
// correct.
func Score(ps *ProbeSet, got [][]float64) (correct int, maxAbs float64, err error) {
	if len(ps.Labels) > 0 {
		for i, out := range got {
			if len(out) == 0 {
				return 0, 0, fmt.Errorf("probe case %d: empty output %q", i, ps.Output)
			}
			if pred, ok := predicted(out); ok && pred == ps.Labels[i] {
				correct++
			}
		}
		return correct, 0, nil
	}
	per := len(ps.Reference) / len(got)
	for i, out := range got {
		if len(out) != per {
			return 0, 0, fmt.Errorf("probe case %d: output %q has %d values, reference has %d", i, ps.Output, len(out), per)
		}
		ok := true
		for j, x := range out {
			d := math.Abs(x - ps.Reference[i*per+j])
			if math.IsNaN(d) {
				d = math.Inf(1)
			}
			maxAbs = max(maxAbs, d)
			if d > ps.Tolerance {
				ok = false
			}
		}
		if ok {
			correct++
		}
	}
	return correct, maxAbs, nil
}

// predicted is a classification case's predicted label: the value itself for a single
// output (a label; it must be a whole number, as converting 0.7 or NaN to an integer
// would make up a label: int64(NaN) is 0 on arm64), the index of the largest value for
// several (scores; any NaN among them makes the case unscorable, as argmax would
// otherwise pick index 0 for a NaN in front). ok is false when there is no prediction,
// and the case is then never correct.
func predicted(out []float64) (label int64, ok bool) {
	for _, x := range out {
		if math.IsNaN(x) {
			return 0, false
		}
	}
	if len(out) == 1 {
		x := out[0]
		if math.IsInf(x, 0) || x != math.Trunc(x) || x < math.MinInt64 || x >= math.MaxInt64 {
			return 0, false
		}
		return int64(x), true
	}
	return int64(argmax(out)), true
}

func argmax(xs []float64) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}

// Decide applies commit gates to a probe's measures and returns the gates that failed
// (none means pass). Nil gates and a zero gate are no gate. It fails closed: a gate on a
// measure that was not taken (peak RSS unavailable) fails, a NaN measure fails every
// gate on it, and gates that cannot be compared (NaN, infinite, negative) fail the trial
// whatever was measured. Decide is pure; the runtime calls it at the end of a probe, and
// anyone holding a report and gates (the agent, with the stricter of two gate sets) can call it
// again and get the same answer.
func Decide(g *artifact.Gates, rep ProbeReport) []string {
	if g == nil {
		return nil
	}
	if err := g.Validate(); err != nil {
		// A gate that cannot be compared (NaN, infinite, negative) fails: comparisons
		// with NaN are false, so it would otherwise pass everything.
		return []string{"gates cannot be applied: " + err.Error()}
	}
	var fails []string
	if g.MinAccuracy > 0 && !(rep.Accuracy >= g.MinAccuracy) {
		fails = append(fails, fmt.Sprintf("accuracy %.4f < min_accuracy %.4f", rep.Accuracy, g.MinAccuracy))
	}
	if g.MaxAbsError > 0 && !(rep.MaxAbsError <= g.MaxAbsError) {
		fails = append(fails, fmt.Sprintf("max_abs_error %g > %g", rep.MaxAbsError, g.MaxAbsError))
	}
	if g.MaxP99Ms > 0 && !(rep.P99Ms <= g.MaxP99Ms) {
		fails = append(fails, fmt.Sprintf("p99 %.3f ms > max_p99_ms %g", rep.P99Ms, g.MaxP99Ms))
	}
	if g.MaxRSSMB > 0 {
		switch {
		case !(rep.PeakRSSMB > 0):
			fails = append(fails, "peak RSS was not measured but max_rss_mb is gated")
		case rep.PeakRSSMB > g.MaxRSSMB:
			fails = append(fails, fmt.Sprintf("peak RSS %.1f MB > max_rss_mb %g", rep.PeakRSSMB, g.MaxRSSMB))
		}
	}
	return fails
}
