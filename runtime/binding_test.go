package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// model returns the loaded version for white-box checks of its reuse state.
func (r *Runtime) model(tb testing.TB, name string) *Model {
	tb.Helper()
	m, err := r.acquire(name, "")
	if err != nil {
		tb.Fatal(err)
	}
	m.inflight.Done()
	return m
}

func loadBytes(t *testing.T, r *Runtime, name string, model []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), name+".onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: name, Version: "1.0.0", Path: path}); err != nil {
		t.Fatalf("Load(%s): %v", name, err)
	}
}

// irisRows are Iris rows (setosa, versicolor, virginica) in the model's input shape.
func irisRows(rows ...[4]float64) Input {
	var data []float64
	for _, r := range rows {
		data = append(data, r[:]...)
	}
	return NewInput("X", runtimeapi.FP32, []int64{int64(len(rows)), 4}, data)
}

var (
	setosa     = [4]float64{5.1, 3.5, 1.4, 0.2}
	versicolor = [4]float64{6.4, 3.2, 4.5, 1.5}
	virginica  = [4]float64{6.3, 3.3, 6.0, 2.5}
)

func labels(t *testing.T, res *Result) []int64 {
	t.Helper()
	if len(res.Outputs) != 1 || res.Outputs[0].Name != "output_label" {
		t.Fatalf("outputs = %+v; want output_label only", res.Outputs)
	}
	o := res.Outputs[0]
	out := make([]int64, o.n)
	for i := range out {
		out[i] = o.intAt(o.Datatype, i)
	}
	return out
}

// TestBindingReusesTensorsAcrossRuns: the first run of a shape is unbound and teaches the
// model its output shapes; later runs of that shape reuse one binding, give the same
// answers, and return outputs that the next run does not overwrite. A new batch size is
// learned again.
func TestBindingReusesTensorsAcrossRuns(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	m := r.model(t, "iris")
	ctx := context.Background()
	infer := func(in Input) *Result {
		t.Helper()
		res, err := r.Infer(ctx, "iris", "", []Input{in}, nil)
		if err != nil {
			t.Fatalf("Infer: %v", err)
		}
		return res
	}

	first := infer(irisRows(setosa))
	if m.binds.learned.Load() == nil || len(m.binds.idle) != 0 {
		t.Fatalf("after the first run: learned %v, %d idle; want learned, none idle", m.binds.learned.Load(), len(m.binds.idle))
	}
	bound := infer(irisRows(setosa))
	if len(m.binds.idle) != 1 {
		t.Fatalf("after the second run: %d idle bindings; want 1", len(m.binds.idle))
	}
	if !slices.Equal(labels(t, bound), labels(t, first)) || !slices.Equal(bound.Outputs[0].Shape, first.Outputs[0].Shape) {
		t.Fatalf("bound run = %v %v; unbound = %v %v", bound.Outputs[0].Shape, labels(t, bound), first.Outputs[0].Shape, labels(t, first))
	}
	if got := labels(t, bound); !slices.Equal(got, []int64{0}) {
		t.Fatalf("setosa labelled %v", got)
	}
	b := <-m.binds.idle
	m.binds.idle <- b
	other := infer(irisRows(virginica))
	if got := labels(t, other); !slices.Equal(got, []int64{2}) {
		t.Fatalf("virginica labelled %v through the binding", got)
	}
	if got := labels(t, bound); !slices.Equal(got, []int64{0}) {
		t.Fatalf("the earlier result changed to %v when the binding ran again", got)
	}
	if again := <-m.binds.idle; again != b {
		t.Fatal("the third run did not reuse the idle binding")
	} else {
		m.binds.idle <- again
	}

	// A batch of three: unbound (the idle binding of one row is of other shapes), then
	// learned and bound.
	for range 2 {
		res := infer(irisRows(setosa, versicolor, virginica))
		if got := labels(t, res); !slices.Equal(got, []int64{0, 1, 2}) || !slices.Equal(res.Outputs[0].Shape, []int64{3}) {
			t.Fatalf("batch of three: shape %v labels %v", res.Outputs[0].Shape, got)
		}
	}
	if sig := m.binds.learned.Load(); !slices.Equal(sig.ins[0], []int64{3, 4}) || len(m.binds.idle) != 1 {
		t.Fatalf("learned %v with %d idle; want inputs [3 4] and one idle binding", sig.ins, len(m.binds.idle))
	}
}

// TestBindingEveryNumericDatatype runs each numeric datatype, FP16 and BF16 included,
// through Identity twice with different values: the bound run returns its own values,
// byte for byte.
func TestBindingEveryNumericDatatype(t *testing.T) {
	var dts []string
	for _, c := range echoCases() {
		if c.dt != "BYTES" {
			dts = append(dts, c.dt)
		}
	}
	r := newTestRuntime(t)
	loadBytes(t, r, "echo", modelgen.EchoOf(dts...))
	m := r.model(t, "echo")
	for round := range 3 {
		var inputs []Input
		want := map[string][]byte{}
		for _, c := range echoCases() {
			if c.dt == "BYTES" {
				continue
			}
			data := bytes.Clone(c.bin)
			if round == 2 { // other values, same shapes: the bound run must not echo the last ones
				slices.Reverse(data)
				if c.dt == "BOOL" {
					data = []byte{1, 1, 0}
				}
			}
			inputs = append(inputs, Input{Name: c.dt, Datatype: runtimeapi.Datatype(c.dt), Shape: []int64{3}, tensorData: tensorData{raw: data, n: 3}})
			want[c.dt+"_out"] = data
		}
		res, err := r.Infer(context.Background(), "echo", "", inputs, nil)
		if err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if len(res.Outputs) != len(want) {
			t.Fatalf("round %d: %d outputs; want %d", round, len(res.Outputs), len(want))
		}
		for _, o := range res.Outputs {
			if !bytes.Equal(o.raw, want[o.Name]) || !slices.Equal(o.Shape, []int64{3}) || o.n != 3 {
				t.Errorf("round %d: %s = %x shape %v n %d; want %x shape [3]", round, o.Name, o.raw, o.Shape, o.n, want[o.Name])
			}
		}
	}
	if len(m.binds.idle) != 1 {
		t.Errorf("%d idle bindings after three runs of one shape; want 1", len(m.binds.idle))
	}
}

// TestBindingValueDependentShapes: NonZero's output shape depends on its input's values.
// A bound run whose learned output shape is wrong fails inside ORT; the request still
// gets the right answer (run again unbound), and the model is not bound again.
func TestBindingValueDependentShapes(t *testing.T) {
	r := newTestRuntime(t)
	loadBytes(t, r, "nonzero", modelgen.NonZero())
	m := r.model(t, "nonzero")
	cases := []struct {
		x     []float64
		shape []int64
		idx   []int64
	}{
		{[]float64{0, 1, 2}, []int64{1, 2}, []int64{1, 2}},
		{[]float64{0, 5, 7}, []int64{1, 2}, []int64{1, 2}}, // bound: same shapes
		{[]float64{3, 0, 0}, []int64{1, 1}, []int64{0}},    // bound guess [1 2] is wrong
		{[]float64{4, 4, 4}, []int64{1, 3}, []int64{0, 1, 2}},
	}
	for i, c := range cases {
		res, err := r.Infer(context.Background(), "nonzero", "", []Input{NewInput("x", runtimeapi.FP32, []int64{3}, c.x)}, nil)
		if err != nil {
			t.Fatalf("case %d: %v", i, err)
		}
		o := res.Outputs[0]
		got := make([]int64, o.n)
		for k := range got {
			got[k] = o.intAt(o.Datatype, k)
		}
		if !slices.Equal(o.Shape, c.shape) || !slices.Equal(got, c.idx) {
			t.Errorf("case %d: NonZero(%v) = %v %v; want %v %v", i, c.x, o.Shape, got, c.shape, c.idx)
		}
		if i == 1 && len(m.binds.idle) != 1 {
			t.Fatalf("case 1 did not run bound (%d idle)", len(m.binds.idle))
		}
	}
	if !m.binds.off.Load() {
		t.Error("binding still on after a bound run failed and the same inputs ran unbound")
	}
}

// TestBindingNotForStrings: ORT owns string tensors' memory, so a model with a BYTES
// input or output is never bound.
func TestBindingNotForStrings(t *testing.T) {
	r := newTestRuntime(t)
	loadEchoAll(t, r)
	if m := r.model(t, "echo"); m.binds.idle != nil {
		t.Fatal("a model with BYTES tensors has a binding pool")
	}
}

// TestBindingConcurrentRuns: concurrent requests of one shape each get their own
// answer, so no two runs share a binding.
func TestBindingConcurrentRuns(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	rows := [][4]float64{setosa, versicolor, virginica}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := (g + i) % 3
				res, err := r.Infer(context.Background(), "iris", "", []Input{irisRows(rows[k])}, nil)
				if err != nil {
					errs <- err
					return
				}
				o := res.Outputs[0]
				if got := o.intAt(o.Datatype, 0); got != int64(k) {
					errs <- fmt.Errorf("goroutine %d run %d: row %d labelled %d", g, i, k, got)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if m := r.model(t, "iris"); len(m.binds.idle) == 0 || len(m.binds.idle) > bindingPool {
		t.Errorf("%d idle bindings after concurrent runs; want 1..%d", len(m.binds.idle), bindingPool)
	}
}

// TestNewTensorAlignsItsData: a tensor is never created over misaligned elements (ONNX
// Runtime's kernels read aligned ones): a buffer reused from an earlier request of
// another datatype, here an INT64 element one byte past an 8-byte boundary, is copied
// first; decodeData's own buffers are 8-byte aligned from the start, even small ones.
func TestNewTensorAlignsItsData(t *testing.T) {
	newTestRuntime(t) // ONNX Runtime's environment
	backing := alignedBytes(24)
	raw := backing[1:9]
	binary.LittleEndian.PutUint64(raw, 0x0102030405060708)
	v, err := newTensor(runtimeapi.INT64, []int64{1}, &tensorData{raw: raw, n: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Destroy()
	data := v.(*ort.CustomDataTensor).GetData()
	if uintptr(unsafe.Pointer(&data[0]))%8 != 0 || binary.LittleEndian.Uint64(data) != 0x0102030405060708 {
		t.Fatalf("tensor data at %p (mod 8 = %d), value %x; want an aligned copy of the element", &data[0], uintptr(unsafe.Pointer(&data[0]))%8, data)
	}
	for _, in := range []string{"[1.5,2,3]", "[7]", "[1,2,3,4,5]"} {
		for _, dt := range []runtimeapi.Datatype{runtimeapi.FP32, runtimeapi.UINT8, runtimeapi.INT64} {
			td, err := decodeData([]byte(in), dt, 100, nil)
			if err != nil {
				continue // 1.5 is not an integer
			}
			if p := uintptr(unsafe.Pointer(unsafe.SliceData(td.raw))); p%8 != 0 {
				t.Errorf("decodeData(%s, %s) buffer at %#x, not 8-byte aligned", in, dt, p)
			}
		}
	}
}
