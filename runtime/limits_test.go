package runtime

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestInferElementLimit: a Go caller (the probe, a benchmark, the agent) that hands the
// runtime a tensor larger than Config.MaxTensorElements is refused before ONNX Runtime
// allocates it; a tensor at the limit runs. (Over HTTP the decoder already bounds the
// data; this is the bound for everything that does not come through it.)
func TestInferElementLimit(t *testing.T) {
	ctx := context.Background()
	r, err := New(Config{LibraryPath: ortLib(t), MaxTensorElements: 8})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { r.Close(ctx) })
	loadIris(t, r, "1.0.0")
	rows := func(n int) []Input {
		return []Input{NewInput("X", runtimeapi.FP32, []int64{int64(n), 4}, make([]float64, 4*n))}
	}
	if _, err := r.Infer(ctx, "iris", "", rows(2), nil); err != nil {
		t.Fatalf("Infer(2×4 = 8 elements, limit 8) = %v; want a result", err)
	}
	_, err = r.Infer(ctx, "iris", "", rows(3), nil)
	if !errors.Is(err, runtimeapi.ErrInvalid) || !strings.Contains(err.Error(), "at most 8") {
		t.Fatalf("Infer(3×4 = 12 elements, limit 8) = %v; want ErrInvalid, at most 8 elements", err)
	}
}
