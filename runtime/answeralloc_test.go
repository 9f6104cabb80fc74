package runtime

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	goruntime "runtime"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestAnswerRefusedBeforeItIsBuilt: a JSON answer that cannot fit under MaxHeldBytes is
// refused while it is encoded, its bytes taken ahead of each piece: the refused request
// allocates less beyond the same request answered in binary than its JSON answer's
// size. Before, the whole answer was built first and then refused: many concurrent
// requests with large JSON outputs allocated past the bound, each its whole answer
// (2 Dec).
func TestAnswerRefusedBeforeItIsBuilt(t *testing.T) {
	r := runtimeServing(t, Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 2 << 20}, "echo", modelgen.EchoOf("FP64"))
	// 800 KB in; in JSON each element is the longest FP64 form, 24 bytes and a comma:
	// an answer of 2.5 MB.
	const n = 100_000
	const answer = 25 * n
	data := make([]byte, 0, 8*n)
	for range n {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(-2.2250738585072014e-308))
	}
	allocated := func(params string, want int) uint64 {
		t.Helper()
		header := fmt.Sprintf(`{"inputs":[{"name":"FP64","shape":[%d],"datatype":"FP64","parameters":{"binary_data_size":%d}}]%s}`, n, len(data), params)
		body, hl := binaryRequest(header, data)
		least := uint64(math.MaxUint64)
		for range 3 {
			var before, after goruntime.MemStats
			goruntime.ReadMemStats(&before)
			rec, _, _ := postBinary(t, r.Handler(), "/v2/models/echo/infer", body, hl)
			goruntime.ReadMemStats(&after)
			if rec.Code != want || (want == 413 && !strings.Contains(rec.Body.String(), "max-held-bytes")) {
				t.Fatalf("answer %q = %d %.200s; want %d", params, rec.Code, rec.Body.String(), want)
			}
			least = min(least, after.TotalAlloc-before.TotalAlloc)
		}
		if used := r.bodies.used.Load(); used != 0 {
			t.Errorf("after the answers %q: %d bytes still held", params, used)
		}
		return least
	}
	bin := allocated(`,"parameters":{"binary_data_output":true}`, 200)
	refused := allocated(``, 413)
	t.Logf("allocated per request: %d B answered in binary, %d B refused in JSON (whose answer is %d B)", bin, refused, answer)
	if refused > bin+answer {
		t.Errorf("the refused JSON answer allocated %d B beyond the binary one; want less than its size, %d B (built before it was refused?)", refused-bin, answer)
	}
}

// TestAnswerReservationsAreEnough: answerBuf reserves each piece at its longest form,
// so the bytes it writes never pass those it took. Every element of each datatype at
// its longest (every FP16 and BF16 value, a sweep of FP32 and FP64 bit patterns, the
// extreme integers, BYTES of control characters and invalid UTF-8), escaped names and
// id: the answer is the JSON it was, and it never wrote past what it took.
func TestAnswerReservationsAreEnough(t *testing.T) {
	le := binary.LittleEndian
	// longest returns the bytes of the element among candidates whose JSON is longest.
	longest := func(dt runtimeapi.Datatype, size int, candidates func(yield func([]byte) bool)) []byte {
		var best []byte
		bestLen := -1
		for c := range candidates {
			o := Output{Datatype: dt, tensorData: tensorData{raw: c, n: 1}}
			if l := len(o.appendJSON(nil, 0, 1)); l > bestLen {
				best, bestLen = append([]byte(nil), c...), l
			}
		}
		return best
	}
	sweep := func(size int, n int) func(yield func([]byte) bool) {
		return func(yield func([]byte) bool) {
			b := make([]byte, size)
			x := uint64(0x9e3779b97f4a7c15)
			for i := range n {
				if size == 2 {
					le.PutUint16(b, uint16(i))
				} else {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					switch size {
					case 4:
						le.PutUint32(b, uint32(x))
					case 8:
						le.PutUint64(b, x)
					}
				}
				if !yield(b) {
					return
				}
			}
		}
	}
	ints := func(vals ...uint64) func(yield func([]byte) bool) {
		return func(yield func([]byte) bool) {
			for _, v := range vals {
				if !yield(le.AppendUint64(nil, v)) {
					return
				}
			}
		}
	}
	type elem struct {
		dt   runtimeapi.Datatype
		size int
		raw  []byte
	}
	elems := []elem{
		{runtimeapi.FP16, 2, longest(runtimeapi.FP16, 2, sweep(2, 1<<16))},
		{runtimeapi.BF16, 2, longest(runtimeapi.BF16, 2, sweep(2, 1<<16))},
		{runtimeapi.FP32, 4, longest(runtimeapi.FP32, 4, sweep(4, 1<<20))},
		{runtimeapi.FP64, 8, longest(runtimeapi.FP64, 8, sweep(8, 1<<20))},
		{runtimeapi.INT8, 1, []byte{0x80}},
		{runtimeapi.UINT8, 1, []byte{0xff}},
		{runtimeapi.INT16, 2, le.AppendUint16(nil, 0x8000)},
		{runtimeapi.UINT16, 2, le.AppendUint16(nil, 0xffff)},
		{runtimeapi.INT32, 4, le.AppendUint32(nil, 0x80000000)},
		{runtimeapi.UINT32, 4, le.AppendUint32(nil, 0xffffffff)},
		{runtimeapi.INT64, 8, longest(runtimeapi.INT64, 8, ints(1<<63))},
		{runtimeapi.UINT64, 8, longest(runtimeapi.UINT64, 8, ints(math.MaxUint64))},
		{runtimeapi.BOOL, 1, []byte{0}},
	}
	const n = 3*jsonChunk + 7 // past several chunks
	var outs []Output
	for _, e := range elems {
		raw := make([]byte, 0, n*e.size)
		for range n {
			raw = append(raw, e.raw...)
		}
		outs = append(outs, Output{Name: "out\u2028\x01" + string(e.dt), Datatype: e.dt, Shape: []int64{math.MinInt64 + 1, n}, tensorData: tensorData{raw: raw, n: n}})
	}
	strs := make([]string, n)
	for i := range strs {
		strs[i] = strings.Repeat("\x01\xff", 40)
	}
	outs = append(outs, Output{Name: "text", Datatype: runtimeapi.BYTES, Shape: []int64{n}, tensorData: tensorData{strs: strs, n: n}})
	for _, bin := range [][]bool{nil, {true, false, true, false, true, false, true, false, true, false, true, false, true, false}} {
		budget := &byteBudget{max: math.MaxInt64}
		a := answerBuf{budget: budget}
		hl, err := a.encode("m\x7f", "v\"1", strings.Repeat("\x00", 100), outs, bin)
		if err != nil {
			t.Fatal(err)
		}
		if a.overran || int64(len(a.b)) > a.taken || int64(cap(a.b)) > a.taken || budget.used.Load() != a.taken {
			t.Errorf("binary %v: wrote %d bytes in a buffer of %d, took %d (budget used %d), a piece written past its reservation: %v", bin != nil, len(a.b), cap(a.b), a.taken, budget.used.Load(), a.overran)
		}
		var v struct {
			Outputs []struct {
				Name string
				Data []any
			}
		}
		if err := json.Unmarshal(a.b[:hl], &v); err != nil || len(v.Outputs) != len(outs) {
			t.Fatalf("binary %v: the answer's JSON does not decode: %v\n%.300s", bin != nil, err, a.b)
		}
		for i, o := range v.Outputs {
			if o.Name != outs[i].Name || (bin == nil || !bin[i]) && len(o.Data) != n {
				t.Errorf("binary %v: output %d = %q with %d elements; want %q with %d", bin != nil, i, o.Name, len(o.Data), outs[i].Name, n)
			}
		}
	}
}
