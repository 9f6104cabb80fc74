package runtime

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// The benchmarks compare, for the same model (generated vibration 1.1.0, one row) and
// thread settings (Config defaults: 1 intra-op, 1 inter-op thread), the in-process
// session.Run with the full HTTP path (loopback, keep-alive, JSON both ways). Each
// reports p50/p99 latency in µs besides ns/op (1e9/ns/op is the serial throughput);
// BenchmarkInferRatio interleaves both and reports HTTP/session ratios.

const benchBody = `{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[2.1,3.0,3.1,44]}]}`

func benchRuntime(b *testing.B) (*Runtime, *Model) {
	b.Helper()
	r := newTestRuntime(b)
	path := filepath.Join(vibrationDir(b), "models", "vibration", "1.1.0.onnx")
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "vibration", Version: "1.1.0", Path: path}); err != nil {
		b.Fatal(err)
	}
	m, err := r.acquire("vibration", "1.1.0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(m.inflight.Done)
	return r, m
}

func reportLatency(b *testing.B, prefix string, lat []time.Duration) (p50, p99 float64) {
	p50, p99, _ = Latency(lat)
	b.ReportMetric(p50*1000, prefix+"p50-µs")
	b.ReportMetric(p99*1000, prefix+"p99-µs")
	return p50, p99
}

// sessionRun is one in-process ORT run with prebuilt input tensors.
type sessionRun struct {
	m    *Model
	in   []ort.Value
	outs []ort.Value
}

func newSessionRun(b *testing.B, m *Model) *sessionRun {
	x, err := ort.NewTensor(ort.NewShape(1, 4), []float32{2.1, 3.0, 3.1, 44})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { x.Destroy() })
	return &sessionRun{m: m, in: []ort.Value{x}, outs: make([]ort.Value, len(m.outputs))}
}

func (s *sessionRun) run(b *testing.B) {
	clear(s.outs)
	if err := s.m.session.Run(s.in, s.outs); err != nil {
		b.Fatal(err)
	}
	for _, o := range s.outs {
		o.Destroy()
	}
}

func httpInfer(b *testing.B, c *http.Client, url string) {
	resp, err := c.Post(url, "application/json", bytes.NewReader([]byte(benchBody)))
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("status %d", resp.StatusCode)
	}
}

func BenchmarkInferSessionRun(b *testing.B) {
	_, m := benchRuntime(b)
	s := newSessionRun(b, m)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		s.run(b)
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, "", lat)
}

// BenchmarkInferRuntime is Runtime.Infer: validation, tensor building and output copy
// around session.Run, without HTTP.
func BenchmarkInferRuntime(b *testing.B) {
	r, _ := benchRuntime(b)
	in := []Input{NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{2.1, 3.0, 3.1, 44})}
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		if _, err := r.Infer(ctx, "vibration", "", in, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, "", lat)
}

func BenchmarkInferHTTP(b *testing.B) {
	r, _ := benchRuntime(b)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	c, url := srv.Client(), srv.URL+"/v2/models/vibration/infer"
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		httpInfer(b, c, url)
		lat = append(lat, time.Since(t))
	}
	reportLatency(b, "", lat)
}

// BenchmarkInferRatio runs one session.Run and one HTTP request per iteration and
// reports both latencies and the HTTP/session ratios of p50, p99 and throughput.
func BenchmarkInferRatio(b *testing.B) {
	r, m := benchRuntime(b)
	s := newSessionRun(b, m)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	c, url := srv.Client(), srv.URL+"/v2/models/vibration/infer"
	var sessTotal, httpTotal time.Duration
	sess := make([]time.Duration, 0, b.N)
	web := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		t := time.Now()
		s.run(b)
		d := time.Since(t)
		sess, sessTotal = append(sess, d), sessTotal+d
		t = time.Now()
		httpInfer(b, c, url)
		d = time.Since(t)
		web, httpTotal = append(web, d), httpTotal+d
	}
	sp50, sp99 := reportLatency(b, "session-", sess)
	hp50, hp99 := reportLatency(b, "http-", web)
	b.ReportMetric(hp50/sp50, "p50-ratio")
	b.ReportMetric(hp99/sp99, "p99-ratio")
	b.ReportMetric(float64(b.N)/sessTotal.Seconds(), "session-req/s")
	b.ReportMetric(float64(b.N)/httpTotal.Seconds(), "http-req/s")
}
