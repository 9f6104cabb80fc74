package runtime

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestClientThatNeverReadsIsCutOff: a client that sends inference requests and never
// reads the answers is cut off after WriteTimeout, and what its requests held is
// released: their bytes under MaxHeldBytes (the answers' included) and the model
// version, which unloads without waiting for them. Before, four such clients held 62 MB
// of a 64 MiB bound for as long as they wished (every other client got 503), and an
// unload of the version waited for them (found from outside, 2 Dec).
func TestClientThatNeverReadsIsCutOff(t *testing.T) {
	// WriteTimeout well above the unload's bound below, so that a loaded machine
	// (an unload closes an ONNX Runtime session) does not pass for a wait on the clients.
	r, err := New(Config{LibraryPath: ortLib(t), WriteTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "echo.onnx")
	if err := os.WriteFile(path, modelgen.EchoOf("FP64"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	// 4 MiB of FP64 in (binary), its JSON answer (about 10 MB) out: far more than the
	// loopback socket buffers hold.
	const n = 512 << 10
	data := make([]byte, 0, 8*n)
	for i := range n {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(float64(i)+0.123456789))
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"FP64","shape":[%d],"datatype":"FP64","parameters":{"binary_data_size":%d}}]}`, n, len(data))
	body, hl := binaryRequest(header, data)
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetReadBuffer(4 << 10) // read nothing, and take little
		}
		fmt.Fprintf(c, "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n%s: %d\r\nContent-Length: %d\r\n\r\n",
			runtimeapi.HeaderLengthHeader, hl, len(body))
		if _, err := c.Write(body); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The requests arrive, are run, and their answers (JSON, larger than the binary
	// input) are being written, unread: each holds its body and its answer.
	deadline := time.Now().Add(20 * time.Second)
	want := int64(len(conns) * (len(body) + len(data)))
	for r.bodies.used.Load() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if used := r.bodies.used.Load(); used < want {
		t.Fatalf("%d bytes held; want the bodies and the answers of the requests, at least %d", used, want)
	}
	// The version unloads while the clients still do not read, well before WriteTimeout.
	unloaded := make(chan error, 1)
	go func() { unloaded <- r.Unload(context.Background(), "echo", "1.0.0") }()
	select {
	case err := <-unloaded:
		if err != nil {
			t.Fatalf("Unload: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the unload of the version still waits for clients that do not read")
	}
	// And, WriteTimeout on, nothing is held any more.
	for r.bodies.used.Load() != 0 && time.Now().Before(deadline.Add(15*time.Second)) {
		time.Sleep(10 * time.Millisecond)
	}
	if used := r.bodies.used.Load(); used != 0 {
		t.Fatalf("%d bytes still held for clients that never read, past WriteTimeout; want 0", used)
	}
}

// TestGRPCClientThatNeverReadsIsCutOff: over gRPC too, an answer counts under
// MaxHeldBytes until it has left, and a connection whose client does not take its
// answers within WriteTimeout is closed, giving back what they held. A client that
// reads gets its answers as before. Before, an answer handed to grpc-go was forgotten:
// 64 calls of 15.6 MB that were never read held 1.1 GB outside any bound (found from
// outside, 2 Dec).
func TestGRPCClientThatNeverReadsIsCutOff(t *testing.T) {
	r := runtimeServing(t, Config{LibraryPath: ortLib(t), WriteTimeout: 4 * time.Second}, "echo", modelgen.EchoOf("FP64"))
	addr := serveGRPC(t, r)
	const n = 256 << 10 // 2 MiB of FP64 each way
	raw := make([]byte, 0, 8*n)
	for i := range n {
		raw = binary.LittleEndian.AppendUint64(raw, math.Float64bits(float64(i)))
	}
	req := &inference.ModelInferRequest{ModelName: "echo",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "FP64", Datatype: "FP64", Shape: []int64{n}}},
		RawInputContents: [][]byte{raw}}

	// A client that reads: its answers come, and leave nothing held.
	if resp, err := grpcClientOf(t, addr).ModelInfer(context.Background(), req); err != nil || len(resp.RawOutputContents) != 1 || len(resp.RawOutputContents[0]) != len(raw) {
		t.Fatalf("ModelInfer = %v; want the echo", err)
	}
	waitHeld := func(what string, ok func(int64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !ok(r.bodies.used.Load()) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if used := r.bodies.used.Load(); !ok(used) {
			t.Fatalf("%s: %d bytes held", what, used)
		}
	}
	waitHeld("after a client read its answer", func(u int64) bool { return u == 0 })

	// A client that never reads: the smallest windows, and its calls' answers not taken.
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	desc := &grpc.StreamDesc{StreamName: "ModelInfer"}
	for range 3 {
		cs, err := conn.NewStream(context.Background(), desc, inference.GRPCInferenceService_ModelInfer_FullMethodName)
		if err != nil {
			t.Fatal(err)
		}
		if err := cs.SendMsg(req); err != nil {
			t.Fatal(err)
		}
		if err := cs.CloseSend(); err != nil {
			t.Fatal(err)
		}
	}
	// Their answers are computed and held: counted, and still a second on (their
	// requests' own bytes are given back once answered).
	waitHeld("answers waiting for a client that does not read", func(u int64) bool { return u >= 2*8*n })
	time.Sleep(time.Second)
	if used := r.bodies.used.Load(); used < 2*8*n {
		t.Fatalf("%d bytes held a second after the answers were computed; want the unread answers' (at least %d)", used, 2*8*n)
	}
	// Other calls on the same connection, whose answers the client does read, release
	// nothing of the unread ones: answers, and refusals of about 1 KiB each (the first
	// version counted the connection's bytes: 8 MB of other calls' refusals, read,
	// released an unread answer for good).
	small := &inference.ModelInferRequest{ModelName: "echo",
		Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "FP64", Datatype: "FP64", Shape: []int64{1024}}},
		RawInputContents: [][]byte{raw[:8*1024]}}
	refused := &inference.ModelInferRequest{ModelName: strings.Repeat("x", 2000)}
	c := inference.NewGRPCInferenceServiceClient(conn)
	start := time.Now()
	for i := 0; i < 8000 && time.Since(start) < 2*time.Second; i++ {
		req := refused
		if i%8 == 0 {
			req = small
		}
		if _, err := c.ModelInfer(context.Background(), req); (err == nil) != (req == small) {
			t.Fatalf("call %d beside the unread answers: %v", i, err)
		}
	}
	if used := r.bodies.used.Load(); used < 2*8*n {
		t.Fatalf("%d bytes held after 8 MB of other answers were read on the connection; want the unread answers' (at least %d)", used, 2*8*n)
	}
	// WriteTimeout on, the connection is closed and nothing is held.
	waitHeld("past WriteTimeout", func(u int64) bool { return u == 0 })
	if s := conn.GetState(); s == connectivity.Ready {
		// The client sees its connection go (it reconnects when it next calls).
		time.Sleep(500 * time.Millisecond)
	}
	if _, err := grpcClientOf(t, addr).ModelInfer(context.Background(), req); err != nil {
		t.Fatalf("another client's call after the cut: %v", err)
	}
}

// TestAnswerMustFitTheBound: an answer counts under MaxHeldBytes with its request, and
// one that could never fit is 413 saying so, the bytes given back; the same outputs in
// binary fit. Before, answers were counted without refusal: JSON answers (an echoed id
// six times its length, floats several times their bytes) took 1.6 GB resident under a
// 64 MiB bound (found from outside, 2 Dec).
func TestAnswerMustFitTheBound(t *testing.T) {
	r := runtimeServing(t, Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 2 << 20}, "echo", modelgen.EchoOf("FP64"))
	const n = 100_000 // 800 KB in; its JSON answer about 2 MB
	data := make([]byte, 0, 8*n)
	for i := range n {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(float64(i)+0.123456789))
	}
	for _, tc := range []struct {
		params string
		code   int
	}{
		{``, 413},
		{`,"parameters":{"binary_data_output":true}`, 200},
	} {
		header := fmt.Sprintf(`{"inputs":[{"name":"FP64","shape":[%d],"datatype":"FP64","parameters":{"binary_data_size":%d}}]%s}`, n, len(data), tc.params)
		body, hl := binaryRequest(header, data)
		rec, _, _ := postBinary(t, r.Handler(), "/v2/models/echo/infer", body, hl)
		if rec.Code != tc.code || (tc.code == 413 && !strings.Contains(rec.Body.String(), "max-held-bytes")) {
			t.Errorf("answer %s = %d %.200s; want %d", tc.params, rec.Code, rec.Body.String(), tc.code)
		}
		if used := r.bodies.used.Load(); used != 0 {
			t.Errorf("after the answer %s: %d bytes still held", tc.params, used)
		}
	}
}

// TestGRPCAnswerRefusedIsCountedAsRefused: a gRPC answer that alone could never fit
// under MaxHeldBytes (its request did) is refused, RESOURCE_EXHAUSTED saying so, and
// counted as 413, not as served; the bytes are given back. Before, it was counted 200
// and then refused.
func TestGRPCAnswerRefusedIsCountedAsRefused(t *testing.T) {
	const n = 64 << 10 // 512 KiB of FP64 in, 1 MiB out
	r := runtimeServing(t, Config{LibraryPath: ortLib(t), MaxRequestBytes: 600 << 10, MaxHeldBytes: 768 << 10}, "doubled", modelgen.Doubled("FP64"))
	addr := serveGRPC(t, r)
	call := func(elems int) error {
		_, err := grpcClientOf(t, addr).ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "doubled",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP64", Shape: []int64{int64(elems)}}},
			RawInputContents: [][]byte{make([]byte, 8*elems)}})
		return err
	}
	if err := call(1000); err != nil {
		t.Fatalf("a small call: %v", err)
	}
	if err := call(n); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "max-held-bytes") {
		t.Fatalf("a call whose answer could never fit = %v; want RESOURCE_EXHAUSTED naming --max-held-bytes", err)
	}
	if used := r.bodies.used.Load(); used != 0 {
		t.Errorf("after the refused answer: %d bytes still held", used)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, line := range []string{
		`edgeward_runtime_requests_total{code="200",model="doubled",version="1.0.0"} 1`,
		`edgeward_runtime_request_errors_total{code="413",model="doubled",version="1.0.0"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), line) {
			t.Errorf("metrics lack %s:\n%s", line, grepLines(rec.Body.String(), "requests_total"))
		}
	}
}

// runtimeServing is a runtime with config cfg serving the model as NAME 1.0.0, closed
// when the test ends.
func runtimeServing(t *testing.T, cfg Config, name string, model []byte) *Runtime {
	t.Helper()
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), name+".onnx")
	if err := os.WriteFile(path, model, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: name, Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	return r
}
