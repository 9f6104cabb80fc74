package runtime

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the runtime's Prometheus series, in a registry of their own (no global
// state, so several Runtimes in one process — tests — do not collide).
type metrics struct {
	reg         *prometheus.Registry
	requests    *prometheus.CounterVec   // model, version, code
	errors      *prometheus.CounterVec   // model, version, code
	latency     *prometheus.HistogramVec // model, version
	modelLoaded *prometheus.GaugeVec     // model, version, default
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeward_runtime_requests_total",
			Help: "Inference requests by model, version and HTTP status code.",
		}, []string{"model", "version", "code"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "edgeward_runtime_request_errors_total",
			Help: "Inference requests that failed, by model, version and HTTP status code.",
		}, []string{"model", "version", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "edgeward_runtime_request_duration_seconds",
			Help:    "Inference request latency (decode, run, encode) by model and version.",
			Buckets: prometheus.ExponentialBuckets(50e-6, 2, 18), // 50µs … ~6.5s
		}, []string{"model", "version"}),
		modelLoaded: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "edgeward_runtime_model_loaded",
			Help: "1 for each loaded model version; default=\"true\" marks the version unversioned requests reach.",
		}, []string{"model", "version", "default"}),
	}
	m.reg.MustRegister(m.requests, m.errors, m.latency, m.modelLoaded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// watchGate exports g's runs in flight, requests waiting and refusals, b's bytes held
// and refusals, and reads' gRPC messages being read and refusals.
func (m *metrics) watchGate(g *runGate, b *byteBudget, reads *readGate) {
	m.reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeward_runtime_runs_in_flight",
			Help: "ONNX Runtime runs in flight, across models (at most --max-concurrent-runs).",
		}, func() float64 { return float64(g.running()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeward_runtime_requests_waiting",
			Help: "Inference requests and probe runs waiting for a run slot.",
		}, func() float64 { return float64(g.queued()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgeward_runtime_busy_refusals_total",
			Help: "Inference requests refused with 503 (gRPC UNAVAILABLE) because every run slot, or every gRPC read slot, was busy and the wait was full (--max-waiting).",
		}, func() float64 { return float64(g.refused.Load() + reads.refused.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeward_runtime_grpc_messages_reading",
			Help: "gRPC ModelInfer messages being read (at most --max-held-bytes / --max-request-bytes).",
		}, func() float64 { return float64(reads.running()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeward_runtime_grpc_calls_waiting_to_read",
			Help: "gRPC ModelInfer calls waiting for a read slot.",
		}, func() float64 { return float64(reads.waitingCalls()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgeward_runtime_grpc_reads_preempted_total",
			Help: "gRPC ModelInfer messages whose read was ended (DEADLINE_EXCEEDED) because it had lasted the read grace while other calls waited for a read slot.",
		}, func() float64 { return float64(reads.preempted.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeward_runtime_request_bytes_held",
			Help: "Bytes of inference requests (bodies, decoded tensors) held in memory (at most --max-held-bytes).",
		}, func() float64 { return float64(b.used.Load()) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "edgeward_runtime_memory_refusals_total",
			Help: "Inference requests refused with 503 (gRPC UNAVAILABLE) because their bytes would pass --max-held-bytes.",
		}, func() float64 { return float64(b.refused.Load()) }),
	)
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// servedSeries are one loaded version's series for answered requests, resolved once
// when it loads: looking the labels up was most of observe's cost (0.6 µs per request,
// perf), and a request still running when its version unloads must not bring the
// deleted series back (see Runtime.observeInfer).
type servedSeries struct {
	ok      prometheus.Counter  // requests_total{code="200"}
	latency prometheus.Observer // request_duration_seconds
}

func (m *metrics) served(model, version string) servedSeries {
	return servedSeries{ok: m.requests.WithLabelValues(model, version, "200"), latency: m.latency.WithLabelValues(model, version)}
}

func (m *metrics) observe(model, version string, code int, d time.Duration) {
	codeLabel := codeString(code)
	m.requests.WithLabelValues(model, version, codeLabel).Inc()
	if code >= 400 {
		m.errors.WithLabelValues(model, version, codeLabel).Inc()
	}
	if code < 400 {
		m.latency.WithLabelValues(model, version).Observe(d.Seconds())
	}
}

// codeString is strconv.Itoa without an allocation for the common codes.
func codeString(code int) string {
	switch code {
	case http.StatusOK:
		return "200"
	case http.StatusBadRequest:
		return "400"
	case http.StatusNotFound:
		return "404"
	}
	return strconv.Itoa(code)
}

// loaded marks a version loaded; prev and def are the model's default before and after
// (a load with LoadRequest.Default takes the mark from the previous default).
func (m *metrics) loaded(model, version, prev, def string) {
	m.setLoaded(model, version, version == def)
	if prev != "" && prev != def {
		m.setLoaded(model, prev, false)
	}
}

func (m *metrics) setLoaded(model, version string, isDefault bool) {
	m.modelLoaded.DeleteLabelValues(model, version, "true")
	m.modelLoaded.DeleteLabelValues(model, version, "false")
	d := "false"
	if isDefault {
		d = "true"
	}
	m.modelLoaded.WithLabelValues(model, version, d).Set(1)
}

func (m *metrics) defaultChanged(model, old, new string) {
	if old != "" && old != new {
		m.setLoaded(model, old, false)
	}
	m.setLoaded(model, new, true)
}

// unloaded forgets every series of a version, so label cardinality follows what is
// loaded rather than everything ever loaded.
func (m *metrics) unloaded(model, version string) {
	l := prometheus.Labels{"model": model, "version": version}
	m.modelLoaded.DeletePartialMatch(l)
	m.latency.DeletePartialMatch(l)
	m.requests.DeletePartialMatch(l)
	m.errors.DeletePartialMatch(l)
}
