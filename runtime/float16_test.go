package runtime

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"testing"

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
