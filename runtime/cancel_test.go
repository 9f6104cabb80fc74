package runtime

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// startedCtx is a cancellable context that reports the first call of Done: runWith asks
// for it only on its way into the ORT run (after validating and copying the inputs).
type startedCtx struct {
	context.Context
	once    sync.Once
	started chan struct{}
}

func (c *startedCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.started) })
	return c.Context.Done()
}

// TestCancelTerminatesALongRun: cancelling a request's context stops ONNX Runtime inside
// the run (RunOptions.Terminate, checked between operators), not after it. The chain of
// 5,000 MatMuls of 1024×1024 takes minutes on one thread (about 10 TFLOP); the request
// must come back within seconds of the cancel, with the context's error.
func TestCancelTerminatesALongRun(t *testing.T) {
	if testing.Short() {
		t.Skip("loads a 5,000-operator model")
	}
	const n, k = 1024, 5000
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := &startedCtx{Context: ctx, started: make(chan struct{})}
	x := NewInput("x", runtimeapi.FP32, []int64{n, n}, make([]float64, n*n))
	done := make(chan error, 1)
	go func() {
		_, err := r.Infer(sc, "chain", "", []Input{x}, nil)
		done <- err
	}()
	select {
	case <-sc.started:
	case err := <-done:
		t.Fatalf("Infer returned %v before running", err)
	}
	time.Sleep(200 * time.Millisecond) // well inside the run: one MatMul is milliseconds
	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Infer after cancel = %v; want context.Canceled", err)
		}
		t.Logf("returned %v after the cancel", time.Since(cancelled))
	case <-time.After(30 * time.Second):
		t.Fatal("the run went on for 30 s after its context was cancelled: it was not terminated")
	}

	// The terminated run's options were dropped: the next run of the model is not
	// stopped at once by a stale terminate flag.
	ctx2, cancel2 := context.WithCancel(context.Background())
	sc2 := &startedCtx{Context: ctx2, started: make(chan struct{})}
	done2 := make(chan error, 1)
	go func() {
		_, err := r.Infer(sc2, "chain", "", []Input{x}, nil)
		done2 <- err
	}()
	<-sc2.started
	select {
	case err := <-done2:
		t.Fatalf("the next run ended at once (%v): stale run options", err)
	case <-time.After(500 * time.Millisecond):
	}
	cancel2()
	if err := <-done2; !errors.Is(err, context.Canceled) {
		t.Fatalf("second run after cancel = %v; want context.Canceled", err)
	}
}

// TestUnloadDuringARequestLeavesNoSeries: a version unloaded while one of its requests
// runs loses its metric series at once, and the request, answering afterwards, does not
// bring them back (they would stay, frozen, for a version that is gone: a phantom in
// every dashboard after a rollout).
func TestUnloadDuringARequestLeavesNoSeries(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a model for about a second")
	}
	const n, k = 256, 3000 // 100 GFLOP: well over the time Unload takes to drop the series
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	h := r.Handler()
	metrics := func() string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	if !strings.Contains(metrics(), `edgeward_runtime_requests_total{code="200",model="chain",version="1.0.0"} 0`) {
		t.Fatal("a loaded version has no request series at 0")
	}

	body, hl := binaryRequest(fmt.Sprintf(`{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,%d],"parameters":{"binary_data_size":%d}}],"outputs":[{"name":"y","parameters":{"binary_data":true}}]}`, n, n, 4*n*n), make([]byte, 4*n*n))
	// Two requests in flight: one is answered (200), the other's client goes away
	// (an error, counted under its code for a loaded version).
	send := func(ctx context.Context) (*httptest.ResponseRecorder, chan struct{}) {
		sc := &startedCtx{Context: ctx, started: make(chan struct{})}
		req := httptest.NewRequestWithContext(sc, "POST", "/v2/models/chain/infer", bytes.NewReader(body))
		req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
		rec := httptest.NewRecorder()
		served := make(chan struct{})
		go func() {
			h.ServeHTTP(rec, req)
			close(served)
		}()
		<-sc.started
		return rec, served
	}
	rec, served := send(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	recGone, servedGone := send(ctx)
	unloaded := make(chan error, 1)
	go func() { unloaded <- r.Unload(context.Background(), "chain", "1.0.0") }()
	for strings.Contains(metrics(), `model="chain"`) {
		select {
		case <-served:
			t.Fatal("the run ended before Unload dropped the series: make the chain longer")
		case <-time.After(time.Millisecond):
		}
	}
	cancel()
	<-servedGone
	<-served
	if err := <-unloaded; err != nil {
		t.Fatalf("Unload: %v", err)
	}
	if rec.Code != 200 {
		t.Fatalf("the request in flight got %d: %s", rec.Code, rec.Body)
	}
	if recGone.Code < 400 {
		t.Fatalf("the cancelled request got %d", recGone.Code)
	}
	if m := metrics(); strings.Contains(m, `model="chain"`) {
		var lines []string
		for _, l := range strings.Split(m, "\n") {
			if strings.Contains(l, `model="chain"`) {
				lines = append(lines, l)
			}
		}
		t.Fatalf("series of the unloaded version came back:\n%s", strings.Join(lines, "\n"))
	}
}

// TestCancelledRequestIsNotAServerError: a request whose client goes away mid-run is
// counted as 499 (client closed request), over HTTP and over gRPC (CANCELED), never as a
// 5xx: a dashboard's server-error rate must not rise because clients are impatient.
func TestCancelledRequestIsNotAServerError(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a model for about a second")
	}
	const n, k = 256, 3000
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	h := r.Handler()

	body, hl := binaryRequest(fmt.Sprintf(`{"inputs":[{"name":"x","datatype":"FP32","shape":[%d,%d],"parameters":{"binary_data_size":%d}}]}`, n, n, 4*n*n), make([]byte, 4*n*n))
	ctx, cancel := context.WithCancel(context.Background())
	sc := &startedCtx{Context: ctx, started: make(chan struct{})}
	req := httptest.NewRequestWithContext(sc, "POST", "/v2/models/chain/infer", bytes.NewReader(body))
	req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
	rec := httptest.NewRecorder()
	served := make(chan struct{})
	go func() {
		h.ServeHTTP(rec, req)
		close(served)
	}()
	<-sc.started
	cancel()
	<-served
	if rec.Code != statusClientClosed {
		t.Errorf("cancelled HTTP request: %d; want %d", rec.Code, statusClientClosed)
	}

	gctx, gcancel := context.WithCancel(context.Background())
	gsc := &startedCtx{Context: gctx, started: make(chan struct{})}
	gerr := make(chan error, 1)
	go func() {
		_, err := (&grpcService{r: r}).ModelInfer(gsc, &inference.ModelInferRequest{
			ModelName:        "chain",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{n, n}}},
			RawInputContents: [][]byte{make([]byte, 4*n*n)},
		})
		gerr <- err
	}()
	<-gsc.started
	gcancel()
	if err := <-gerr; status.Code(err) != codes.Canceled {
		t.Errorf("cancelled gRPC call: %v; want CANCELED", err)
	}

	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	m := rec.Body.String()
	if want := `edgeward_runtime_request_errors_total{code="499",model="chain",version="1.0.0"} 2`; !strings.Contains(m, want) {
		t.Errorf("no %s in the metrics", want)
	}
	if strings.Contains(m, `code="5`) {
		t.Errorf("a cancelled request counted as a server error:\n%s", m)
	}
}

// TestGRPCDeadlineIsATimeout: a gRPC call whose client deadline passes during its run
// ends with DEADLINE_EXCEEDED and is counted as 504, whichever came first on the server:
// grpc-go's own deadline or the client's RST_STREAM at its deadline (counted as 499
// before, found from outside).
func TestGRPCDeadlineIsATimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a model for about a second")
	}
	const n, k = 512, 1000 // minutes of work: ended by the deadline
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	c := grpcClient(t, r)
	for range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := c.ModelInfer(ctx, &inference.ModelInferRequest{ModelName: "chain",
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{n, n}}},
			RawInputContents: [][]byte{make([]byte, 4*n*n)}})
		cancel()
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("a call past its deadline: %v; want DEADLINE_EXCEEDED", err)
		}
	}
	var metrics string
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(metrics, `edgeward_runtime_requests_total{code="504",model="chain",version="1.0.0"} 3`) {
		if time.Now().After(deadline) {
			t.Fatalf("the three calls not counted as 504:\n%s", grepLines(metrics, "requests_total"))
		}
		time.Sleep(10 * time.Millisecond)
		rec := httptest.NewRecorder()
		r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		metrics = rec.Body.String()
	}
}

// grepLines returns the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
