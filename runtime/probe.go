package runtime

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// ProbeSet is the probe data of a model version, published as the TUF target
// probes/<name>/<version>.json. Axis 0 of every input indexes the cases; each case is
// run alone (shape [1, …]) so latency is that of one request.
//
// Classification sets give Labels (one per case): the predicted label is the Output
// value itself when the output has one element per case, else its argmax. Regression
// sets give Reference (the Output's values for all cases, row-major) and Tolerance; a
// case is correct when every value is within Tolerance.
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

// ProbeReport is the outcome of a probe run: the measures and the gate decision.
type ProbeReport struct {
	Model       string   `json:"model"`
	Version     string   `json:"version"`
	Cases       int      `json:"cases"`
	Runs        int      `json:"runs"`
	Correct     int      `json:"correct"`
	Accuracy    float64  `json:"accuracy"`
	MaxAbsError float64  `json:"max_abs_error"`
	P50Ms       float64  `json:"p50_ms"`
	P99Ms       float64  `json:"p99_ms"`
	MeanMs      float64  `json:"mean_ms"`
	PeakRSSMB   float64  `json:"peak_rss_mb"`
	Pass        bool     `json:"pass"`
	Failures    []string `json:"failures,omitempty"`
}

// Probe runs a probe set against a loaded version (it must be named: probes judge one
// version) and decides gates (nil means no gate: Pass is true). Probes run one at a time
// so that their latencies do not disturb each other; serving continues meanwhile.
// Peak RSS is that of the whole runtime process during the probe.
func (r *Runtime) Probe(ctx context.Context, name, version string, ps *ProbeSet, gates *artifact.Gates) (ProbeReport, error) {
	if version == "" {
		return ProbeReport{}, fmt.Errorf("%w: probe needs a model version", ErrInvalid)
	}
	m, err := r.acquire(name, version)
	if err != nil {
		return ProbeReport{}, err
	}
	defer m.inflight.Done()
	cases, err := splitCases(ps, m.maxElements)
	if err != nil {
		return ProbeReport{}, err
	}
	r.probeMu.Lock()
	defer r.probeMu.Unlock()

	resetPeakRSS()
	warmup := orDefault(ps.Warmup, 10)
	for i := range warmup {
		if _, err := m.run(ctx, cases[i%len(cases)], nil, false); err != nil {
			return ProbeReport{}, fmt.Errorf("probe %s %s: warm-up: %w", name, version, err)
		}
	}
	runs := max(orDefault(ps.Runs, 200), len(cases))
	lat := make([]time.Duration, runs)
	got := make([][]float64, len(cases))
	for i := range runs {
		start := r.cfg.now()
		outs, err := m.run(ctx, cases[i%len(cases)], []string{ps.Output}, false)
		lat[i] = r.cfg.now().Sub(start)
		if err != nil {
			return ProbeReport{}, fmt.Errorf("probe %s %s: case %d: %w", name, version, i%len(cases), err)
		}
		if i < len(cases) {
			got[i] = outs[0].Floats()
		}
	}
	rep := ProbeReport{Model: name, Version: version, Cases: len(cases), Runs: runs}
	rep.Correct, rep.MaxAbsError, err = Score(ps, got)
	if err != nil {
		return ProbeReport{}, err
	}
	rep.Accuracy = float64(rep.Correct) / float64(len(cases))
	rep.P50Ms, rep.P99Ms, rep.MeanMs = Latency(lat)
	rep.PeakRSSMB = peakRSSMB()
	rep.Failures = Decide(gates, rep)
	rep.Pass = len(rep.Failures) == 0
	r.log.Info("probe", "model", name, "version", version, "accuracy", rep.Accuracy,
		"max_abs_error", rep.MaxAbsError, "p50_ms", rep.P50Ms, "p99_ms", rep.P99Ms,
		"peak_rss_mb", rep.PeakRSSMB, "pass", rep.Pass, "failures", rep.Failures)
	return rep, nil
}

// splitCases decodes the probe inputs and cuts them along axis 0 into one input set per
// case.
func splitCases(ps *ProbeSet, maxElements int) ([][]Input, error) {
	if len(ps.Inputs) == 0 || ps.Output == "" {
		return nil, fmt.Errorf("%w: probe set needs inputs and an output", ErrInvalid)
	}
	n := int64(-1)
	var all []Input
	for _, t := range ps.Inputs {
		if !knownDatatype(t.Datatype) {
			return nil, fmt.Errorf("%w: probe input %q: datatype %q is not supported", ErrInvalid, t.Name, t.Datatype)
		}
		if len(t.Shape) == 0 || t.Shape[0] < 1 || (n >= 0 && t.Shape[0] != n) {
			return nil, fmt.Errorf("%w: probe input %q: shape %v: axis 0 must count the cases, the same for every input", ErrInvalid, t.Name, t.Shape)
		}
		n = t.Shape[0]
		v, err := decodeData(t.Data, t.Datatype, maxElements)
		if err != nil {
			return nil, fmt.Errorf("%w: probe input %q: %w", ErrInvalid, t.Name, err)
		}
		if int64(v.len())%n != 0 {
			return nil, fmt.Errorf("%w: probe input %q: %d values do not split into %d cases", ErrInvalid, t.Name, v.len(), n)
		}
		all = append(all, Input{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape, values: v})
	}
	switch {
	case len(ps.Labels) > 0 && int64(len(ps.Labels)) != n:
		return nil, fmt.Errorf("%w: probe set has %d cases but %d labels", ErrInvalid, n, len(ps.Labels))
	case len(ps.Labels) == 0 && (len(ps.Reference) == 0 || int64(len(ps.Reference))%n != 0):
		return nil, fmt.Errorf("%w: probe set needs one label per case or reference outputs for all %d cases", ErrInvalid, n)
	}
	cases := make([][]Input, n)
	for c := range cases {
		for _, in := range all {
			per := in.len() / int(n)
			lo, hi := c*per, (c+1)*per
			shape := append([]int64{1}, in.Shape[1:]...)
			v := values{}
			switch {
			case in.F != nil:
				v.F = in.F[lo:hi]
			case in.I != nil:
				v.I = in.I[lo:hi]
			case in.U != nil:
				v.U = in.U[lo:hi]
			default:
				v.B = in.B[lo:hi]
			}
			cases[c] = append(cases[c], Input{Name: in.Name, Datatype: in.Datatype, Shape: shape, values: v})
		}
	}
	return cases, nil
}

// Score compares the output of every case (got[i], flattened) with the probe set's
// expectations and returns how many cases are correct and the largest absolute error
// (regression sets; 0 for classification).
func Score(ps *ProbeSet, got [][]float64) (correct int, maxAbs float64, err error) {
	if len(ps.Labels) > 0 {
		for i, out := range got {
			if len(out) == 0 {
				return 0, 0, fmt.Errorf("probe case %d: empty output %q", i, ps.Output)
			}
			pred := int64(out[0])
			if len(out) > 1 {
				pred = int64(argmax(out))
			}
			if pred == ps.Labels[i] {
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

func argmax(xs []float64) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}

// Latency returns the p50, p99 (nearest rank) and mean of samples, in milliseconds.
func Latency(samples []time.Duration) (p50, p99, mean float64) {
	if len(samples) == 0 {
		return 0, 0, 0
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return ms(s[max(i, 0)])
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return rank(0.50), rank(0.99), ms(sum) / float64(len(s))
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Decide applies commit gates to a probe's measures and returns the gates that failed
// (none means pass). A zero gate is no gate. It fails closed: a gate on a measure that
// was not taken (peak RSS unavailable) fails.
func Decide(g *artifact.Gates, rep ProbeReport) []string {
	if g == nil {
		return nil
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
		case rep.PeakRSSMB <= 0:
			fails = append(fails, "peak RSS was not measured but max_rss_mb is gated")
		case rep.PeakRSSMB > g.MaxRSSMB:
			fails = append(fails, fmt.Sprintf("peak RSS %.1f MB > max_rss_mb %g", rep.PeakRSSMB, g.MaxRSSMB))
		}
	}
	return fails
}

// resetPeakRSS resets the kernel's peak-RSS mark of this process (Linux 4.0+), so that
// the probe measures its own peak rather than the process's lifetime peak. Best effort.
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0)
}

// peakRSSMB is the process's peak resident set size in MiB (VmHWM), or 0 when unknown.
func peakRSSMB() float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte("VmHWM:")); ok {
			f := bytes.Fields(rest)
			if len(f) >= 1 {
				kb, err := strconv.ParseFloat(string(f[0]), 64)
				if err == nil {
					return kb / 1024
				}
			}
		}
	}
	return 0
}
