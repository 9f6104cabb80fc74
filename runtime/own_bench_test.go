package runtime

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"syscall"
	"testing"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// The "own work" benchmarks measure, for the Iris model at one row, what the runtime
// adds around session.Run in one process, without a network: the HTTP handler called
// directly (JSON and binary tensor data) and the gRPC service method. Compare ns/op and
// allocs/op with BenchmarkOwnSessionRun from the same run; the difference is the
// runtime's own work per request (decode, validate, tensors, run options, output copy,
// encode, metrics). Each also reports cpu-ns/op, the process's user+system CPU time per
// operation (getrusage): on a loaded machine wall time measures the queue for a core,
// CPU time still measures the work.

// reportCPU runs the benchmark loop f and reports its CPU time per operation.
func reportCPU(b *testing.B, f func()) {
	b.Helper()
	b.ReportAllocs()
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		f()
		n++
	}
	b.ReportMetric(float64((cpuTime(b)-start).Nanoseconds())/float64(max(n, 1)), "cpu-ns/op")
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

const irisJSON = `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}],"outputs":[{"name":"output_label"}]}`

func irisRuntime(b *testing.B) *Runtime {
	b.Helper()
	r := newTestRuntime(b)
	loadIris(b, r, "1.0.0")
	return r
}

func BenchmarkOwnSessionRun(b *testing.B) {
	r := irisRuntime(b)
	m, err := r.acquire("iris", "")
	if err != nil {
		b.Fatal(err)
	}
	defer m.inflight.Done()
	x, err := ort.NewTensor(ort.NewShape(1, 4), []float32{5.1, 3.5, 1.4, 0.2})
	if err != nil {
		b.Fatal(err)
	}
	defer x.Destroy()
	in, outs := []ort.Value{x}, make([]ort.Value, len(m.outputs))
	reportCPU(b, func() {
		clear(outs)
		if err := m.session.Run(in, outs); err != nil {
			b.Fatal(err)
		}
		for _, o := range outs {
			o.Destroy()
		}
	})
}

// discardWriter is a ResponseWriter that keeps nothing (httptest.ResponseRecorder's own
// allocations would be counted otherwise).
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }

func benchHandler(b *testing.B, body []byte, header http.Header) {
	r := irisRuntime(b)
	h := r.Handler()
	// A served request's context can be cancelled (net/http cancels it when the client
	// goes away), so the handler takes the path that watches it.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req := httptest.NewRequestWithContext(ctx, "POST", "/v2/models/iris/infer", nil)
	for k, v := range header {
		req.Header[k] = v
	}
	rd := bytes.NewReader(body)
	w := &discardWriter{h: http.Header{}}
	reportCPU(b, func() {
		rd.Reset(body)
		req.Body = readCloser{rd}
		req.ContentLength = int64(len(body))
		clear(w.h)
		h.ServeHTTP(w, req)
		if w.code != http.StatusOK {
			b.Fatalf("status %d", w.code)
		}
	})
}

type readCloser struct{ *bytes.Reader }

func (readCloser) Close() error { return nil }

func BenchmarkOwnHTTPJSON(b *testing.B) {
	benchHandler(b, []byte(irisJSON), nil)
}

func BenchmarkOwnHTTPBinary(b *testing.B) {
	header := `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}],"outputs":[{"name":"output_label","parameters":{"binary_data":true}}]}`
	body, hl := binaryRequest(header, f32Raw(5.1, 3.5, 1.4, 0.2))
	benchHandler(b, body, http.Header{"Inference-Header-Content-Length": {strconv.Itoa(hl)}})
}

func BenchmarkOwnGRPC(b *testing.B) {
	r := irisRuntime(b)
	g := &grpcService{r: r}
	req := irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1)
	// A gRPC call's context is cancellable (the client may go away), as benchHandler's.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reportCPU(b, func() {
		if _, err := g.ModelInfer(ctx, req); err != nil {
			b.Fatal(err)
		}
	})
}
