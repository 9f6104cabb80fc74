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

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Probe runs a probe set against a loaded version (it must be named: probes judge one
// version) and decides gates (nil means no gate: Pass is true). Probes run one at a time
// so that their latencies do not disturb each other; serving continues meanwhile.
// Peak RSS is that of the whole runtime process during the probe or while it loaded
// this version, whichever is higher (LoadPeakRSSMB is the latter).
func (r *Runtime) Probe(ctx context.Context, name, version string, ps *runtimeapi.ProbeSet, gates *artifact.Gates) (runtimeapi.ProbeReport, error) {
	if version == "" {
		return runtimeapi.ProbeReport{}, fmt.Errorf("%w: probe needs a model version", runtimeapi.ErrInvalid)
	}
	m, err := r.acquire(name, version)
	if err != nil {
		return runtimeapi.ProbeReport{}, err
	}
	defer m.inflight.Done()
	cases, err := splitCases(ps, m.maxElements)
	if err != nil {
		return runtimeapi.ProbeReport{}, err
	}
	release, err := r.measure(ctx)
	if err != nil {
		return runtimeapi.ProbeReport{}, fmt.Errorf("probe %s %s: waiting for another probe or a load to end: %w", name, version, err)
	}
	defer release()

	resetPeakRSS()
	warmup := orDefault(ps.Warmup, 10)
	for i := range warmup {
		if _, err := m.run(ctx, cases[i%len(cases)], nil, false); err != nil {
			return runtimeapi.ProbeReport{}, fmt.Errorf("probe %s %s: warm-up: %w", name, version, err)
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
			return runtimeapi.ProbeReport{}, fmt.Errorf("probe %s %s: case %d: %w", name, version, i%len(cases), err)
		}
		if i < len(cases) {
			got[i] = outs[0].Floats()
		}
	}
	rep := runtimeapi.ProbeReport{Model: name, Version: version, Cases: len(cases), Runs: runs}
	rep.Correct, rep.MaxAbsError, err = runtimeapi.Score(ps, got)
	if err != nil {
		return runtimeapi.ProbeReport{}, err
	}
	rep.Accuracy = float64(rep.Correct) / float64(len(cases))
	rep.P50Ms, rep.P99Ms, rep.MeanMs = Latency(lat)
	rep.LoadPeakRSSMB = m.loadPeakRSSMB
	rep.PeakRSSMB = max(peakRSSMB(), m.loadPeakRSSMB)
	rep.Failures = runtimeapi.Decide(gates, rep)
	rep.Pass = len(rep.Failures) == 0
	r.log.Info("probe", "model", name, "version", version, "accuracy", rep.Accuracy,
		"max_abs_error", rep.MaxAbsError, "p50_ms", rep.P50Ms, "p99_ms", rep.P99Ms,
		"peak_rss_mb", rep.PeakRSSMB, "pass", rep.Pass, "failures", rep.Failures)
	return rep, nil
}

// splitCases decodes the probe inputs and cuts them along axis 0 into one input set per
// case.
func splitCases(ps *runtimeapi.ProbeSet, maxElements int) ([][]Input, error) {
	n, err := ps.Check()
	if err != nil {
		return nil, err
	}
	var all []Input
	for _, t := range ps.Inputs {
		v, err := decodeData(t.Data, t.Datatype, maxElements, nil)
		if err != nil {
			return nil, fmt.Errorf("%w: probe input %q: %w", runtimeapi.ErrInvalid, t.Name, err)
		}
		if v.n%n != 0 {
			return nil, fmt.Errorf("%w: probe input %q: %d values do not split into %d cases", runtimeapi.ErrInvalid, t.Name, v.n, n)
		}
		all = append(all, Input{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape, tensorData: v})
	}
	cases := make([][]Input, n)
	for c := range cases {
		for _, in := range all {
			per := in.n / n
			lo, hi := c*per, (c+1)*per
			shape := append([]int64{1}, in.Shape[1:]...)
			v := tensorData{n: per}
			if in.Datatype == runtimeapi.BYTES {
				v.strs = in.strs[lo:hi]
			} else {
				es := in.Datatype.Size()
				v.raw = in.raw[lo*es : hi*es]
			}
			cases[c] = append(cases[c], Input{Name: in.Name, Datatype: in.Datatype, Shape: shape, tensorData: v})
		}
	}
	return cases, nil
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
