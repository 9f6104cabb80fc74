package runtime

import (
	"slices"
	"sync/atomic"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// maxBindingBytes bounds the input and output bytes of one binding. Reuse saves a fixed
// few microseconds of cgo calls per run, which matters for small tensors only; larger
// ones are left to the per-run path so that idle bindings do not hold much memory.
const maxBindingBytes = 64 << 10

// bindingPool is how many bindings a model keeps between runs: enough for the runs of a
// small device's cores at once.
const bindingPool = 4

// signature is the input shapes of a run (in the model's input order) and the output
// shapes (in the model's output order) that a successful run with those inputs produced.
type signature struct {
	ins, outs [][]int64
}

// matches reports whether ordered has the signature's input shapes.
func (s *signature) matches(ordered []*Input) bool {
	if len(ordered) != len(s.ins) {
		return false
	}
	for i, in := range ordered {
		if !slices.Equal(in.Shape, s.ins[i]) {
			return false
		}
	}
	return true
}

// binding is a set of ORT tensors over Go buffers, one per input and per output of a
// model, shaped by one signature and reused from run to run. Without it every run
// creates its input tensors and lets ORT allocate its outputs, which onnxruntime_go then
// wraps; for the Iris model those cgo calls are about 3.5 µs of a 5.5 µs run (perf,
// docs/BENCHMARKS.md). A binding is used by one run at a time.
//
// The output shapes come from an earlier run with the same input shapes. ORT checks a
// bound output's shape against the one its kernel computes and fails the run on a
// mismatch (a model whose output shapes depend on the input values), so a wrong guess
// is an error, never a truncated result; runWith then runs again without the binding
// and stops binding that model.
type binding struct {
	sig     *signature
	ins     []ort.Value
	inBufs  [][]byte
	outs    []ort.Value
	outBufs [][]byte
}

// bindable reports whether the model's tensors can be bound: all numeric (ORT owns the
// memory of string tensors).
func (m *Model) bindable() bool {
	for _, t := range m.inputs {
		if t.Datatype == runtimeapi.BYTES {
			return false
		}
	}
	for _, t := range m.outputs {
		if t.Datatype == runtimeapi.BYTES {
			return false
		}
	}
	return true
}

// alignedBytes returns n zero bytes whose start is 8-byte aligned, as the elements of
// every served datatype need.
func alignedBytes(n int) []byte {
	if n == 0 {
		return []byte{}
	}
	words := make([]uint64, (n+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&words[0])), n)
}

// newBinding creates the tensors of sig for m. The caller has checked the total size.
func (m *Model) newBinding(sig *signature) (*binding, error) {
	b := &binding{sig: sig}
	add := func(meta runtimeapi.TensorMeta, shape []int64, vals *[]ort.Value, bufs *[][]byte) error {
		buf := alignedBytes(int(ort.NewShape(shape...).FlattenedSize()) * meta.Datatype.Size())
		t, err := ort.NewCustomDataTensor(ort.NewShape(shape...), buf, elemTypes[meta.Datatype])
		if err != nil {
			return err
		}
		*vals = append(*vals, t)
		*bufs = append(*bufs, buf)
		return nil
	}
	for i, meta := range m.inputs {
		if err := add(meta, sig.ins[i], &b.ins, &b.inBufs); err != nil {
			b.destroy()
			return nil, err
		}
	}
	for i, meta := range m.outputs {
		if err := add(meta, sig.outs[i], &b.outs, &b.outBufs); err != nil {
			b.destroy()
			return nil, err
		}
	}
	return b, nil
}

func (b *binding) destroy() {
	for _, t := range b.ins {
		t.Destroy()
	}
	for _, t := range b.outs {
		t.Destroy()
	}
}

// bindings is a model's reuse state: the signature of its last successful unbound run
// and the idle bindings. The zero value binds nothing until a run is learned.
type bindings struct {
	off     atomic.Bool // the model's output shapes depend on more than its input shapes
	learned atomic.Pointer[signature]
	idle    chan *binding
}

// take returns an idle binding for ordered's shapes, a new one if the last learned run
// had them, or nil (run unbound). An idle binding of other shapes is destroyed: the
// traffic has moved on.
func (m *Model) takeBinding(ordered []*Input) *binding {
	if m.binds.idle == nil || m.binds.off.Load() {
		return nil
	}
	select {
	case b := <-m.binds.idle:
		if b.sig.matches(ordered) {
			return b
		}
		b.destroy()
	default:
	}
	sig := m.binds.learned.Load()
	if sig == nil || !sig.matches(ordered) {
		return nil
	}
	b, err := m.newBinding(sig)
	if err != nil {
		return nil // the unbound run reports any real problem
	}
	return b
}

// putBinding keeps b for the next run, or destroys it when enough are idle.
func (m *Model) putBinding(b *binding) {
	select {
	case m.binds.idle <- b:
	default:
		b.destroy()
	}
}

// learn records the shapes of a successful unbound run, when they are small enough to
// bind and differ from the last learned ones.
func (m *Model) learn(ordered []*Input, outs []ort.Value) {
	if m.binds.idle == nil || m.binds.off.Load() {
		return
	}
	if old := m.binds.learned.Load(); old != nil && old.matches(ordered) {
		return
	}
	sig := &signature{ins: make([][]int64, len(ordered)), outs: make([][]int64, len(outs))}
	size := 0
	for i, in := range ordered {
		sig.ins[i] = slices.Clone(in.Shape)
		size += len(in.raw)
	}
	for i, o := range outs {
		if o == nil {
			return
		}
		sig.outs[i] = []int64(o.GetShape().Clone())
		size += int(o.GetShape().FlattenedSize()) * m.outputs[i].Datatype.Size()
	}
	if size > maxBindingBytes {
		return
	}
	m.binds.learned.Store(sig)
}

// closeBindings destroys the idle bindings; the model runs no more.
func (m *Model) closeBindings() {
	if m.binds.idle == nil {
		return
	}
	for {
		select {
		case b := <-m.binds.idle:
			b.destroy()
		default:
			return
		}
	}
}

// boundOutput copies output i of a bound run into new memory: the response outlives the
// binding's next run.
func (b *binding) output(meta runtimeapi.TensorMeta, i int) Output {
	shape := slices.Clone(b.sig.outs[i])
	raw := slices.Clone(b.outBufs[i])
	return Output{Name: meta.Name, Datatype: meta.Datatype, Shape: shape, tensorData: tensorData{raw: raw, n: len(raw) / meta.Datatype.Size()}}
}
