package runtime

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func TestRunGate(t *testing.T) {
	g := newRunGate(1, 1)
	ctx := context.Background()
	if err := g.enter(ctx, true); err != nil {
		t.Fatalf("first enter: %v", err)
	}
	waiter := make(chan error, 1)
	go func() { waiter <- g.enter(ctx, true) }()
	waitFor(t, "one request waiting", func() bool { return g.queued() == 1 })

	// The wait is full: a serving request is refused at once, a probe waits.
	if err := g.enter(ctx, true); !isBusy(err) || !errors.Is(err, runtimeapi.ErrUnavailable) {
		t.Fatalf("serving enter with the wait full = %v; want errBusy (ErrUnavailable)", err)
	}
	if g.refused.Load() != 1 || g.queued() != 1 {
		t.Fatalf("after a refusal: refused %d, waiting %d; want 1, 1", g.refused.Load(), g.queued())
	}
	probe := make(chan error, 1)
	go func() { probe <- g.enter(ctx, false) }()
	waitFor(t, "the probe waiting beside the request", func() bool { return g.queued() == 2 })

	// A waiter whose context ends leaves the wait with its error and takes no slot.
	cctx, cancel := context.WithCancel(ctx)
	gone := make(chan error, 1)
	go func() { gone <- g.enter(cctx, false) }()
	waitFor(t, "a third waiter", func() bool { return g.queued() == 3 })
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter = %v; want context.Canceled", err)
	}
	waitFor(t, "the cancelled waiter gone", func() bool { return g.queued() == 2 })

	// Each leave lets exactly one waiter in; the slot count never passes 1.
	for i := range 2 {
		g.leave()
		var err error
		select {
		case err = <-waiter:
			waiter = nil
		case err = <-probe:
			probe = nil
		case <-time.After(10 * time.Second):
			t.Fatalf("leave %d let no waiter in", i)
		}
		if err != nil {
			t.Fatalf("waiter after leave %d: %v", i, err)
		}
		if g.running() != 1 {
			t.Fatalf("running %d after a waiter entered; want 1", g.running())
		}
	}
	g.leave()
	if g.running() != 0 || g.queued() != 0 {
		t.Fatalf("at rest: running %d, waiting %d", g.running(), g.queued())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestBusyRuntimeRefusesWhatCannotWait: with one run slot and room for one waiter, a
// long run in flight and a request waiting, the next inference request is refused at
// once over HTTP (503, Retry-After, a JSON error) and over gRPC (UNAVAILABLE) and
// counted, while a probe still waits for its turn; when the long run ends, the waiter
// and the probe both run. Without the gate every one of them would have started its own
// run (its own thread and arena memory) at once.
func TestBusyRuntimeRefusesWhatCannotWait(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a long model")
	}
	const n, k = 1024, 5000 // minutes on one thread: it runs until cancelled
	r, err := New(Config{LibraryPath: ortLib(t), MaxConcurrentRuns: 1, MaxWaitingRequests: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	loadIris(t, r, "1.0.0")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	long := make(chan error, 1)
	go func() {
		_, err := r.Infer(ctx, "chain", "", []Input{NewInput("x", runtimeapi.FP32, []int64{n, n}, make([]float64, n*n))}, nil)
		long <- err
	}()
	waitFor(t, "the long run holding the slot", func() bool { return r.gate.running() == 1 })

	iris := []Input{irisRows([4]float64{5.1, 3.5, 1.4, 0.2})}
	waiter := make(chan error, 1)
	go func() { _, err := r.Infer(context.Background(), "iris", "", iris, nil); waiter <- err }()
	waitFor(t, "a request waiting", func() bool { return r.gate.queued() == 1 })

	// HTTP: refused at once, with Retry-After.
	h := r.Handler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/v2/models/iris/infer",
		strings.NewReader(`{"inputs":[{"name":"X","datatype":"FP32","shape":[1,4],"data":[5.1,3.5,1.4,0.2]}]}`)))
	if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") != "1" ||
		!strings.Contains(rec.Body.String(), `"error":"unavailable: busy`) {
		t.Fatalf("HTTP infer while busy: %d Retry-After %q %s; want 503, Retry-After 1, a busy error",
			rec.Code, rec.Header().Get("Retry-After"), rec.Body.String())
	}

	// gRPC: UNAVAILABLE.
	_, err = grpcClient(t, r).ModelInfer(context.Background(), &inference.ModelInferRequest{
		ModelName: "iris",
		Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{1, 4},
			Contents: &inference.InferTensorContents{Fp32Contents: []float32{5.1, 3.5, 1.4, 0.2}}}},
	})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("gRPC infer while busy = %v; want UNAVAILABLE", err)
	}

	// A probe is not refused: it waits beside the request.
	probe := make(chan error, 1)
	go func() {
		_, err := r.Probe(context.Background(), "iris", "1.0.0", readProbeSet(t, "testdata/probes/iris/1.0.0.json"), nil)
		probe <- err
	}()
	waitFor(t, "the probe waiting", func() bool { return r.gate.queued() == 2 })
	select {
	case err := <-probe:
		t.Fatalf("probe ended while the slot was held: %v", err)
	default:
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		"edgeward_runtime_busy_refusals_total 2",
		"edgeward_runtime_runs_in_flight 1",
		"edgeward_runtime_requests_waiting 2",
		`edgeward_runtime_requests_total{code="503",model="iris",version="1.0.0"} 2`,
	} {
		if !strings.Contains(rec.Body.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}

	cancel()
	if err := <-long; !errors.Is(err, context.Canceled) {
		t.Fatalf("long run = %v; want context.Canceled", err)
	}
	for name, ch := range map[string]chan error{"waiting request": waiter, "probe": probe} {
		select {
		case err := <-ch:
			if err != nil {
				t.Errorf("%s after the slot freed: %v", name, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s never ran after the slot freed", name)
		}
	}
	if r.gate.running() != 0 || r.gate.queued() != 0 {
		t.Fatalf("at rest: running %d, waiting %d", r.gate.running(), r.gate.queued())
	}
}

// TestFloodIsAnsweredWithinTheBound: a burst of concurrent requests to a model whose
// runs take milliseconds, over real HTTP, with 2 run slots and 8 waiting: every request
// gets a 200 or a 503 with Retry-After (nothing else, no reset), the 503s are counted,
// at least one request of each kind happened, and the gate is at rest afterwards.
func TestFloodIsAnsweredWithinTheBound(t *testing.T) {
	if testing.Short() {
		t.Skip("floods a model")
	}
	const n, k, clients = 128, 40, 64
	r, err := New(Config{LibraryPath: ortLib(t), MaxConcurrentRuns: 2, MaxWaitingRequests: 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	body, hl := binaryRequest(fmt.Sprintf(`{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,%d],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}`, n, n, 4*n*n), make([]byte, 4*n*n))

	type answer struct {
		code       int
		retryAfter string
		err        error
	}
	answers := make(chan answer, clients)
	start := make(chan struct{})
	for range clients {
		go func() {
			<-start
			req, _ := http.NewRequest("POST", srv.URL+"/v2/models/chain/infer", strings.NewReader(string(body)))
			req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
			resp, err := srv.Client().Do(req)
			if err != nil {
				answers <- answer{err: err}
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			answers <- answer{code: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After")}
		}()
	}
	close(start)
	counts := map[int]int{}
	for range clients {
		a := <-answers
		switch {
		case a.err != nil:
			t.Fatalf("request failed: %v", a.err)
		case a.code == http.StatusServiceUnavailable && a.retryAfter != "1":
			t.Fatalf("503 without Retry-After: 1")
		case a.code != http.StatusOK && a.code != http.StatusServiceUnavailable:
			t.Fatalf("status %d; want 200 or 503", a.code)
		}
		counts[a.code]++
	}
	t.Logf("%d answered, %d refused busy", counts[200], counts[503])
	if counts[200] < 2+8 || counts[503] == 0 {
		t.Fatalf("200s %d, 503s %d: want at least the slots and the wait served, and some refused", counts[200], counts[503])
	}
	if got := r.gate.refused.Load(); got != int64(counts[503]) {
		t.Fatalf("refusals counted %d; want %d", got, counts[503])
	}
	if r.gate.running() != 0 || r.gate.queued() != 0 {
		t.Fatalf("at rest: running %d, waiting %d", r.gate.running(), r.gate.queued())
	}
}

// TestHeldBytesBound: with room for 1 MiB of requests, one upload of 600 KiB in progress
// leaves no room for another: the second is refused with 503 and Retry-After over
// HTTP and with UNAVAILABLE over gRPC, counted, while the first completes; once it has
// been answered, the same requests succeed and nothing stays taken.
func TestHeldBytesBound(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadIris(t, r, "1.0.0")
	const rows = 600 << 10 / 16 // its binary answer, half its size, counts too: 900 KB of the 1 MiB together
	raw := make([]byte, 0, rows*16)
	for range rows {
		raw = append(raw, f32Raw(5.1, 3.5, 1.4, 0.2)...)
	}
	body, hl := binaryRequest(fmt.Sprintf(`{"inputs":[{"name":"X","datatype":"FP32","shape":[%d,4],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"output_label","parameters":{"binary_data":true}}]}`, rows, len(raw)), raw)
	h := r.Handler()
	infer := func(b io.Reader) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/v2/models/iris/infer", b)
		req.ContentLength = int64(len(body))
		req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	grpcInfer := func() error {
		_, err := grpcClient(t, r).ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "iris",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "X", Datatype: "FP32", Shape: []int64{rows, 4}}},
			RawInputContents: [][]byte{raw}})
		return err
	}

	// The first upload stops one byte short.
	pr, pw := io.Pipe()
	first := make(chan *httptest.ResponseRecorder, 1)
	go func() { first <- infer(pr) }()
	if _, err := pw.Write(body[:len(body)-1]); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the first upload's bytes held", func() bool { return r.bodies.used.Load() >= int64(len(body)-1) })

	if rec := infer(strings.NewReader(string(body))); rec.Code != http.StatusServiceUnavailable ||
		rec.Header().Get("Retry-After") != "1" || !strings.Contains(rec.Body.String(), "request bodies held in memory") {
		t.Fatalf("second upload while the first is held: %d Retry-After %q %s; want 503 with Retry-After 1", rec.Code, rec.Header().Get("Retry-After"), rec.Body.String()[:min(rec.Body.Len(), 200)])
	}
	if err := grpcInfer(); status.Code(err) != codes.Unavailable {
		t.Fatalf("gRPC request while the first is held = %v; want UNAVAILABLE", err)
	}

	pw.Write(body[len(body)-1:])
	pw.Close()
	if rec := <-first; rec.Code != http.StatusOK {
		t.Fatalf("first upload: %d %.200s", rec.Code, rec.Body.String())
	}
	if got := r.bodies.used.Load(); got != 0 {
		t.Fatalf("%d bytes still taken after the first was answered", got)
	}
	if rec := infer(strings.NewReader(string(body))); rec.Code != http.StatusOK {
		t.Fatalf("second upload after the first: %d %.200s", rec.Code, rec.Body.String())
	}
	if err := grpcInfer(); err != nil {
		t.Fatalf("gRPC request after the first: %v", err)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{"edgeward_runtime_memory_refusals_total 2", "edgeward_runtime_request_bytes_held 0"} {
		if !strings.Contains(rec.Body.String(), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}
