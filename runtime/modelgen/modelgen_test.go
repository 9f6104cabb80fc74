package modelgen

import (
	"math"
	"reflect"
	"slices"
	"testing"
)

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

// TestWide: the wide models classify like 1.1.0 on the held-out probe data (the trained
// units pass through the backbone), and a retrain changes the last layer only.
func TestWide(t *testing.T) {
	x, y := Dataset(probeSeed, probeN)
	s, _ := SpecOf(wideSpec)
	small := Train(s)
	accuracy := func(m *MLP) float64 {
		correct := 0
		for i := range x {
			if m.Predict([]float32{float32(x[i][0]), float32(x[i][1]), float32(x[i][2]), float32(x[i][3])}) == y[i] {
				correct++
			}
		}
		return float64(correct) / float64(len(x))
	}
	want := accuracy(small)
	const width = 256
	base := Wide(width, 0)
	if got := accuracy(base); got != want {
		t.Errorf("Wide(%d, 0) accuracy %.4f; want 1.1.0's %.4f", width, got, want)
	}
	for _, head := range []uint64{1, 2} {
		m := Wide(width, head)
		if got := accuracy(m); got < want-0.02 || got < 0.85 {
			t.Errorf("Wide(%d, %d) accuracy %.4f; want about 1.1.0's %.4f", width, head, got, want)
		}
		for i := range 2 {
			if !slices.Equal(m.Layers[i].W, base.Layers[i].W) || !slices.Equal(m.Layers[i].B, base.Layers[i].B) {
				t.Errorf("Wide(%d, %d): layer %d differs from the base; want the head only retrained", width, head, i)
			}
		}
		changed := 0
		for i, w := range m.Layers[2].W {
			if w != base.Layers[2].W[i] {
				changed++
			}
		}
		if changed != len(base.Layers[2].W) {
			t.Errorf("Wide(%d, %d): %d of the head's %d weights changed; want all", width, head, changed, len(base.Layers[2].W))
		}
	}
	if n := len(WideModel("3.0.0", 1024, 0)); n < 4<<20 || n > 5<<20 {
		t.Errorf("len(WideModel(1024)) = %d; want about 4.2 MB", n)
	}
}

func TestHeScaled(t *testing.T) {
	a, b := HeScaled(1, 2, 64, 512, 10), HeScaled(1, 2, 64, 512, 10)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("HeScaled is not deterministic")
	}
	if reflect.DeepEqual(a, HeScaled(1, 3, 64, 512, 10)) {
		t.Fatal("HeScaled ignores its seed")
	}
	for i, l := range a.Layers {
		var sum, sq float64
		for _, w := range l.W {
			sum, sq = sum+float64(w), sq+float64(w)*float64(w)
		}
		n := float64(len(l.W))
		sd, want := math.Sqrt(sq/n-(sum/n)*(sum/n)), math.Sqrt(2/float64(l.In))
		if math.Abs(sd-want) > 0.05*want {
			t.Errorf("layer %d: weight sd %.4f; want about %.4f (He)", i, sd, want)
		}
		for _, v := range l.B {
			if v != 0 {
				t.Fatalf("layer %d: bias %v; want zero biases", i, v)
			}
		}
	}
}
