package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// irisAccuracy is the measured accuracy of the onnxruntime_go test_data random forest on
// all 150 rows of the real Iris data set (it was trained on a random 75% split of it).
const irisAccuracy = 148.0 / 150

func TestIrisProbe(t *testing.T) {
	r := newTestRuntime(t)
	info := loadIris(t, r, "1.0.0")
	if len(info.Inputs) != 1 || info.Inputs[0].Name != "X" || info.Inputs[0].Datatype != runtimeapi.FP32 {
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

// TestIrisHTTP serves the whole Iris data set in one request over HTTP, nested rows as
// in the probe file, and checks the labels against the data set's.
func TestIrisHTTP(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	ps := readProbeSet(t, "testdata/probes/iris/1.0.0.json")
	body, err := json.Marshal(runtimeapi.InferRequest{Inputs: ps.Inputs, Outputs: []runtimeapi.RequestOutput{{Name: "output_label"}}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.Post(srv.URL+"/v2/models/iris/infer", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var ir runtimeapi.InferResponse
	if err := json.NewDecoder(resp.Body).Decode(&ir); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("infer = %d, %v", resp.StatusCode, err)
	}
	var labels []int64
	if err := json.Unmarshal(ir.Outputs[0].Data, &labels); err != nil || len(labels) != len(ps.Labels) {
		t.Fatalf("labels = %s (%v); want %d", ir.Outputs[0].Data, err, len(ps.Labels))
	}
	correct := 0
	for i, l := range labels {
		if l == ps.Labels[i] {
			correct++
		}
	}
	if got := float64(correct) / float64(len(labels)); got != irisAccuracy {
		t.Errorf("iris accuracy over HTTP = %v (%d/%d); want %v", got, correct, len(labels), irisAccuracy)
	}
}
