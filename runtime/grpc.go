package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// NewGRPCServer returns a gRPC server for the Open Inference Protocol's gRPC API
// (KServe's inference.GRPCInferenceService: ServerLive, ServerReady, ModelReady,
// ServerMetadata, ModelMetadata, ModelInfer). It has the HTTP API's semantics: the
// same readiness (not ready while draining or without models), models and versions,
// limits (a message over Config.MaxRequestBytes is ResourceExhausted), drift statistics
// and metrics (counted under the HTTP status a request would have had), and gRPC's
// standard health service (grpc.health.v1, grpcHealth) with the same readiness. Inputs come
// as raw_input_contents or typed contents; outputs always as raw_output_contents. Stop
// it with GracefulStop when draining.
func (r *Runtime) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	max := int(min(r.cfg.maxRequestBytes(), math.MaxInt32))
	opts = append(append([]grpc.ServerOption{
		grpc.MaxRecvMsgSize(max),
		// grpc-go's default is no limit: one connection could open streams, each a
		// handler goroutine, without end (HTTP/2 rapid reset among them). More than the
		// runs plus the requests that may wait for one would only be refused.
		grpc.MaxConcurrentStreams(uint32(r.cfg.maxRuns() + r.cfg.maxWaiting())),
		// A stream's metadata (its HEADERS) is held while the stream lives: grpc-go's
		// default allows 16 MiB per stream, so 40 streams with 8 MiB of metadata each held
		// 340 MB (found from outside, 1 Dec). Inference metadata is a few hundred bytes;
		// 64 KiB per stream, as HTTP proxies allow, bounds a connection's to 16 MiB.
		grpc.MaxHeaderListSize(maxGRPCHeaderBytes),
		grpc.UnaryInterceptor(r.grpcRecoverer),
		grpc.InTapHandle(readDeadlineTap),
		// ModelInfer messages arrive raw, and are decoded once what that allocates is
		// known to fit (decodeInfer); every other message is protobuf's as usual.
		grpc.ForceServerCodecV2(newInferCodec()),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: r.cfg.idleTimeout()}),
		// Each call can close its connection, should its answer not be gone within
		// WriteTimeout (heldAnswer, grpcsend.go).
		grpc.Creds(sendCreds{}),
	}, inference.ServerOptions()...), opts...)
	s := grpc.NewServer(opts...)
	g := &grpcService{r: r}
	s.RegisterService(inference.ServiceDescReadingInfer(g.modelInferStream), g)
	registerGRPCHealth(s, r)
	return s
}

// maxGRPCHeaderBytes bounds the metadata of one gRPC call (HTTP/2 header list size).
const maxGRPCHeaderBytes = 64 << 10

// modelInferStream serves ModelInfer, called as unary by clients, as a stream handler,
// so that it runs before the request is read: grpc-go reads a unary request whole before
// its handler, so 100 concurrent 16 MiB requests held 3.3 GB at once, whatever their
// model. Here a call waits for one of the runtime's read slots (at most MaxHeldBytes /
// MaxRequestBytes messages are read at once; beyond MaxWaitingRequests waiting, a call
// is refused with UNAVAILABLE) and reads its message within ReadTimeout. Until then its
// stream holds at most the stream window (inference.ServerOptions).
func (g *grpcService) modelInferStream(_ any, ss grpc.ServerStream) (err error) {
	defer func() {
		if p := recover(); p != nil {
			g.r.log.Error("grpc handler panic", "method", inference.GRPCInferenceService_ModelInfer_FullMethodName, "panic", fmt.Sprint(p))
			err = status.Error(codes.Internal, "internal error")
		}
	}()
	ctx := ss.Context()
	req, err := g.readInfer(ctx, ss)
	if err != nil {
		return err
	}
	resp, h, err := g.modelInfer(ctx, req, true)
	if err != nil {
		return err
	}
	return g.send(ss, resp, h, answerConn(ctx))
}

// readInfer reads a ModelInfer request from ss once a read slot is free. A refusal or a
// read that outlasts ReadTimeout is counted under model "" (the request's model is not
// known yet). The timeout cancels the stream's context (readDeadlineTap), which ends
// the read: no goroutine per call waits beside it.
func (g *grpcService) readInfer(ctx context.Context, ss grpc.ServerStream) (*inference.ModelInferRequest, error) {
	start := time.Now()
	cancel, _ := ctx.Value(readCancelKey{}).(context.CancelCauseFunc) // nil: a server built without NewGRPCServer's options
	t, err := g.r.reads.enter(ctx, cancel)
	if err != nil {
		g.r.observeInfer(nil, "", "", statusOf(err), time.Since(start))
		return nil, grpcError(err)
	}
	raw := new(rawInfer) // decoded below, once its decoding's cost is known to fit
	defer func() {
		if raw.buf != nil {
			raw.buf.Free()
		}
	}()
	if cancel == nil {
		err = ss.RecvMsg(raw)
		g.r.reads.leave(t)
	} else {
		timeout := g.r.cfg.readTimeout()
		timer := time.AfterFunc(timeout, func() { cancel(errReadTimeout) })
		err = ss.RecvMsg(raw)
		timedOut := !timer.Stop()
		preempted := g.r.reads.wasPreempted(t)
		g.r.reads.leave(t)
		if err != nil && (timedOut || preempted) {
			g.r.observeInfer(nil, "", "", http.StatusRequestTimeout, time.Since(start))
			if preempted {
				return nil, status.Errorf(codes.DeadlineExceeded, "the request message did not arrive within %v while other calls waited to be read", g.r.cfg.grpcReadGrace())
			}
			return nil, status.Errorf(codes.DeadlineExceeded, "the request message did not arrive within %v", timeout)
		}
	}
	if errors.Is(err, io.EOF) {
		g.r.observeInfer(nil, "", "", http.StatusBadRequest, time.Since(start))
		return nil, status.Error(codes.InvalidArgument, "the call ended without a request message")
	}
	if err != nil {
		// A status already: too large (ResourceExhausted), cancelled, past the client's
		// deadline. Counted under model "" (the message, and so its model, is unknown).
		code := http.StatusBadRequest
		switch status.Code(err) {
		case codes.ResourceExhausted:
			code = http.StatusRequestEntityTooLarge
		case codes.Canceled, codes.DeadlineExceeded:
			code = statusClientClosed
			if pastDeadline(ctx) {
				code = http.StatusGatewayTimeout
			}
		}
		g.r.observeInfer(nil, "", "", code, time.Since(start))
		return nil, err
	}
	req, err := g.r.decodeInfer(raw)
	if err != nil {
		g.r.observeInfer(nil, "", "", statusOf(err), time.Since(start))
		return nil, grpcError(err)
	}
	return req, nil
}

// pastDeadline reports whether a call that ended cancelled ended at its deadline. Such
// a call ends twice at once: grpc-go's timer (set from the grpc-timeout header when it
// arrived, so a little after the client's) and the client's RST_STREAM when its own
// deadline fires, which usually comes first and reads as a cancellation. Within
// deadlineSlack of the deadline, it timed out: 504, not 499.
func pastDeadline(ctx context.Context) bool {
	dl, ok := ctx.Deadline()
	return ok && time.Until(dl) < deadlineSlack
}

// deadlineSlack is how early before its deadline a cancelled call still counts as timed out.
const deadlineSlack = 250 * time.Millisecond

// connOf names the connection of a call's context: its peer's address (a TCP
// connection's is its own; unix sockets' may be shared, and so share a turn).
func connOf(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return p.Addr.Network() + ":" + p.Addr.String()
	}
	return ""
}

// readCancelKey is the context key of the cancel function readDeadlineTap gives each
// ModelInfer stream.
type readCancelKey struct{}

var (
	errReadTimeout   = errors.New("the request message did not arrive within the read timeout")
	errReadPreempted = errors.New("the request message did not arrive within the read grace while other calls waited")
)

// readDeadlineTap gives each ModelInfer stream's context a cancel function that
// readInfer arms with ReadTimeout while it reads the message. grpc-go ends a read when
// the stream's context ends, and the context a tap returns becomes the stream's. It runs
// on the connection's reader goroutine: it only derives a context.
func readDeadlineTap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName != inference.GRPCInferenceService_ModelInfer_FullMethodName {
		return ctx, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	return readCtx{ctx, cancel}, nil
}

// readCtx is a ModelInfer stream's context. Once cancelled for the read timeout its Err
// is context.DeadlineExceeded, which grpc-go, ending the read, sends to the client as
// DEADLINE_EXCEEDED (a plain cancellation would reach it as CANCELLED).
type readCtx struct {
	context.Context
	cancel context.CancelCauseFunc
}

func (c readCtx) Err() error {
	err := c.Context.Err()
	if cause := context.Cause(c.Context); err != nil && (cause == errReadTimeout || cause == errReadPreempted) {
		return context.DeadlineExceeded
	}
	return err
}

func (c readCtx) Value(key any) any {
	if key == (readCancelKey{}) {
		return c.cancel
	}
	return c.Context.Value(key)
}

// grpcRecoverer turns a panic in a handler into Internal, as recoverer does for HTTP.
func (r *Runtime) grpcRecoverer(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("grpc handler panic", "method", info.FullMethod, "panic", fmt.Sprint(p))
			resp, err = nil, status.Error(codes.Internal, "internal error")
		}
	}()
	return h(ctx, req)
}

type grpcService struct {
	inference.UnimplementedGRPCInferenceServiceServer
	r *Runtime
}

// grpcError maps the package's errors to gRPC status codes, through their HTTP status.
func grpcError(err error) error {
	code := codes.Internal
	switch statusOf(err) {
	case http.StatusBadRequest:
		code = codes.InvalidArgument
	case http.StatusRequestEntityTooLarge:
		code = codes.ResourceExhausted
	case http.StatusNotFound:
		code = codes.NotFound
	case http.StatusConflict:
		code = codes.FailedPrecondition
	case http.StatusServiceUnavailable:
		code = codes.Unavailable
	case statusClientClosed:
		code = codes.Canceled
	case http.StatusGatewayTimeout:
		code = codes.DeadlineExceeded
	}
	return status.Error(code, errorText(err))
}

func (g *grpcService) ServerLive(context.Context, *inference.ServerLiveRequest) (*inference.ServerLiveResponse, error) {
	return &inference.ServerLiveResponse{Live: true}, nil
}

func (g *grpcService) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: g.r.Ready()}, nil
}

func (g *grpcService) ModelReady(_ context.Context, req *inference.ModelReadyRequest) (*inference.ModelReadyResponse, error) {
	if _, err := g.r.Metadata(req.GetName(), req.GetVersion()); err != nil {
		return nil, grpcError(err)
	}
	return &inference.ModelReadyResponse{Ready: true}, nil
}

func (g *grpcService) ServerMetadata(context.Context, *inference.ServerMetadataRequest) (*inference.ServerMetadataResponse, error) {
	// The gRPC service has no repository or probe methods, and binary tensors are a REST
	// extension (gRPC carries raw_input_contents natively): it advertises none.
	return &inference.ServerMetadataResponse{Name: "edgeward-runtime", Version: serverVersion(), Extensions: []string{}}, nil
}

func (g *grpcService) ModelMetadata(_ context.Context, req *inference.ModelMetadataRequest) (*inference.ModelMetadataResponse, error) {
	info, err := g.r.Metadata(req.GetName(), req.GetVersion())
	if err != nil {
		return nil, grpcError(err)
	}
	meta := func(ts []runtimeapi.TensorMeta) []*inference.ModelMetadataResponse_TensorMetadata {
		out := make([]*inference.ModelMetadataResponse_TensorMetadata, len(ts))
		for i, t := range ts {
			out[i] = &inference.ModelMetadataResponse_TensorMetadata{Name: t.Name, Datatype: string(t.Datatype), Shape: t.Shape}
		}
		return out
	}
	return &inference.ModelMetadataResponse{Name: info.Name, Versions: info.Versions, Platform: info.Platform, Inputs: meta(info.Inputs), Outputs: meta(info.Outputs)}, nil
}

func (g *grpcService) ModelInfer(ctx context.Context, req *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	resp, _, err := g.modelInfer(ctx, req, false)
	return resp, err
}

// modelInfer serves req and counts it. With hold, an answer larger than heldAnswerMin
// is taken from the byte budget before it is counted, and returned held, to send: an
// answer refused for room is counted as what the client gets (503, or 413 when it alone
// could never fit), not as served. Before, it was counted 200 and then refused.
func (g *grpcService) modelInfer(ctx context.Context, req *inference.ModelInferRequest, hold bool) (*inference.ModelInferResponse, *heldAnswer, error) {
	start := time.Now()
	name, version := req.GetModelName(), req.GetModelVersion()
	resp, m, served, err := g.infer(ctx, req, name, version)
	var h *heldAnswer
	if err == nil && hold {
		h, err = g.holdAnswer(resp)
	}
	code := http.StatusOK
	if err != nil {
		code = statusOf(err)
		if code == statusClientClosed && pastDeadline(ctx) {
			code = http.StatusGatewayTimeout
		}
	}
	g.r.observeInfer(m, name, served, code, time.Since(start))
	if err != nil {
		return nil, nil, grpcError(err)
	}
	return resp, h, nil
}

// infer returns the response, the version that served (nil when none was taken), the
// version reached or that would have been ("" when the model is unknown) and the error,
// if any.
func (g *grpcService) infer(ctx context.Context, req *inference.ModelInferRequest, name, version string) (*inference.ModelInferResponse, *Model, string, error) {
	// The pooled scratch holds only this call's slices: the response shares none of its
	// memory (each run's outputs and shapes are new), so it goes back to the pool before
	// gRPC encodes the response.
	// The message is in memory (read whole, up to MaxRequestBytes, in one of the read
	// slots: readInfer): what the budget bounds here is how much of it is held while
	// the request waits for a run slot and runs.
	held := grpcTensorBytes(req)
	if err := g.r.bodies.takeFor(0, held); err != nil {
		return nil, nil, g.r.servedVersion(name, version), err
	}
	defer g.r.bodies.give(held)
	s := g.r.getScratch()
	defer g.r.putScratch(s)
	inputs, names, err := decodeGRPCInputs(req, g.r.cfg.maxElements(), s.inputs, s.names, g.r.bodies.roomFor(held))
	if err != nil {
		return nil, nil, g.r.servedVersion(name, version), err
	}
	s.inputs, s.names = inputs, names
	strs := stringsHeld(inputs)
	if err := g.r.bodies.takeFor(held, strs); err != nil {
		return nil, nil, g.r.servedVersion(name, version), err
	}
	defer g.r.bodies.give(strs)
	m, err := g.r.acquire(name, version)
	if err != nil {
		return nil, nil, "", err
	}
	defer m.inflight.Done()
	outs, err := m.runWith(ctx, inputs, names, true, &s.run)
	if err != nil {
		return nil, m, m.version, err
	}
	resp := &inference.ModelInferResponse{ModelName: m.name, ModelVersion: m.version, Id: req.GetId(),
		Outputs: make([]*inference.ModelInferResponse_InferOutputTensor, len(outs)), RawOutputContents: make([][]byte, len(outs))}
	tensors := make([]inference.ModelInferResponse_InferOutputTensor, len(outs)) // one allocation for all
	for i := range outs {
		o := &outs[i]
		t := &tensors[i]
		t.Name, t.Datatype, t.Shape = o.Name, string(o.Datatype), o.Shape
		resp.Outputs[i] = t
		if o.Datatype == runtimeapi.BYTES {
			resp.RawOutputContents[i] = o.appendBinary(make([]byte, 0, o.binarySize()))
		} else {
			resp.RawOutputContents[i] = o.raw
		}
	}
	return resp, m, m.version, nil
}

// decodeGRPCInputs takes a ModelInfer request's inputs: all from raw_input_contents (one
// per input, checked as binary tensor data) or all from typed contents (the field of the
// datatype only; FP16 and BF16 have none, so they must be raw). The inputs and names are
// in inputs' and names' memory when it is large enough. room, if set, is asked before a
// BYTES input's strings are made whether their stringElementBytes each fit
// (byteBudget.roomFor; its error if not). Every other error wraps ErrInvalid.
func decodeGRPCInputs(req *inference.ModelInferRequest, max int, inputs []Input, names []string, room func(int64) error) ([]Input, []string, error) {
	ins := req.GetInputs()
	if len(ins) == 0 {
		return nil, nil, fmt.Errorf("%w: request has no inputs", runtimeapi.ErrInvalid)
	}
	raw := req.GetRawInputContents()
	if len(raw) > 0 && len(raw) != len(ins) {
		return nil, nil, fmt.Errorf("%w: %d raw_input_contents for %d inputs", runtimeapi.ErrInvalid, len(raw), len(ins))
	}
	inputs = resize(inputs, len(ins))
	for i, t := range ins {
		dt := runtimeapi.Datatype(t.GetDatatype())
		if t.GetName() == "" {
			return nil, nil, fmt.Errorf("%w: input %d has no name", runtimeapi.ErrInvalid, i)
		}
		if !dt.Known() {
			return nil, nil, fmt.Errorf("%w: input %q: datatype %q is not supported", runtimeapi.ErrInvalid, t.GetName(), dt)
		}
		if dt == runtimeapi.BYTES && room != nil {
			// The strings of a BYTES input only if they fit (stringElementBytes each): 16
			// messages of 4 million zero-length raw elements took the runtime to 995 MB
			// before the bound refused them (found from outside, 1 Dec).
			n := int64(len(t.GetContents().GetBytesContents()))
			if len(raw) > 0 {
				e, err := elementsOf(t.GetShape(), max)
				if err != nil {
					return nil, nil, fmt.Errorf("%w: input %q: %w", runtimeapi.ErrInvalid, t.GetName(), err)
				}
				n = int64(e)
			}
			if err := room(n * stringElementBytes); err != nil {
				return nil, nil, err
			}
		}
		var td tensorData
		var err error
		if len(raw) > 0 {
			if t.GetContents() != nil {
				err = errors.New("contents given beside raw_input_contents")
			} else {
				td, err = decodeBinary(raw[i], dt, t.GetShape(), max)
			}
		} else {
			td, err = decodeContents(t.GetContents(), dt, max)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: input %q: %w", runtimeapi.ErrInvalid, t.GetName(), err)
		}
		inputs[i] = Input{Name: t.GetName(), Datatype: dt, Shape: t.GetShape(), tensorData: td}
	}
	names = resize(names, len(req.GetOutputs()))
	for i, o := range req.GetOutputs() {
		names[i] = o.GetName()
	}
	return inputs, names, nil
}

// decodeContents reads typed InferTensorContents: exactly the field of dt is set (an
// empty tensor has none), integers within dt's range, at most max elements.
func decodeContents(c *inference.InferTensorContents, dt runtimeapi.Datatype, max int) (tensorData, error) {
	set := 0
	for _, n := range []int{len(c.GetBoolContents()), len(c.GetIntContents()), len(c.GetInt64Contents()), len(c.GetUintContents()),
		len(c.GetUint64Contents()), len(c.GetFp32Contents()), len(c.GetFp64Contents()), len(c.GetBytesContents())} {
		if n > 0 {
			set++
		}
	}
	var n int
	var td tensorData
	switch dt {
	case runtimeapi.BOOL:
		n = len(c.GetBoolContents())
		td.raw = make([]byte, n)
		for i, b := range c.GetBoolContents() {
			td.raw[i] = boolByte(b)
		}
	case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32:
		n = len(c.GetIntContents())
		bits := 8 * dt.Size()
		for i, x := range c.GetIntContents() {
			if x < -1<<(bits-1) || x > 1<<(bits-1)-1 {
				return td, fmt.Errorf("int_contents %d: %d is out of the range of %s", i, x, dt)
			}
			td.raw = appendInt(td.raw, int64(x), dt.Size())
		}
	case runtimeapi.INT64:
		n = len(c.GetInt64Contents())
		td.raw = asBytes(c.GetInt64Contents())
	case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32:
		n = len(c.GetUintContents())
		bits := 8 * dt.Size()
		for i, x := range c.GetUintContents() {
			if uint64(x) > 1<<bits-1 {
				return td, fmt.Errorf("uint_contents %d: %d is out of the range of %s", i, x, dt)
			}
			td.raw = appendInt(td.raw, int64(x), dt.Size())
		}
	case runtimeapi.UINT64:
		n = len(c.GetUint64Contents())
		td.raw = asBytes(c.GetUint64Contents())
	case runtimeapi.FP32:
		n = len(c.GetFp32Contents())
		td.raw = asBytes(c.GetFp32Contents())
	case runtimeapi.FP64:
		n = len(c.GetFp64Contents())
		td.raw = asBytes(c.GetFp64Contents())
	case runtimeapi.BYTES:
		n = len(c.GetBytesContents())
		td.strs = make([]string, n)
		for i, b := range c.GetBytesContents() {
			td.strs[i] = string(b)
		}
	default:
		return td, fmt.Errorf("%s has no typed contents; send it in raw_input_contents", dt)
	}
	if set > 1 || (set == 1 && n == 0) {
		return td, fmt.Errorf("contents holds fields other than the one of %s", dt)
	}
	if n > max {
		return td, fmt.Errorf("%d elements, at most %d allowed", n, max)
	}
	if td.raw == nil && dt != runtimeapi.BYTES {
		td.raw = []byte{}
	}
	td.n = n
	return td, nil
}

// grpcTensorBytes is the size of req's tensor data: raw contents, typed contents at
// their element sizes (held twice once decoded into tensors).
func grpcTensorBytes(req *inference.ModelInferRequest) int64 {
	var n int64
	for _, raw := range req.GetRawInputContents() {
		n += int64(len(raw))
	}
	for _, t := range req.GetInputs() {
		c := t.GetContents()
		if c == nil {
			continue
		}
		typed := int64(len(c.BoolContents)) + 4*int64(len(c.IntContents)+len(c.UintContents)+len(c.Fp32Contents)) +
			8*int64(len(c.Int64Contents)+len(c.Uint64Contents)+len(c.Fp64Contents))
		for _, b := range c.BytesContents {
			typed += int64(len(b))
		}
		n += 2 * typed
	}
	return n
}
