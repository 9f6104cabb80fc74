package runtimeapi

import (
	"encoding/json"
	"errors"
	"math"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestDecide(t *testing.T) {
	good := ProbeReport{Accuracy: 0.97, MaxAbsError: 0.01, P99Ms: 2, PeakRSSMB: 100}
	nan := math.NaN()
	for _, tc := range []struct {
		name  string
		gates *artifact.Gates
		rep   ProbeReport
		want  int // failed gates
	}{
		{"nil gates pass anything", nil, ProbeReport{Accuracy: 0}, 0},
		{"zero gates pass anything", &artifact.Gates{}, ProbeReport{Accuracy: 0, PeakRSSMB: 0}, 0},
		{"all within", &artifact.Gates{MinAccuracy: 0.95, MaxAbsError: 0.02, MaxP99Ms: 5, MaxRSSMB: 256}, good, 0},
		{"accuracy equal to the gate passes", &artifact.Gates{MinAccuracy: 0.97}, good, 0},
		{"accuracy below", &artifact.Gates{MinAccuracy: 0.98}, good, 1},
		{"p99 above", &artifact.Gates{MaxP99Ms: 1.5}, good, 1},
		{"abs error above", &artifact.Gates{MaxAbsError: 0.001}, good, 1},
		{"rss above", &artifact.Gates{MaxRSSMB: 50}, good, 1},
		{"rss not measured fails closed", &artifact.Gates{MaxRSSMB: 256}, ProbeReport{}, 1},
		{"NaN measures fail every gate on them", &artifact.Gates{MinAccuracy: 0.5, MaxAbsError: 1, MaxP99Ms: 5, MaxRSSMB: 256},
			ProbeReport{Accuracy: nan, MaxAbsError: nan, P99Ms: nan, PeakRSSMB: nan}, 4},
		{"every gate fails", &artifact.Gates{MinAccuracy: 0.99, MaxAbsError: 0.001, MaxP99Ms: 1, MaxRSSMB: 10}, good, 4},
	} {
		if got := Decide(tc.gates, tc.rep); len(got) != tc.want {
			t.Errorf("%s: Decide(%+v, %+v) = %q; want %d failures", tc.name, tc.gates, tc.rep, got, tc.want)
		}
	}
}

func tensor(name string, shape []int64, data string) RequestTensor {
	return RequestTensor{Name: name, Datatype: FP32, Shape: shape, Data: json.RawMessage(data)}
}

func TestCheck(t *testing.T) {
	x := tensor("x", []int64{3, 2}, "[1,2,3,4,5,6]")
	for _, tc := range []struct {
		name  string
		ps    ProbeSet
		cases int // 0: invalid
	}{
		{"labels", ProbeSet{Inputs: []RequestTensor{x}, Output: "y", Labels: []int64{0, 1, 0}}, 3},
		{"reference", ProbeSet{Inputs: []RequestTensor{x}, Output: "y", Reference: []float64{1, 2, 3, 4, 5, 6}}, 3},
		{"no inputs", ProbeSet{Output: "y", Labels: []int64{0}}, 0},
		{"no output", ProbeSet{Inputs: []RequestTensor{x}, Labels: []int64{0, 1, 0}}, 0},
		{"label count", ProbeSet{Inputs: []RequestTensor{x}, Output: "y", Labels: []int64{0, 1}}, 0},
		{"reference does not split", ProbeSet{Inputs: []RequestTensor{x}, Output: "y", Reference: []float64{1, 2}}, 0},
		{"neither labels nor reference", ProbeSet{Inputs: []RequestTensor{x}, Output: "y"}, 0},
		{"unknown datatype", ProbeSet{Inputs: []RequestTensor{{Name: "x", Datatype: "STRING", Shape: []int64{3}}}, Output: "y", Labels: []int64{0, 1, 0}}, 0},
		{"scalar input", ProbeSet{Inputs: []RequestTensor{tensor("x", nil, "1")}, Output: "y", Labels: []int64{0}}, 0},
		{"inputs disagree on cases", ProbeSet{Inputs: []RequestTensor{x, tensor("z", []int64{2, 1}, "[1,2]")}, Output: "y", Labels: []int64{0, 1, 0}}, 0},
	} {
		n, err := tc.ps.Check()
		switch {
		case tc.cases == 0 && !errors.Is(err, ErrInvalid):
			t.Errorf("%s: Check() = %d, %v; want ErrInvalid", tc.name, n, err)
		case tc.cases > 0 && (err != nil || n != tc.cases):
			t.Errorf("%s: Check() = %d, %v; want %d cases", tc.name, n, err, tc.cases)
		}
	}
}

func TestScore(t *testing.T) {
	labels := &ProbeSet{Output: "y", Labels: []int64{0, 2, 1}}
	// One value per case is the label itself; several are scores whose argmax is the label.
	if c, _, err := Score(labels, [][]float64{{0}, {0.1, 0.2, 0.7}, {2}}); err != nil || c != 2 {
		t.Errorf("Score(labels) = %d, %v; want 2 correct", c, err)
	}
	if _, _, err := Score(labels, [][]float64{{0}, {}, {1}}); err == nil {
		t.Errorf("Score(labels) with an empty output = nil error; want an error")
	}
	// A model that answers NaN (or a fraction, or infinity, where a label belongs) has
	// made no prediction: never correct, whatever the label. argmax picked index 0 for
	// NaN scores, and int64(NaN) is 0 on arm64, so NaN used to be right on every 0 label.
	zeros := &ProbeSet{Output: "y", Labels: []int64{0, 0, 0, 0, 0, 1}}
	nan := math.NaN()
	if c, _, err := Score(zeros, [][]float64{{nan, nan}, {nan, 0.2}, {nan}, {0.4}, {math.Inf(-1)}, {1.0000001}}); err != nil || c != 0 {
		t.Errorf("Score(NaN, fractional and infinite outputs) = %d correct, %v; want 0", c, err)
	}
	if c, _, err := Score(zeros, [][]float64{{0.9, 0.1}, {0.6, nan}, {0}, {-0}, {0}, {1}}); err != nil || c != 5 {
		t.Errorf("Score(scores and labels) = %d correct, %v; want 5 (all but the NaN score)", c, err)
	}
	ref := &ProbeSet{Output: "y", Reference: []float64{1, 2, 3, 4}, Tolerance: 0.1}
	c, maxAbs, err := Score(ref, [][]float64{{1.05, 2}, {3, 4.5}})
	if err != nil || c != 1 || math.Abs(maxAbs-0.5) > 1e-9 {
		t.Errorf("Score(reference) = %d, %g, %v; want 1 correct, max error 0.5", c, maxAbs, err)
	}
	c, maxAbs, err = Score(ref, [][]float64{{math.NaN(), 2}, {3, 4}})
	if err != nil || c != 1 || !math.IsInf(maxAbs, 1) {
		t.Errorf("Score(reference with NaN) = %d, %g, %v; want 1 correct, infinite error", c, maxAbs, err)
	}
	if _, _, err := Score(ref, [][]float64{{1}, {3, 4}}); err == nil {
		t.Errorf("Score(reference) with a short output = nil error; want an error")
	}
}

func TestAPIErrorIs(t *testing.T) {
	for code, want := range map[int]error{404: ErrNotFound, 400: ErrInvalid, 413: ErrInvalid, 409: ErrConflict, 503: ErrUnavailable} {
		err := error(&APIError{Code: code})
		if !errors.Is(err, want) {
			t.Errorf("errors.Is(APIError{%d}, %v) = false; want true", code, want)
		}
		for _, other := range []error{ErrNotFound, ErrInvalid, ErrConflict, ErrUnavailable} {
			if other != want && errors.Is(err, other) {
				t.Errorf("errors.Is(APIError{%d}, %v) = true; want false", code, other)
			}
		}
	}
	if IsConflict(&APIError{Code: 500}) {
		t.Errorf("IsConflict(500) = true; want false")
	}
}

// Decide fails closed on gates it cannot compare (issue 15 item 8): a NaN, infinite or
// negative gate fails the trial however good the measures.
func TestDecideFailsClosedOnUncomparableGates(t *testing.T) {
	good := ProbeReport{Accuracy: 0.99, MaxAbsError: 0.01, P99Ms: 1, PeakRSSMB: 10}
	for _, g := range []artifact.Gates{{MinAccuracy: math.NaN()}, {MaxP99Ms: math.NaN()}, {MaxRSSMB: math.Inf(1)}, {MaxAbsError: -1}} {
		if fails := Decide(&g, good); len(fails) == 0 {
			t.Errorf("Decide(%+v, a good report) passed; want a failure", g)
		}
	}
	if fails := Decide(&artifact.Gates{MinAccuracy: 0.9, MaxP99Ms: 5}, good); len(fails) != 0 {
		t.Errorf("Decide(sane gates, good report) = %v; want pass", fails)
	}
}
