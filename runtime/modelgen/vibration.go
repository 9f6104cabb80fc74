package modelgen

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
)

// Features are the inputs of the vibration-anomaly model, in order: RMS velocity (mm/s),
// crest factor, kurtosis, bearing temperature (°C). Label 1 is an anomaly.
func Features() [4]string {
	return [4]string{"rms_mm_s", "crest_factor", "kurtosis", "temp_c"}
}

// classStats are the class-conditional means and standard deviations of each feature.
func classStats(anomaly bool) (mean, std [4]float64) {
	if anomaly {
		return [4]float64{2.6, 3.4, 3.9, 49}, [4]float64{1.0, 0.8, 1.5, 8}
	}
	return [4]float64{2.0, 3.0, 3.0, 45}, [4]float64{0.6, 0.4, 0.5, 5}
}

// Dataset draws n labelled sensor readings (30% anomalies), deterministically from seed.
func Dataset(seed uint64, n int) (x [][4]float64, y []int) {
	rng := rand.New(rand.NewPCG(seed, 0x7669627261))
	x, y = make([][4]float64, n), make([]int, n)
	for i := range n {
		anomaly := rng.Float64() < 0.3
		if anomaly {
			y[i] = 1
		}
		mean, std := classStats(anomaly)
		for j := range 4 {
			x[i][j] = mean[j] + std[j]*rng.NormFloat64()
		}
	}
	return x, y
}

// Spec says how one model version is trained.
type Spec struct {
	Version string
	Hidden  int // hidden units
	Epochs  int // full-batch gradient steps
	// Permuted trains on the features in reverse order, as a broken feature pipeline
	// would, while serving takes them in the documented order: a realistic regression
	// whose probe must fail.
	Permuted bool
}

// Specs are the published versions: 1.0.0 good, 1.1.0 better, 2.0.0 degraded.
func Specs() []Spec {
	return []Spec{
		{Version: "1.0.0", Hidden: 2, Epochs: 60},
		{Version: "1.1.0", Hidden: 16, Epochs: 800},
		{Version: "2.0.0", Hidden: 16, Epochs: 800, Permuted: true},
	}
}

// SpecOf returns the spec of a published version.
func SpecOf(version string) (Spec, error) {
	for _, s := range Specs() {
		if s.Version == version {
			return s, nil
		}
	}
	return Spec{}, fmt.Errorf("modelgen: no vibration model version %q", version)
}

const (
	trainSeed = 1
	trainN    = 2000
	probeSeed = 2
	probeN    = 300
)

// Train fits a 4-H-2 MLP with softmax cross-entropy on the training set. Inputs are
// standardised with the training mean and deviation, folded into the first layer so
// the model takes raw sensor values.
func Train(s Spec) *MLP {
	x, y := Dataset(trainSeed, trainN)
	if s.Permuted {
		for i := range x {
			x[i] = [4]float64{x[i][3], x[i][2], x[i][1], x[i][0]}
		}
	}
	mean, std := stats(x)
	z := make([][4]float64, len(x))
	for i := range x {
		for j := range 4 {
			z[i][j] = (x[i][j] - mean[j]) / std[j]
		}
	}
	h := s.Hidden
	rng := rand.New(rand.NewPCG(uint64(h), uint64(s.Epochs)))
	w1, b1 := make([]float64, 4*h), make([]float64, h)
	w2, b2 := make([]float64, h*2), make([]float64, 2)
	for i := range w1 {
		w1[i] = rng.NormFloat64() * math.Sqrt(2.0/4)
	}
	for i := range w2 {
		w2[i] = rng.NormFloat64() * math.Sqrt(2.0/float64(h))
	}
	const lr = 0.5
	hid, gh := make([]float64, h), make([]float64, h)
	for range s.Epochs {
		gw1, gb1 := make([]float64, len(w1)), make([]float64, h)
		gw2, gb2 := make([]float64, len(w2)), make([]float64, 2)
		for i := range z {
			for k := range h {
				a := b1[k]
				for j := range 4 {
					a += z[i][j] * w1[j*h+k]
				}
				hid[k] = max(a, 0)
			}
			var o [2]float64
			for c := range 2 {
				o[c] = b2[c]
				for k := range h {
					o[c] += hid[k] * w2[k*2+c]
				}
			}
			p := softmax(o)
			p[y[i]]-- // dLoss/dlogit
			for c := range 2 {
				gb2[c] += p[c]
				for k := range h {
					gw2[k*2+c] += hid[k] * p[c]
				}
			}
			for k := range h {
				gh[k] = 0
				if hid[k] > 0 {
					gh[k] = p[0]*w2[k*2] + p[1]*w2[k*2+1]
				}
				gb1[k] += gh[k]
				for j := range 4 {
					gw1[j*h+k] += z[i][j] * gh[k]
				}
			}
		}
		n := float64(len(z))
		for i := range w1 {
			w1[i] -= lr * gw1[i] / n
		}
		for i := range b1 {
			b1[i] -= lr * gb1[i] / n
		}
		for i := range w2 {
			w2[i] -= lr * gw2[i] / n
		}
		for i := range b2 {
			b2[i] -= lr * gb2[i] / n
		}
	}
	// Fold standardisation into layer 1: (x-m)/s·W + b = x·(W/s) + (b - Σ m/s·W).
	fw1, fb1 := make([]float32, len(w1)), make([]float32, h)
	for k := range h {
		bias := b1[k]
		for j := range 4 {
			fw1[j*h+k] = float32(w1[j*h+k] / std[j])
			bias -= mean[j] / std[j] * w1[j*h+k]
		}
		fb1[k] = float32(bias)
	}
	return &MLP{Layers: []Layer{
		{In: 4, Out: h, W: fw1, B: fb1},
		{In: h, Out: 2, W: f32(w2), B: f32(b2)},
	}}
}

func softmax(o [2]float64) [2]float64 {
	m := max(o[0], o[1])
	a, b := math.Exp(o[0]-m), math.Exp(o[1]-m)
	return [2]float64{a / (a + b), b / (a + b)}
}

func stats(x [][4]float64) (mean, std [4]float64) {
	for _, r := range x {
		for j := range 4 {
			mean[j] += r[j]
		}
	}
	for j := range 4 {
		mean[j] /= float64(len(x))
	}
	for _, r := range x {
		for j := range 4 {
			d := r[j] - mean[j]
			std[j] += d * d
		}
	}
	for j := range 4 {
		std[j] = math.Sqrt(std[j] / float64(len(x)))
	}
	return mean, std
}

func f32(xs []float64) []float32 {
	out := make([]float32, len(xs))
	for i, x := range xs {
		out[i] = float32(x)
	}
	return out
}

// Predict runs the MLP in Go (float32 like ONNX Runtime) and returns the label.
func (m *MLP) Predict(x []float32) int {
	cur := x
	for i, l := range m.Layers {
		next := make([]float32, l.Out)
		for k := range l.Out {
			a := l.B[k]
			for j := range l.In {
				a += cur[j] * l.W[j*l.Out+k]
			}
			if i < len(m.Layers)-1 {
				a = max(a, 0)
			}
			next[k] = a
		}
		cur = next
	}
	best := 0
	for c := range cur {
		if cur[c] > cur[best] {
			best = c
		}
	}
	return best
}

// Model returns the ONNX bytes of a published version. Its metadata carries the drift
// baseline: the per-feature mean and variance of the training inputs as served.
func Model(version string) ([]byte, error) {
	s, err := SpecOf(version)
	if err != nil {
		return nil, err
	}
	return ModelOf(s), nil
}

// ModelOf returns the ONNX bytes of a model trained to s, named by s.Version: tests make
// versions beyond Specs with it (e.g. 1.1.0's training under another version, whose
// bytes are its own).
func ModelOf(s Spec) []byte {
	version := s.Version
	meta := baselineMeta(version)
	return Train(s).ONNX("vibration_anomaly_"+strings.ReplaceAll(version, ".", "_"), meta,
		[]string{"edgeward.version", "edgeward.baseline"})
}

// baselineMeta is the metadata of a published model: its version and the drift
// baseline, the per-feature mean and variance of the training inputs as served.
func baselineMeta(version string) map[string]string {
	x, _ := Dataset(trainSeed, trainN)
	mean, std := stats(x)
	var b strings.Builder
	b.WriteString(`{"features":[`)
	for j, f := range Features() {
		if j > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":%q,"mean":%g,"var":%g}`, f, mean[j], std[j]*std[j])
	}
	b.WriteString("]}")
	return map[string]string{"edgeward.version": version, "edgeward.baseline": b.String()}
}

// ProbeSet returns the probe set (JSON, the runtime's probe format) of a published
// version: held-out readings (another seed than training) and their true labels. The
// probe set is the same for every version; what changes is how the model scores on it.
func ProbeSet(version string) ([]byte, error) {
	if _, err := SpecOf(version); err != nil {
		return nil, err
	}
	x, y := Dataset(probeSeed, probeN)
	rows := make([][4]float32, len(x))
	for i := range x {
		for j := range 4 {
			rows[i][j] = float32(x[i][j])
		}
	}
	type tensor struct {
		Name     string       `json:"name"`
		Datatype string       `json:"datatype"`
		Shape    []int        `json:"shape"`
		Data     [][4]float32 `json:"data"`
	}
	return json.Marshal(struct {
		Model   string   `json:"model"`
		Version string   `json:"version"`
		Source  string   `json:"source"`
		Inputs  []tensor `json:"inputs"`
		Output  string   `json:"output"`
		Labels  []int    `json:"labels"`
		Warmup  int      `json:"warmup"`
		Runs    int      `json:"runs"`
	}{
		Model: "vibration", Version: version,
		Source: fmt.Sprintf("edgeward modelgen synthetic vibration readings, seed %d, %d rows", probeSeed, probeN),
		Inputs: []tensor{{Name: "x", Datatype: "FP32", Shape: []int{len(rows), 4}, Data: rows}},
		Output: "label", Labels: y, Warmup: 20, Runs: 300,
	})
}

// WriteFiles writes every published version as <dir>/models/vibration/<v>.onnx and its
// probe set as <dir>/probes/vibration/<v>.json (the repository's target layout).
func WriteFiles(dir string) error {
	for _, s := range Specs() {
		m, err := Model(s.Version)
		if err != nil {
			return err
		}
		p, err := ProbeSet(s.Version)
		if err != nil {
			return err
		}
		for path, b := range map[string][]byte{
			filepath.Join(dir, "models", "vibration", s.Version+".onnx"): m,
			filepath.Join(dir, "probes", "vibration", s.Version+".json"): p,
		} {
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return fmt.Errorf("modelgen: %w", err)
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				return fmt.Errorf("modelgen: %w", err)
			}
		}
	}
	return nil
}
