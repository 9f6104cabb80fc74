package runtime

import (
	"context"
	"errors"
	goruntime "runtime"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// decodedSize is what inferDecodeCost must cover of a decoded request: each input's
// elements at their Go size (BYTES at stringElementBytes beside their bytes) and the
// raw contents.
func decodedSize(req *inference.ModelInferRequest) (size int64, elements []int64) {
	for _, raw := range req.GetRawInputContents() {
		size += int64(len(raw))
	}
	for _, in := range req.GetInputs() {
		c := in.GetContents()
		n := int64(len(c.GetBoolContents()) + len(c.GetIntContents()) + len(c.GetInt64Contents()) + len(c.GetUintContents()) +
			len(c.GetUint64Contents()) + len(c.GetFp32Contents()) + len(c.GetFp64Contents()) + len(c.GetBytesContents()))
		elements = append(elements, n)
		size += int64(len(c.GetBoolContents())) + 4*int64(len(c.GetIntContents())+len(c.GetUintContents())+len(c.GetFp32Contents())) +
			8*int64(len(c.GetInt64Contents())+len(c.GetUint64Contents())+len(c.GetFp64Contents())+len(in.GetShape()))
		for _, b := range c.GetBytesContents() {
			size += stringElementBytes + int64(len(b))
		}
	}
	return size, elements
}

func bytesInput(n int) *inference.ModelInferRequest_InferInputTensor {
	elems := make([][]byte, n)
	for i := range elems {
		elems[i] = []byte{'a'}
	}
	return &inference.ModelInferRequest_InferInputTensor{Name: "BYTES", Datatype: "BYTES", Shape: []int64{int64(n)},
		Contents: &inference.InferTensorContents{BytesContents: elems}}
}

// TestInferDecodeCost: the estimate covers what decoding allocates for each kind of
// content, counts elements exactly (a 4-million-element FP32 input is not taken for
// more, nor refused), and refuses an input over the element bound by its name.
func TestInferDecodeCost(t *testing.T) {
	fp32 := make([]float32, 4<<20)
	int64s := make([]int64, 1000)
	for i := range int64s {
		int64s[i] = int64(i) << 40
	}
	for _, tt := range []struct {
		name string
		req  *inference.ModelInferRequest
		max  int64 // the estimate's most, beyond decodedSize (0: no check)
	}{
		{"fp32, 4 Mi elements", &inference.ModelInferRequest{Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 4 << 20},
			Contents: &inference.InferTensorContents{Fp32Contents: fp32}}}}, 1 << 10},
		{"int64, large varints", &inference.ModelInferRequest{Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "INT64", Shape: []int64{1000},
			Contents: &inference.InferTensorContents{Int64Contents: int64s, BoolContents: []bool{true, false}}}}}, 1 << 10},
		{"100,000 one-byte BYTES", &inference.ModelInferRequest{Inputs: []*inference.ModelInferRequest_InferInputTensor{bytesInput(100_000)}}, 1 << 10},
		{"raw contents, parameters, outputs", &inference.ModelInferRequest{ModelName: "m", Id: "x",
			Parameters: map[string]*inference.InferParameter{"a": {}, "b": {ParameterChoice: &inference.InferParameter_StringParam{StringParam: "v"}}},
			Inputs:     []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{2}, Parameters: map[string]*inference.InferParameter{"p": {}}}},
			Outputs:    []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "Y"}}, RawInputContents: [][]byte{make([]byte, 8)}}, 0},
	} {
		b, err := proto.Marshal(tt.req)
		if err != nil {
			t.Fatal(err)
		}
		cost, err := inferDecodeCost(b, 4<<20)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		want, _ := decodedSize(tt.req)
		if cost < want || tt.max > 0 && cost > want+tt.max {
			t.Errorf("%s: estimate %d; want at least %d and at most %d more", tt.name, cost, want, tt.max)
		}
	}
	b, _ := proto.Marshal(&inference.ModelInferRequest{Inputs: []*inference.ModelInferRequest_InferInputTensor{bytesInput(2), bytesInput(1001)}})
	if _, err := inferDecodeCost(b, 1000); !errors.Is(err, runtimeapi.ErrInvalid) || !strings.Contains(err.Error(), `input "BYTES": 1001 elements, at most 1000 allowed`) {
		t.Errorf("an input of 1,001 elements under a bound of 1,000: %v; want ErrInvalid naming it", err)
	}
}

// TestGRPCDecodeBoundedBeforehand: a ModelInfer message whose decoding would pass the
// byte budget is refused (errNoRoom: UNAVAILABLE, as over HTTP) without being decoded,
// allocating next to nothing; one that fits decodes whole, and the budget is given back
// either way. Before, protobuf decoded every message first: four 15 MB messages of 5
// million one-byte BYTES elements took the runtime from 47 MB to 1.88 GB.
func TestGRPCDecodeBoundedBeforehand(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 4 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	for _, c := range []struct {
		n  int
		ok bool
	}{{1000, true}, {100_000, false}} {
		b, err := proto.Marshal(&inference.ModelInferRequest{ModelName: "echo", Inputs: []*inference.ModelInferRequest_InferInputTensor{bytesInput(c.n)}})
		if err != nil {
			t.Fatal(err)
		}
		var before, after goruntime.MemStats
		goruntime.ReadMemStats(&before)
		req, err := r.decodeInfer(&rawInfer{buf: mem.SliceBuffer(b)})
		goruntime.ReadMemStats(&after)
		switch {
		case c.ok && (err != nil || len(req.GetInputs()) != 1 || len(req.Inputs[0].GetContents().GetBytesContents()) != c.n):
			t.Fatalf("%d elements: %v; want the request decoded whole", c.n, err)
		case !c.ok && !errors.Is(err, errNoRoom):
			t.Fatalf("%d elements (%d bytes): %v; want errNoRoom", c.n, len(b), err)
		case !c.ok:
			// Decoded, 100,000 elements take 2.4 MB of slice headers alone.
			if got := after.TotalAlloc - before.TotalAlloc; got > 64<<10 {
				t.Errorf("the refused message allocated %d bytes; want next to nothing", got)
			}
		}
		if got := r.bodies.used.Load(); got != 0 {
			t.Fatalf("after %d elements: %d bytes still taken", c.n, got)
		}
	}
}

// FuzzInferDecodeCost: any bytes may arrive; the estimate never panics, and for a
// message protobuf decodes it covers what decoding holds and counts each input's
// elements against the bound as decoding would.
func FuzzInferDecodeCost(f *testing.F) {
	for _, req := range []*inference.ModelInferRequest{
		{Inputs: []*inference.ModelInferRequest_InferInputTensor{bytesInput(3)}},
		{Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Shape: []int64{2, 2}, Contents: &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}, Uint64Contents: []uint64{1 << 60}}}}},
		{RawInputContents: [][]byte{{1, 2}}, Parameters: map[string]*inference.InferParameter{"k": {}}},
	} {
		b, _ := proto.Marshal(req)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		const bound = 64
		cost, err := inferDecodeCost(b, bound)
		var req inference.ModelInferRequest
		if proto.Unmarshal(b, &req) != nil {
			return
		}
		want, elements := decodedSize(&req)
		over := false
		for _, n := range elements {
			over = over || n > bound
		}
		switch {
		case over != (err != nil):
			t.Fatalf("elements per input %v under a bound of %d: estimate error %v", elements, bound, err)
		case err == nil && cost < want:
			t.Fatalf("estimate %d under the decoded size %d", cost, want)
		}
	})
}
