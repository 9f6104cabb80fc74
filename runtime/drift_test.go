package runtime

import (
	"context"
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"

	"github.com/edgeward/edgeward/runtime/modelgen"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func TestCompare(t *testing.T) {
	base := &Baseline{Features: []FeatureBaseline{{Name: "a", Mean: 0, Var: 1}, {Name: "b", Mean: 10, Var: 4}}}
	moments := func(rows ...[]float64) *Moments {
		var m Moments
		for _, r := range rows {
			m.Add(r)
		}
		return &m
	}
	tests := []struct {
		name    string
		m       *Moments
		minRows int64
		want    []string
	}{
		{"matches baseline", moments([]float64{-1, 8}, []float64{1, 12}), 0, nil},
		{"mean shift on b", moments([]float64{-1, 18}, []float64{1, 22}), 0, []string{"b"}},
		{"variance collapse on a", moments([]float64{0.1, 8}, []float64{0.1, 12}), 0, []string{"a"}},
		{"too few rows", moments([]float64{-1, 18}, []float64{1, 22}), 3, nil},
		{"no rows", moments(), 0, nil},
	}
	for _, tt := range tests {
		_, got := Compare(tt.m, base, 0, tt.minRows)
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: Compare() drifted = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// TestDriftServed serves in-distribution readings, then readings from an overheating
// machine, and checks that only the temperature feature is reported as drifted.
func TestDriftServed(t *testing.T) {
	r := newTestRuntime(t)
	path := filepath.Join(vibrationDir(t), "models", "vibration", "1.1.0.onnx")
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "vibration", Version: "1.1.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	x, _ := modelgen.Dataset(3, 200)
	serve := func(shiftTemp float64) {
		t.Helper()
		for _, row := range x {
			in := NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{row[0], row[1], row[2], row[3] + shiftTemp})
			if _, err := r.Infer(context.Background(), "vibration", "", []Input{in}, nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	serve(0)
	rep, err := r.Drift("vibration", "")
	if err != nil || rep.Rows != 200 || len(rep.Drifted) != 0 {
		t.Fatalf("Drift after in-distribution traffic = %+v, %v; want 200 rows, nothing drifted", rep, err)
	}
	serve(200) // the sensor now reads 200 °C hotter
	rep, err = r.Drift("vibration", "1.1.0")
	if err != nil || !slices.Equal(rep.Drifted, []string{"temp_c"}) {
		t.Errorf("Drift after overheating = %+v, %v; want temp_c drifted", rep, err)
	}
	if _, err := r.Drift("iris", ""); err == nil {
		t.Errorf("Drift(unknown model) = nil error")
	}
}

// TestDriftSkipsNonFiniteRows: a row with a NaN or an infinity, which any client may
// send (over binary tensors or gRPC), is left out of the drift statistics and counted;
// the report still encodes and the control API still answers it. Before, one NaN made
// the moments NaN for the rest of the version's life and GET …/drift answered 500 at
// every request, so the agent's check-ins lost the model's drift (found from outside,
// 2 Dec).
func TestDriftSkipsNonFiniteRows(t *testing.T) {
	r := newTestRuntime(t)
	path := filepath.Join(vibrationDir(t), "models", "vibration", "1.1.0.onnx")
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "vibration", Version: "1.1.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	x, _ := modelgen.Dataset(3, 40)
	for i, row := range x {
		vals := []float64{row[0], row[1], row[2], row[3]}
		switch i {
		case 5:
			vals[1] = math.NaN()
		case 6:
			vals[3] = math.Inf(1)
		case 7:
			vals[0] = math.Inf(-1)
		}
		if _, err := r.Infer(context.Background(), "vibration", "", []Input{NewInput("x", runtimeapi.FP32, []int64{1, 4}, vals)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := r.Drift("vibration", "")
	if err != nil || rep.Rows != 37 || rep.SkippedRows != 3 || len(rep.Drifted) != 0 {
		t.Fatalf("Drift = %+v, %v; want 37 rows, 3 skipped, nothing drifted", rep, err)
	}
	srv := httptest.NewServer(r.ControlHandler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/v2/models/vibration/drift")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var got runtimeapi.DriftReport
	if err := json.NewDecoder(resp.Body).Decode(&got); resp.StatusCode != http.StatusOK || err != nil || got.SkippedRows != 3 {
		t.Fatalf("GET drift = %d, %+v, %v; want 200 with 3 skipped rows", resp.StatusCode, got, err)
	}
	for _, f := range got.Features {
		if math.IsNaN(f.Mean) || math.IsNaN(f.Var) || math.IsNaN(f.MeanShift) || math.IsNaN(f.VarRatio) {
			t.Errorf("feature %+v: NaN in the report", f)
		}
	}
}
