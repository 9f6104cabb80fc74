package runtime

import (
	"encoding/json"
	"fmt"
	"math"
	"sync"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// BaselineKey is the ONNX metadata_props key of a model's drift baseline: JSON
// {"features":[{"name":…,"mean":…,"var":…}, …]}, one entry per element of the last axis
// of the model's first input, computed on the training inputs.
const BaselineKey = "edgeward.baseline"

// Baseline is the training-time distribution of a model's input features.
type Baseline struct {
	Features []FeatureBaseline `json:"features"`
}

// FeatureBaseline is one feature's training mean and variance.
type FeatureBaseline struct {
	Name string  `json:"name"`
	Mean float64 `json:"mean"`
	Var  float64 `json:"var"`
}

// ParseBaseline reads a BaselineKey value.
func ParseBaseline(s string) (*Baseline, error) {
	var b Baseline
	if err := json.Unmarshal([]byte(s), &b); err != nil {
		return nil, fmt.Errorf("drift baseline: %w", err)
	}
	if len(b.Features) == 0 {
		return nil, fmt.Errorf("drift baseline: no features")
	}
	return &b, nil
}

// Moments are running per-feature mean and variance (Welford's algorithm). The zero
// value is empty; Add sizes it on first use. It is not safe for concurrent use.
type Moments struct {
	N    int64
	Mean []float64
	m2   []float64
	// Skipped counts the rows left out for a value that is not finite or beyond
	// maxDriftValue in magnitude.
	Skipped int64
}

// maxDriftValue bounds the magnitude of a value the moments take in: squared and
// summed over a billion rows it stays finite. A NaN or an infinity, which any client may
// send, made the moments NaN for the rest of the version's life, and the drift report
// unencodable (a 500 at every request, and the model's drift gone from the check-ins:
// found from outside, 2 Dec).
const maxDriftValue = 1e100

// Add folds one row (one value per feature) in. Rows of another width are ignored;
// rows with a value not finite or beyond maxDriftValue are counted in Skipped.
func (m *Moments) Add(row []float64) {
	if m.Mean == nil {
		m.Mean, m.m2 = make([]float64, len(row)), make([]float64, len(row))
	}
	if len(row) != len(m.Mean) {
		return
	}
	for _, x := range row {
		if !(math.Abs(x) <= maxDriftValue) { // NaN fails every comparison
			m.Skipped++
			return
		}
	}
	m.N++
	for i, x := range row {
		d := x - m.Mean[i]
		m.Mean[i] += d / float64(m.N)
		m.m2[i] += d * (x - m.Mean[i])
	}
}

// Var is the population variance of feature i.
func (m *Moments) Var(i int) float64 {
	if m.N == 0 {
		return 0
	}
	return m.m2[i] / float64(m.N)
}

// Compare is the pure drift decision: served moments against a baseline, flagging
// features whose mean moved more than threshold baseline deviations (zero means 3) or
// whose variance changed more than fourfold. Fewer rows than minRows flag nothing.
func Compare(m *Moments, b *Baseline, threshold float64, minRows int64) ([]runtimeapi.FeatureDrift, []string) {
	if threshold <= 0 {
		threshold = 3
	}
	var out []runtimeapi.FeatureDrift
	var drifted []string
	for i, f := range b.Features {
		fd := runtimeapi.FeatureDrift{Name: f.Name, BaselineMean: f.Mean, BaselineVar: f.Var}
		if i < len(m.Mean) {
			fd.Mean, fd.Var = m.Mean[i], m.Var(i)
		}
		if f.Var > 0 {
			fd.MeanShift = finite((fd.Mean - f.Mean) / math.Sqrt(f.Var))
			fd.VarRatio = finite(fd.Var / f.Var)
		}
		out = append(out, fd)
		if m.N >= minRows && m.N > 0 && (math.Abs(fd.MeanShift) > threshold || fd.VarRatio > 4 || fd.VarRatio < 0.25) {
			drifted = append(drifted, f.Name)
		}
	}
	return out, drifted
}

// finite is x with an infinity as the largest float of its sign, and NaN as 0, so that a
// report always encodes (JSON has neither); a baseline variance near zero can make a
// ratio overflow.
func finite(x float64) float64 {
	switch {
	case math.IsNaN(x):
		return 0
	case math.IsInf(x, 1):
		return math.MaxFloat64
	case math.IsInf(x, -1):
		return -math.MaxFloat64
	}
	return x
}

// drift is a model version's running input statistics; safe for concurrent use.
type drift struct {
	baseline *Baseline
	input    string // the model input whose last axis holds the features
	mu       sync.Mutex
	moments  Moments
}

// observe folds the feature rows of a request's inputs in (FP32/FP64 inputs only).
func (d *drift) observe(inputs []*Input) {
	for _, in := range inputs {
		if in.Name != d.input || len(in.Shape) == 0 || !isFloat(in.Datatype) {
			continue
		}
		w := int(in.Shape[len(in.Shape)-1])
		if w != len(d.baseline.Features) {
			return
		}
		var buf [16]float64
		row := buf[:0]
		if w > len(buf) {
			row = make([]float64, 0, w)
		}
		d.mu.Lock()
		for lo := 0; lo+w <= in.n; lo += w {
			row = row[:0]
			for k := range w {
				row = append(row, in.float(in.Datatype, lo+k))
			}
			d.moments.Add(row)
		}
		d.mu.Unlock()
	}
}

func isFloat(dt runtimeapi.Datatype) bool {
	return dt == runtimeapi.FP32 || dt == runtimeapi.FP64 || dt == runtimeapi.FP16 || dt == runtimeapi.BF16
}

func (d *drift) report(name, version string) runtimeapi.DriftReport {
	d.mu.Lock()
	m := Moments{N: d.moments.N, Mean: append([]float64(nil), d.moments.Mean...), m2: append([]float64(nil), d.moments.m2...), Skipped: d.moments.Skipped}
	d.mu.Unlock()
	feats, drifted := Compare(&m, d.baseline, 0, 30)
	return runtimeapi.DriftReport{Model: name, Version: version, Rows: m.N, SkippedRows: m.Skipped, Features: feats, Drifted: drifted}
}

// Drift reports a loaded version's served inputs against its baseline ("" for the
// default version). A model without a baseline in its metadata is ErrNotFound.
func (r *Runtime) Drift(name, version string) (runtimeapi.DriftReport, error) {
	m, err := r.acquire(name, version)
	if err != nil {
		return runtimeapi.DriftReport{}, err
	}
	defer m.inflight.Done()
	if m.drift == nil {
		return runtimeapi.DriftReport{}, fmt.Errorf("%w: model %s %s has no %s metadata", runtimeapi.ErrNotFound, m.name, m.version, BaselineKey)
	}
	return m.drift.report(m.name, m.version), nil
}
