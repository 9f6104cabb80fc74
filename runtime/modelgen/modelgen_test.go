package modelgen

import "testing"

// TestAccuracyInGo checks the trained weights themselves (no ONNX Runtime): the story
// needs 1.0.0 good, 1.1.0 better, 2.0.0 bad on the held-out probe data.
func TestAccuracyInGo(t *testing.T) {
	x, y := Dataset(probeSeed, probeN)
	acc := map[string]float64{}
	for _, s := range Specs() {
		m := Train(s)
		correct := 0
		for i := range x {
			in := []float32{float32(x[i][0]), float32(x[i][1]), float32(x[i][2]), float32(x[i][3])}
			if m.Predict(in) == y[i] {
				correct++
			}
		}
		acc[s.Version] = float64(correct) / float64(len(x))
		t.Logf("version %s: accuracy %.4f", s.Version, acc[s.Version])
	}
	if !(acc["1.1.0"] > acc["1.0.0"] && acc["1.0.0"] >= 0.85 && acc["2.0.0"] < 0.8) {
		t.Errorf("accuracies = %v; want 1.1.0 > 1.0.0 >= 0.85 and 2.0.0 < 0.8", acc)
	}
}
