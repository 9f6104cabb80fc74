package runtime

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestF64ToSmallRoundsOnce: FP16 and BF16 from a float64 are rounded once, to nearest,
// ties to even: from any FP32 value (exact in float64) they equal the FP32 conversions'
// results, which round once too; and for values FP32 would round first, they are the
// nearest. Before, every JSON number went through FP32 first: 1.000488282 became FP16
// 1.0 instead of the nearest 1.0009765625, BF16 1.0039062501 became 1.0, and FP16
// 65519.999999 was refused as out of range instead of 65504 (found from outside, 2 Dec).
func TestF64ToSmallRoundsOnce(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2_000_000; i++ {
		f := math.Float32frombits(rng.Uint32())
		if f != f {
			continue // NaN: both quiet, payloads differ
		}
		if got, want := f64ToF16(float64(f)), f32ToF16(f); got != want {
			t.Fatalf("f64ToF16(%g) = %#04x; f32ToF16 = %#04x", f, got, want)
		}
		if got, want := f64ToBF16(float64(f)), f32ToBF16(f); got != want {
			t.Fatalf("f64ToBF16(%g) = %#04x; f32ToBF16 = %#04x", f, got, want)
		}
	}
	for _, tc := range []struct {
		tok  string
		dt   runtimeapi.Datatype
		want uint16
		err  bool
	}{
		{"1.000488282", runtimeapi.FP16, 0x3c01, false},   // just above the halfway point to 1.0009765625
		{"1.00048828125", runtimeapi.FP16, 0x3c00, false}, // the halfway point: to even
		{"1.0039062501", runtimeapi.BF16, 0x3f81, false},
		{"1.00390625", runtimeapi.BF16, 0x3f80, false},   // halfway: to even
		{"65519.999999", runtimeapi.FP16, 0x7bff, false}, // below the overflow threshold 65520
		{"65520", runtimeapi.FP16, 0, true},              // at it: infinity, refused
		{"-65504", runtimeapi.FP16, 0xfbff, false},
		{"5.960464477539063e-8", runtimeapi.FP16, 0x0001, false},   // the smallest subnormal
		{"2.98023223876953125e-8", runtimeapi.FP16, 0x0000, false}, // half of it: to even, zero
		{"2.98023224e-8", runtimeapi.FP16, 0x0001, false},          // just above half
		{"6.097555160522461e-5", runtimeapi.FP16, 0x03ff, false},   // the largest subnormal
		{"6.103515625e-5", runtimeapi.FP16, 0x0400, false},         // the smallest normal
		{"-0", runtimeapi.FP16, 0x8000, false},
		{"3.3895313892515355e38", runtimeapi.BF16, 0x7f7f, false}, // the largest finite BF16
		{"3.4e38", runtimeapi.BF16, 0, true},
	} {
		b, err := appendToken(nil, tc.tok, tc.dt)
		if tc.err {
			if err == nil {
				t.Errorf("%s as %s = %x; want out of range", tc.tok, tc.dt, b)
			}
			continue
		}
		if err != nil || len(b) != 2 || binary.LittleEndian.Uint16(b) != tc.want {
			t.Errorf("%s as %s = %x, %v; want %#04x", tc.tok, tc.dt, b, err, tc.want)
		}
	}
}

// TestFP16OutputSizedOtherwiseIsNamed: an FP16 output whose size is not an input's
// dimension (Concat of the input with itself) cannot be allocated before the run; the
// error names the output and why, not only the node ONNX Runtime names (found from
// outside, 2 Dec). The same model in FP32 runs.
func TestFP16OutputSizedOtherwiseIsNamed(t *testing.T) {
	r := newTestRuntime(t)
	for _, dt := range []string{"FP16", "FP32"} {
		path := filepath.Join(t.TempDir(), dt+".onnx")
		if err := os.WriteFile(path, modelgen.Doubled(dt), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "d" + strings.ToLower(dt), Version: "1.0.0", Path: path}); err != nil {
			t.Fatal(err)
		}
	}
	in := NewInput("x", runtimeapi.FP16, []int64{3}, []float64{1, 2, 3})
	_, err := r.Infer(context.Background(), "dfp16", "", []Input{in}, nil)
	if err == nil || !errors.Is(err, runtimeapi.ErrInvalid) && !errors.Is(err, errRun) || !strings.Contains(err.Error(), `output "y"`) || !strings.Contains(err.Error(), "sized before the run") {
		t.Errorf("Infer(FP16 doubled) = %v; want the run's error naming output \"y\" and why", err)
	}
	out, err := r.Infer(context.Background(), "dfp32", "", []Input{NewInput("x", runtimeapi.FP32, []int64{3}, []float64{1, 2, 3})}, nil)
	if err != nil || len(out.Outputs) != 1 || out.Outputs[0].Shape[0] != 6 {
		t.Errorf("Infer(FP32 doubled) = %+v, %v; want 6 elements", out, err)
	}
}
