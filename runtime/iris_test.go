package runtime

import (
	"context"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// irisAccuracy is the measured accuracy of the onnxruntime_go test_data random forest on
// all 150 rows of the real Iris data set (it was trained on a random 75% split of it).
const irisAccuracy = 148.0 / 150

func TestIrisProbe(t *testing.T) {
	r := newTestRuntime(t)
	info := loadIris(t, r, "1.0.0")
	if len(info.Inputs) != 1 || info.Inputs[0].Name != "X" || info.Inputs[0].Datatype != FP32 {
		t.Fatalf("iris inputs = %+v; want X FP32", info.Inputs)
	}
	ps := readProbeSet(t, "testdata/probes/iris/1.0.0.json")
	ps.Runs = 150
	rep, err := r.Probe(context.Background(), "iris", "1.0.0", ps, &artifact.Gates{MinAccuracy: 0.95, MaxRSSMB: 4096})
	if err != nil {
		t.Fatalf("Probe: %v", err)
	}
	t.Logf("iris probe: %+v", rep)
	if rep.Accuracy != irisAccuracy {
		t.Errorf("iris accuracy = %v (%d/%d); want %v", rep.Accuracy, rep.Correct, rep.Cases, irisAccuracy)
	}
	if !rep.Pass {
		t.Errorf("iris probe failed gates: %v", rep.Failures)
	}
}
