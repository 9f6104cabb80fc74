package runtime

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Input is one decoded input tensor of an inference request.
type Input struct {
	Name     string
	Datatype runtimeapi.Datatype
	Shape    []int64
	tensorData
}

// NewInput returns an input tensor of a numeric datatype from float64 values (rounded to
// the datatype: to nearest for floats, towards zero for integers); Go callers (probes,
// benchmarks, the agent) use it instead of JSON.
func NewInput(name string, dt runtimeapi.Datatype, shape []int64, data []float64) Input {
	return Input{Name: name, Datatype: dt, Shape: shape, tensorData: encodeFloats(dt, data)}
}

// Model is one loaded version of a model: its ORT session and its signature. Requests
// run on it concurrently; it is closed only after every request that acquired it is
// done.
type Model struct {
	name, version string
	sha256        string
	plainSHA256   string // of the decrypted model, for an encrypted one (issue 18)
	loadedAt      time.Time
	// loadPeakRSSMB is the runtime process's peak resident set while it read this
	// version and created its session (0 when unknown): a probe's peak RSS includes it.
	loadPeakRSSMB float64
	inputs        []runtimeapi.TensorMeta
	outputs       []runtimeapi.TensorMeta // tensor outputs only; others are not served
	session       *ort.DynamicAdvancedSession
	inflight      sync.WaitGroup
	maxElements   int
	drift         *drift // nil without a baseline in the model's metadata
	// runOpts keeps ORT run options for reuse (creating and destroying them is two cgo
	// calls per request); drainAndClose destroys them.
	runOpts chan *ort.RunOptions
	binds   bindings  // tensors reused from run to run (binding.go)
	meter   *runMeter // the Runtime's; nil for a model outside one
	gate    *runGate  // the Runtime's; nil for a model outside one
	// lastLong is whether the previous run took the meter's long-run time or more.
	lastLong atomic.Bool
	// series count its answered requests; unloaded is set, and its series deleted,
	// under the Runtime's write lock, after which its requests are no longer counted.
	series   servedSeries
	unloaded atomic.Bool
}

func newModel(name, version string, data []byte, cfg Config) (*Model, error) {
	ins, outs, err := ort.GetInputOutputInfoWithONNXData(data)
	if err != nil {
		return nil, fmt.Errorf("%w: not a loadable ONNX model: %w", runtimeapi.ErrInvalid, err)
	}
	m := &Model{name: name, version: version, maxElements: cfg.maxElements(), runOpts: make(chan *ort.RunOptions, 16)}
	for _, in := range ins {
		dt, ok := datatypeOf(in.DataType)
		if in.OrtValueType != ort.ONNXTypeTensor || !ok {
			return nil, fmt.Errorf("%w: input %q: %s %s is not supported", runtimeapi.ErrInvalid, in.Name, in.OrtValueType, in.DataType)
		}
		m.inputs = append(m.inputs, runtimeapi.TensorMeta{Name: in.Name, Datatype: dt, Shape: []int64(in.Dimensions.Clone())})
	}
	for _, out := range outs {
		dt, ok := datatypeOf(out.DataType)
		if out.OrtValueType != ort.ONNXTypeTensor || !ok {
			continue // e.g. scikit-learn's sequence-of-maps probabilities
		}
		m.outputs = append(m.outputs, runtimeapi.TensorMeta{Name: out.Name, Datatype: dt, Shape: []int64(out.Dimensions.Clone())})
	}
	if len(m.inputs) == 0 || len(m.outputs) == 0 {
		return nil, fmt.Errorf("%w: model has no servable tensor inputs or outputs", runtimeapi.ErrInvalid)
	}
	if m.bindable() {
		m.binds.idle = make(chan *binding, bindingPool)
	}
	if md, err := ort.GetModelMetadataWithONNXData(data); err == nil {
		s, ok, err := md.LookupCustomMetadataMap(BaselineKey)
		md.Destroy()
		if err == nil && ok {
			b, err := ParseBaseline(s)
			if err != nil {
				return nil, fmt.Errorf("%w: %w", runtimeapi.ErrInvalid, err)
			}
			m.drift = &drift{baseline: b, input: m.inputs[0].Name}
		}
	}
	opts, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("session options: %w", err)
	}
	defer opts.Destroy()
	if err := opts.SetIntraOpNumThreads(orDefault(cfg.IntraOpThreads, 1)); err != nil {
		return nil, fmt.Errorf("intra-op threads: %w", err)
	}
	if err := opts.SetInterOpNumThreads(orDefault(cfg.InterOpThreads, 1)); err != nil {
		return nil, fmt.Errorf("inter-op threads: %w", err)
	}
	inNames := make([]string, len(m.inputs))
	for i, in := range m.inputs {
		inNames[i] = in.Name
	}
	outNames := make([]string, len(m.outputs))
	for i, out := range m.outputs {
		outNames[i] = out.Name
	}
	m.session, err = ort.NewDynamicAdvancedSessionWithONNXData(data, inNames, outNames, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: create session: %w", runtimeapi.ErrInvalid, err)
	}
	return m, nil
}

func (m *Model) info() runtimeapi.ModelInfo {
	return runtimeapi.ModelInfo{
		Name: m.name, Versions: []string{m.version}, Platform: "onnxruntime_onnx",
		Inputs: m.inputs, Outputs: m.outputs, SHA256: m.sha256, PlainSHA256: m.plainSHA256,
	}
}

// drainAndClose waits for the in-flight requests, then destroys the session. If ctx ends
// first it returns ctx's error and the session is destroyed when the last request ends.
func (m *Model) drainAndClose(ctx context.Context) error {
	done := make(chan struct{})
	go func() {
		m.inflight.Wait()
		m.session.Destroy()
		m.closeBindings()
		for {
			select {
			case o := <-m.runOpts:
				o.Destroy()
				continue
			default:
			}
			break
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("unload %s %s: waiting for in-flight requests: %w", m.name, m.version, ctx.Err())
	}
}

// validate checks inputs against the model's signature so that ORT only ever sees
// well-formed tensors. It returns the inputs in the model's order.
func (m *Model) validate(inputs []Input, dst []*Input) ([]*Input, error) {
	if len(inputs) != len(m.inputs) {
		return nil, fmt.Errorf("%w: model %s takes %d inputs, got %d", runtimeapi.ErrInvalid, m.name, len(m.inputs), len(inputs))
	}
	ordered := resize(dst, len(m.inputs))
	for i := range inputs {
		in := &inputs[i]
		j := slices.IndexFunc(m.inputs, func(t runtimeapi.TensorMeta) bool { return t.Name == in.Name })
		if j < 0 {
			return nil, fmt.Errorf("%w: model %s has no input %.64q", runtimeapi.ErrInvalid, m.name, in.Name)
		}
		if ordered[j] != nil {
			return nil, fmt.Errorf("%w: input %.64q given twice", runtimeapi.ErrInvalid, in.Name)
		}
		want := m.inputs[j]
		if in.Datatype != want.Datatype {
			return nil, fmt.Errorf("%w: input %q: datatype %s, model wants %s", runtimeapi.ErrInvalid, in.Name, in.Datatype, want.Datatype)
		}
		if len(in.Shape) != len(want.Shape) {
			return nil, fmt.Errorf("%w: input %q: shape %v has rank %d, model wants %v", runtimeapi.ErrInvalid, in.Name, shapeText(in.Shape), len(in.Shape), want.Shape)
		}
		n := int64(1)
		for k, d := range in.Shape {
			if d < 1 {
				return nil, fmt.Errorf("%w: input %q: dimension %d is %d, want at least 1", runtimeapi.ErrInvalid, in.Name, k, d)
			}
			if want.Shape[k] > 0 && d != want.Shape[k] {
				return nil, fmt.Errorf("%w: input %q: shape %v, model wants %v", runtimeapi.ErrInvalid, in.Name, shapeText(in.Shape), want.Shape)
			}
			if n > math.MaxInt32/d {
				return nil, fmt.Errorf("%w: input %q: shape %v is too large", runtimeapi.ErrInvalid, in.Name, shapeText(in.Shape))
			}
			n *= d
		}
		if n > int64(m.maxElements) {
			return nil, fmt.Errorf("%w: input %q: %d elements, at most %d allowed", runtimeapi.ErrInvalid, in.Name, n, m.maxElements)
		}
		if int64(in.n) != n {
			return nil, fmt.Errorf("%w: input %q: shape %v needs %d elements, data has %d", runtimeapi.ErrInvalid, in.Name, shapeText(in.Shape), n, in.n)
		}
		if !in.consistent(in.Datatype) {
			return nil, fmt.Errorf("%w: input %q: data does not hold %s values", runtimeapi.ErrInvalid, in.Name, in.Datatype)
		}
		for k, s := range in.strs {
			// ONNX Runtime's string tensors are filled from C strings.
			if strings.IndexByte(s, 0) >= 0 {
				return nil, fmt.Errorf("%w: input %q: BYTES element %d holds a NUL byte, which ONNX Runtime strings cannot carry", runtimeapi.ErrInvalid, in.Name, k)
			}
		}
		ordered[j] = in
	}
	return ordered, nil
}

// run validates inputs, runs the session and returns the requested outputs (all when
// names is empty). Cancelling ctx terminates the ORT run. observe marks serving traffic,
// not probes: it folds the inputs into the drift statistics, and lets the Runtime's gate
// refuse the request when too many wait for a run.
func (m *Model) run(ctx context.Context, inputs []Input, names []string, observe bool) ([]Output, error) {
	return m.runWith(ctx, inputs, names, observe, &runScratch{})
}

// runScratch holds the slices one run needs, so that a caller serving many requests
// can reuse them (see inferScratch). The Outputs a run returns live in result until the
// next run with the same scratch.
type runScratch struct {
	ordered []*Input
	want    []bool
	tensors []ort.Value
	outs    []ort.Value
	result  []Output
}

// reset drops the references the last run left (request memory, ORT output memory).
func (s *runScratch) reset() {
	clear(s.ordered[:cap(s.ordered)])
	clear(s.tensors[:cap(s.tensors)])
	clear(s.outs[:cap(s.outs)])
	clear(s.result[:cap(s.result)])
}

// resize returns s with length n and zero elements, reusing its memory when it can.
func resize[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	s = s[:n]
	clear(s)
	return s
}

// runWith is run with its slices taken from sc.
func (m *Model) runWith(ctx context.Context, inputs []Input, names []string, observe bool, sc *runScratch) ([]Output, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	ordered, err := m.validate(inputs, sc.ordered)
	if err != nil {
		return nil, err
	}
	sc.ordered = ordered
	want := resize(sc.want, len(m.outputs))
	sc.want = want
	if len(names) == 0 {
		for i := range want {
			want[i] = true
		}
	}
	for _, n := range names {
		j := slices.IndexFunc(m.outputs, func(t runtimeapi.TensorMeta) bool { return t.Name == n })
		if j < 0 {
			return nil, fmt.Errorf("%w: model %s has no output %.64q", runtimeapi.ErrInvalid, m.name, n)
		}
		want[j] = true
	}
	if m.gate != nil {
		// Serving requests (observe) may be refused when too many wait; probes wait.
		if err := m.gate.enter(ctx, observe); err != nil {
			return nil, err
		}
		defer m.gate.leave()
	}
	retried := false
	if b := m.takeBinding(ordered); b != nil {
		result, err, retry := m.runBound(ctx, b, ordered, want, observe, sc)
		if !retry {
			return result, err
		}
		retried = true
	}
	return m.runUnbound(ctx, ordered, want, observe, retried, sc)
}

// runBound runs with b, copying the inputs into its tensors and the wanted outputs out
// of them. retry is true when the run failed while the same inputs might succeed
// unbound (b's output shapes were wrong for these values); b is then destroyed and the
// caller runs unbound, which stops binding this model if it succeeds.
func (m *Model) runBound(ctx context.Context, b *binding, ordered []*Input, want []bool, observe bool, sc *runScratch) (_ []Output, _ error, retry bool) {
	for i, in := range ordered {
		copy(b.inBufs[i], in.raw)
	}
	if err := m.exec(ctx, b.ins, b.outs, m.meter != nil && !m.lastLong.Load()); err != nil {
		b.destroy()
		if errors.Is(err, errRun) {
			return nil, nil, true
		}
		return nil, err, false
	}
	if m.drift != nil && observe {
		m.drift.observe(ordered)
	}
	result := sc.result[:0]
	for i, meta := range m.outputs {
		if want[i] {
			result = append(result, b.output(meta, i))
		}
	}
	m.putBinding(b)
	sc.result = result
	return result, nil, false
}

// runUnbound runs with tensors created for this run and outputs ORT allocates. retried
// is whether the same inputs just failed bound.
func (m *Model) runUnbound(ctx context.Context, ordered []*Input, want []bool, observe, retried bool, sc *runScratch) ([]Output, error) {
	tensors := resize(sc.tensors, len(ordered))
	sc.tensors = tensors
	defer func() {
		for i, t := range tensors {
			if t != nil {
				t.Destroy()
				tensors[i] = nil
			}
		}
	}()
	var err error
	for i, in := range ordered {
		tensors[i], err = newTensor(in.Datatype, in.Shape, &in.tensorData)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", in.Name, err)
		}
	}
	outs := resize(sc.outs, len(m.outputs))
	sc.outs = outs
	defer func() {
		for i, o := range outs {
			if o != nil {
				o.Destroy()
				outs[i] = nil
			}
		}
	}()
	if err := m.preallocate(outs, ordered); err != nil {
		return nil, err
	}
	if err := m.exec(ctx, tensors, outs, false); err != nil {
		if sized := m.presized(outs); sized != nil && errors.Is(err, errRun) {
			// ORT names its own node; say which outputs were sized by guess.
			return nil, fmt.Errorf("%w (a possible cause: output %s: %s outputs are sized before the run, each dynamic dimension from the first input's at the same axis; a model whose output is sized otherwise cannot be served)",
				err, strings.Join(sized, ", "), "FP16/BF16")
		}
		return nil, err
	}
	if retried {
		// The same inputs failed bound and ran unbound: this model's output shapes
		// depend on more than its input shapes.
		m.binds.off.Store(true)
	} else {
		m.learn(ordered, outs)
	}
	if m.drift != nil && observe {
		m.drift.observe(ordered)
	}
	result := sc.result[:0]
	for i, o := range outs {
		if !want[i] {
			continue
		}
		out, err := outputFrom(m.outputs[i], o)
		if err != nil {
			return nil, err
		}
		result = append(result, out)
	}
	sc.result = result
	return result, nil
}

// exec runs the session; a failure of the run itself wraps errRun. Cancelling ctx
// terminates the run (ORT stops between operators), except for a run expected to be
// short: one with inputs of shapes already run (bound) when the model's previous run
// took less than the meter's long-run time (1 ms). Watching ctx (context.AfterFunc)
// costs about 1.6 µs per request, measured with perf on the Iris model served over gRPC,
// where the whole bound run is 5.6 µs; it would stop something that ends within a
// millisecond anyway, and the context is still checked before and after the run. A
// short run that turns out long marks the model, so its next run is watched.
func (m *Model) exec(ctx context.Context, tensors, outs []ort.Value, expectShort bool) error {
	var runErr error
	if m.lastLong.Load() {
		// A run expected to be long (the previous one was) first lets the goroutines
		// this request readied run: net/http's background read of the connection, which
		// then parks in the poller. A P that enters the cgo call with work queued on it
		// is retaken by sysmon at its next tick and handed to another thread; with an
		// empty queue it is left alone while another P is idle (wide model, binary HTTP,
		// c=2: 15–17 context switches per request → 3, docs/BENCHMARKS.md).
		goruntime.Gosched()
	}
	start := time.Now()
	if ctx.Done() == nil || expectShort {
		runErr = m.session.Run(tensors, outs)
		m.ran(start)
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("model %s %s: %w", m.name, m.version, err)
		}
	} else {
		opts, err := m.getRunOptions()
		if err != nil {
			return fmt.Errorf("run options: %w", err)
		}
		terminated := make(chan struct{})
		stop := context.AfterFunc(ctx, func() { opts.Terminate(); close(terminated) })
		runErr = m.session.RunWithOptions(tensors, outs, opts)
		m.ran(start)
		if !stop() {
			// Terminate was called (or is running): wait for it, then drop these
			// options, which would stop the next run.
			<-terminated
			opts.Destroy()
			return fmt.Errorf("model %s %s: %w", m.name, m.version, ctx.Err())
		}
		m.putRunOptions(opts)
		if ctx.Err() != nil {
			return fmt.Errorf("model %s %s: %w", m.name, m.version, ctx.Err())
		}
	}
	if runErr != nil {
		// Inputs were validated, so this is the model's own failure (e.g. a value its
		// operators reject); the request can be fixed only by its sender.
		return fmt.Errorf("%w: model %s %s: %w", errRun, m.name, m.version, ortError{runErr})
	}
	return nil
}

// shapeText is a request's shape as an error message shows it: its first dimensions, and
// how many there are when there are more (a shape of a million dimensions made a 2 MB
// error).
func shapeText(shape []int64) string {
	const shown = 8
	if len(shape) <= shown {
		return fmt.Sprint(shape)
	}
	return fmt.Sprintf("%v… (%d dimensions)", shape[:shown], len(shape))
}

// ortError is a failed run's error from ONNX Runtime as a client may read it: ORT's
// messages name the file and line of its own build tree and the C++ function that
// failed ("/onnxruntime_src/onnxruntime/core/framework/execution_frame.cc:160
// onnxruntime::common::Status onnxruntime::IExecutionFrame::…(int, int, …)"), which
// tell a client nothing it can act on and a stranger which build runs here. Error
// drops them, and bounds the rest; Unwrap keeps ORT's own error.
type ortError struct{ err error }

func (e ortError) Error() string {
	msg := ortSource.ReplaceAllString(e.err.Error(), "")
	if len(msg) > maxORTMessage {
		msg = msg[:maxORTMessage] + "…"
	}
	return msg
}

func (e ortError) Unwrap() error { return e.err }

// ortSource matches a source location in an ONNX Runtime message: a path through its
// build tree, a line, and the C++ signature after it.
var ortSource = regexp.MustCompile(`\S*onnxruntime_src/\S+:\d+ [^(]*\([^)]*\) ?`)

// maxORTMessage bounds what of an ONNX Runtime message a response carries.
const maxORTMessage = 512

// ran records a run that began at start with the Runtime's meter.
func (m *Model) ran(start time.Time) {
	if m.meter != nil {
		m.lastLong.Store(m.meter.ran(time.Since(start)))
	}
}

func (m *Model) getRunOptions() (*ort.RunOptions, error) {
	select {
	case o := <-m.runOpts:
		return o, nil
	default:
		return ort.NewRunOptions()
	}
}

func (m *Model) putRunOptions(o *ort.RunOptions) {
	select {
	case m.runOpts <- o:
	default:
		o.Destroy()
	}
}

// presized names the outputs preallocate sized with a dimension taken from an input's
// (nil: none), the possible cause of a failed run.
func (m *Model) presized(outs []ort.Value) []string {
	var out []string
	for i, meta := range m.outputs {
		if outs[i] != nil && (meta.Datatype == runtimeapi.FP16 || meta.Datatype == runtimeapi.BF16) && slices.ContainsFunc(meta.Shape, func(d int64) bool { return d < 0 }) {
			out = append(out, strconv.Quote(meta.Name))
		}
	}
	return out
}

// preallocate creates the FP16 and BF16 output tensors before the run: onnxruntime_go
// v1.27 copies an output it allocates itself by element count rather than bytes, which
// fails for 2-byte elements. Their shape is the model's, each dynamic dimension taken
// from the first input's dimension at the same axis (the batch axis, in practice); a
// model whose FP16 output shape is otherwise dynamic fails to run with a clear error.
func (m *Model) preallocate(outs []ort.Value, ordered []*Input) error {
	for i, meta := range m.outputs {
		if meta.Datatype != runtimeapi.FP16 && meta.Datatype != runtimeapi.BF16 {
			continue
		}
		shape := slices.Clone(meta.Shape)
		for k, d := range shape {
			if d >= 0 {
				continue
			}
			if k >= len(ordered[0].Shape) {
				return fmt.Errorf("%w: model %s: output %q has dynamic dimension %d that no input dimension sizes (%s outputs need sizes known before the run)", errRun, m.name, meta.Name, k, meta.Datatype)
			}
			shape[k] = ordered[0].Shape[k]
		}
		n, err := elementsOf(shape, math.MaxInt32)
		if err != nil || n == 0 {
			return fmt.Errorf("%w: model %s: output %q shape %v: %v", errRun, m.name, meta.Name, shape, err)
		}
		t, err := ort.NewCustomDataTensor(ort.NewShape(shape...), make([]byte, 2*n), elemTypes[meta.Datatype])
		if err != nil {
			return fmt.Errorf("output %q: %w", meta.Name, err)
		}
		outs[i] = t
	}
	return nil
}

// errRun marks a failure inside ORT's Run (mapped to 400: inputs passed validation, so
// what failed is the combination of these values and this model).
var errRun = errors.New("inference failed")
