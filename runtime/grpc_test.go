package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"math"
	"net"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// serveGRPC serves r's gRPC API on a loopback port for the test and returns its address.
func serveGRPC(t *testing.T, r *Runtime) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := r.NewGRPCServer()
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return ln.Addr().String()
}

// grpcClient serves r's gRPC API on a loopback port for the test and returns a client.
func grpcClient(t *testing.T, r *Runtime) inference.GRPCInferenceServiceClient {
	t.Helper()
	return grpcClientOf(t, serveGRPC(t, r))
}

// grpcClientOf is a client of the gRPC API at addr.
func grpcClientOf(t *testing.T, addr string) inference.GRPCInferenceServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return inference.NewGRPCInferenceServiceClient(conn)
}

func f32Raw(v ...float32) []byte {
	var b []byte
	for _, f := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(f))
	}
	return b
}

func irisInfer(version string, raw []byte, rows int64) *inference.ModelInferRequest {
	return &inference.ModelInferRequest{ModelName: "iris", ModelVersion: version, Id: "q1",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{rows, 4}}},
		Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "output_label"}},
		RawInputContents: [][]byte{raw}}
}

// TestGRPCProtocol: the gRPC API answers like the HTTP API, for health, metadata and
// inference with raw and typed contents, and refuses what HTTP refuses, with the
// matching status codes.
func TestGRPCProtocol(t *testing.T) {
	r := newTestRuntime(t)
	c := grpcClient(t, r)
	ctx := context.Background()
	if rr, err := c.ServerReady(ctx, &inference.ServerReadyRequest{}); err != nil || rr.Ready {
		t.Errorf("ServerReady without models = %v, %v; want false", rr, err)
	}
	loadIris(t, r, "1.0.0")
	if lr, err := c.ServerLive(ctx, &inference.ServerLiveRequest{}); err != nil || !lr.Live {
		t.Errorf("ServerLive = %v, %v", lr, err)
	}
	if rr, err := c.ServerReady(ctx, &inference.ServerReadyRequest{}); err != nil || !rr.Ready {
		t.Errorf("ServerReady = %v, %v", rr, err)
	}
	if sm, err := c.ServerMetadata(ctx, &inference.ServerMetadataRequest{}); err != nil || sm.Name != "edgeward-runtime" || sm.Version == "" || sm.Version == r.ORTVersion() || len(sm.Extensions) != 0 {
		t.Errorf("ServerMetadata = %v, %v", sm, err)
	}
	mm, err := c.ModelMetadata(ctx, &inference.ModelMetadataRequest{Name: "iris"})
	if err != nil || mm.Name != "iris" || mm.Platform != "onnxruntime_onnx" || len(mm.Inputs) != 1 || mm.Inputs[0].Datatype != "FP32" || mm.Inputs[0].Shape[1] != 4 {
		t.Errorf("ModelMetadata = %v, %v", mm, err)
	}
	if mr, err := c.ModelReady(ctx, &inference.ModelReadyRequest{Name: "iris", Version: "1.0.0"}); err != nil || !mr.Ready {
		t.Errorf("ModelReady = %v, %v", mr, err)
	}
	if _, err := c.ModelReady(ctx, &inference.ModelReadyRequest{Name: "iris", Version: "9.0.0"}); status.Code(err) != codes.NotFound {
		t.Errorf("ModelReady(unknown version) = %v; want NotFound", err)
	}
	// Raw contents, two rows: setosa and virginica.
	resp, err := c.ModelInfer(ctx, irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2, 7.7, 2.8, 6.7, 2.0), 2))
	if err != nil {
		t.Fatalf("ModelInfer = %v", err)
	}
	want := binary.LittleEndian.AppendUint64(binary.LittleEndian.AppendUint64(nil, 0), 2)
	if resp.ModelName != "iris" || resp.ModelVersion != "1.0.0" || resp.Id != "q1" || len(resp.Outputs) != 1 ||
		resp.Outputs[0].Datatype != "INT64" || resp.Outputs[0].Shape[0] != 2 || !bytes.Equal(resp.RawOutputContents[0], want) {
		t.Errorf("ModelInfer = %v; want labels 0, 2 as raw INT64", resp)
	}
	// Typed contents.
	typed := irisInfer("1.0.0", nil, 1)
	typed.RawInputContents = nil
	typed.Inputs[0].Contents = &inference.InferTensorContents{Fp32Contents: []float32{7.7, 2.8, 6.7, 2.0}}
	if resp, err := c.ModelInfer(ctx, typed); err != nil || !bytes.Equal(resp.RawOutputContents[0], want[8:]) {
		t.Errorf("ModelInfer(typed) = %v, %v", resp, err)
	}
	refuse := func(name string, req *inference.ModelInferRequest, code codes.Code, msg string) {
		t.Helper()
		_, err := c.ModelInfer(ctx, req)
		if status.Code(err) != code || !strings.Contains(status.Convert(err).Message(), msg) {
			t.Errorf("%s: ModelInfer = %v; want %s about %q", name, err, code, msg)
		}
	}
	refuse("short raw", irisInfer("", f32Raw(1, 2, 3), 1), codes.InvalidArgument, "needs 16 bytes")
	refuse("unknown model", &inference.ModelInferRequest{ModelName: "nothing", Inputs: irisInfer("", nil, 1).Inputs, RawInputContents: [][]byte{f32Raw(1, 2, 3, 4)}}, codes.NotFound, "not loaded")
	refuse("unknown version", irisInfer("2.0.0", f32Raw(1, 2, 3, 4), 1), codes.NotFound, "no loaded version")
	two := irisInfer("", f32Raw(1, 2, 3, 4), 1)
	two.RawInputContents = append(two.RawInputContents, nil)
	refuse("raw count", two, codes.InvalidArgument, "2 raw_input_contents for 1 inputs")
	both := irisInfer("", f32Raw(1, 2, 3, 4), 1)
	both.Inputs[0].Contents = &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}}
	refuse("raw and typed", both, codes.InvalidArgument, "beside raw_input_contents")
	mixed := irisInfer("", nil, 1)
	mixed.RawInputContents = nil
	mixed.Inputs[0].Contents = &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3, 4}, Int64Contents: []int64{1}}
	refuse("two typed fields", mixed, codes.InvalidArgument, "other than the one of FP32")
	wrongField := irisInfer("", nil, 1)
	wrongField.RawInputContents = nil
	wrongField.Inputs[0].Contents = &inference.InferTensorContents{Fp64Contents: []float64{1, 2, 3, 4}}
	refuse("field of another datatype", wrongField, codes.InvalidArgument, "other than the one of FP32")
	fp64 := irisInfer("", f32Raw(1, 2, 3, 4, 5, 6, 7, 8), 1)
	fp64.Inputs[0].Datatype = "FP64"
	refuse("datatype mismatch", fp64, codes.InvalidArgument, "model wants FP32")
	refuse("no inputs", &inference.ModelInferRequest{ModelName: "iris"}, codes.InvalidArgument, "no inputs")
	refuse("unknown output", &inference.ModelInferRequest{ModelName: "iris", Inputs: irisInfer("", nil, 1).Inputs, RawInputContents: [][]byte{f32Raw(1, 2, 3, 4)},
		Outputs: []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: "nope"}}}, codes.InvalidArgument, `no output "nope"`)
	refuse("over the message limit", irisInfer("", make([]byte, 17<<20), 1<<20), codes.ResourceExhausted, "larger than max")

	// Counted like HTTP requests: under the version served and the HTTP status.
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range []string{
		`edgeward_runtime_requests_total{code="200",model="iris",version="1.0.0"} 2`,
		`edgeward_runtime_request_errors_total{code="400",model="iris",version="1.0.0"} 8`,
		`edgeward_runtime_request_errors_total{code="404",model="",version=""} 2`,
	} {
		if !strings.Contains(rec.Body.String(), line) {
			t.Errorf("metrics lack %s", line)
		}
	}
}

// TestGRPCTypedContents: every datatype with typed contents travels through ONNX
// Runtime; integers out of their datatype's range and FP16 without raw contents are
// refused.
func TestGRPCEveryDatatype(t *testing.T) {
	r := newTestRuntime(t)
	loadEchoAll(t, r)
	c := grpcClient(t, r)
	req := &inference.ModelInferRequest{ModelName: "echo"}
	for _, ec := range echoCases() {
		req.Inputs = append(req.Inputs, &inference.ModelInferRequest_InferInputTensor{Name: ec.dt, Datatype: ec.dt, Shape: []int64{3}})
		req.RawInputContents = append(req.RawInputContents, ec.bin)
	}
	resp, err := c.ModelInfer(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	for i, ec := range echoCases() {
		o := resp.Outputs[i]
		if o.Name != ec.dt+"_out" || o.Datatype != ec.dt || !bytes.Equal(resp.RawOutputContents[i], ec.bin) {
			t.Errorf("output %d = %s %s %x; want %s_out %x", i, o.Name, o.Datatype, resp.RawOutputContents[i], ec.dt, ec.bin)
		}
	}
	// Typed: the same values through the typed fields (FP16 and BF16 stay raw: mixing
	// is refused, so send them in another request).
	typed := &inference.ModelInferRequest{ModelName: "echo"}
	contents := map[string]*inference.InferTensorContents{
		"BOOL": {BoolContents: []bool{true, false, true}}, "UINT8": {UintContents: []uint32{0, 128, 255}},
		"UINT16": {UintContents: []uint32{0, 1, 65535}}, "UINT32": {UintContents: []uint32{0, 7, math.MaxUint32}},
		"UINT64": {Uint64Contents: []uint64{0, 1 << 53, math.MaxUint64}}, "INT8": {IntContents: []int32{-128, -1, 127}},
		"INT16": {IntContents: []int32{-32768, -1, 32767}}, "INT32": {IntContents: []int32{math.MinInt32, 0, math.MaxInt32}},
		"INT64": {Int64Contents: []int64{math.MinInt64, -1, math.MaxInt64}}, "FP32": {Fp32Contents: []float32{1.5, -0.25, 3e38}},
		"FP64": {Fp64Contents: []float64{0.1, -2.5e300, 4}}, "BYTES": {BytesContents: [][]byte{{}, []byte("héllo"), []byte(`a"b`)}},
		"FP16": {}, "BF16": {},
	}
	for _, ec := range echoCases() {
		typed.Inputs = append(typed.Inputs, &inference.ModelInferRequest_InferInputTensor{Name: ec.dt, Datatype: ec.dt, Shape: []int64{3}, Contents: contents[ec.dt]})
	}
	_, err = c.ModelInfer(context.Background(), typed)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "FP16 has no typed contents") {
		t.Errorf("typed FP16 = %v; want InvalidArgument", err)
	}
	typed.Inputs[9].Datatype, typed.Inputs[10].Datatype = "FP32", "FP32" // FP16, BF16 inputs: now a datatype mismatch
	typed.Inputs[9].Contents = &inference.InferTensorContents{Fp32Contents: []float32{1, 2, 3}}
	typed.Inputs[10].Contents = typed.Inputs[9].Contents
	if _, err = c.ModelInfer(context.Background(), typed); !strings.Contains(err.Error(), "datatype FP32, model wants FP16") {
		t.Errorf("FP32 for FP16 = %v", err)
	}
	typed.Inputs[5].Contents = &inference.InferTensorContents{IntContents: []int32{-129, 0, 0}}
	if _, err = c.ModelInfer(context.Background(), typed); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "-129 is out of the range of INT8") {
		t.Errorf("INT8 -129 = %v", err)
	}
	typed.Inputs[1].Contents = &inference.InferTensorContents{UintContents: []uint32{256, 0, 0}}
	if _, err = c.ModelInfer(context.Background(), typed); !strings.Contains(err.Error(), "256 is out of the range of UINT8") {
		t.Errorf("UINT8 256 = %v", err)
	}
}

// TestGRPCSwapAndDrift: a model swap through the control API is seen by gRPC clients
// (the new default answers), and gRPC traffic feeds the drift statistics.
func TestGRPCSwapAndDrift(t *testing.T) {
	r := newTestRuntime(t)
	c := grpcClient(t, r)
	ctx := context.Background()
	dir := vibrationDir(t)
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if _, err := r.Load(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: v, Path: filepath.Join(dir, "models", "vibration", v+".onnx")}); err != nil {
			t.Fatal(err)
		}
	}
	x, _ := modelgen.Dataset(3, 50)
	infer := func() string {
		t.Helper()
		var raw []byte
		for _, row := range x {
			raw = append(raw, f32Raw(float32(row[0]), float32(row[1]), float32(row[2]), float32(row[3]))...)
		}
		resp, err := c.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "vibration",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{int64(len(x)), 4}}},
			RawInputContents: [][]byte{raw}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.ModelVersion
	}
	if v := infer(); v != "1.0.0" {
		t.Errorf("served by %s; want the default 1.0.0", v)
	}
	if err := r.SetDefault("vibration", "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if err := r.Unload(ctx, "vibration", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if v := infer(); v != "1.1.0" {
		t.Errorf("served by %s after the swap; want 1.1.0", v)
	}
	rep, err := r.Drift("vibration", "1.1.0")
	if err != nil || rep.Rows != int64(len(x)) {
		t.Errorf("Drift = %+v, %v; want %d rows from gRPC", rep, err, len(x))
	}
	r.SetDraining()
	if rr, err := c.ServerReady(ctx, &inference.ServerReadyRequest{}); err != nil || rr.Ready {
		t.Errorf("ServerReady while draining = %v, %v; want false", rr, err)
	}
}
