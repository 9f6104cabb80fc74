package runtime

import (
	"context"
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
