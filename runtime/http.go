package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/buildinfo"
	"github.com/edgeward/edgeward/internal/jsonstrict"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Handler returns the public HTTP API: the Open Inference Protocol (KServe v2) and
// /metrics. Applications on the device call it; it cannot load or unload models.
func (r *Runtime) Handler() http.Handler {
	mux := http.NewServeMux()
	r.publicRoutes(mux)
	mux.HandleFunc("GET /v2", r.serverMetadata("binary_tensor_data"))
	h := r.recoverer(mux)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.draining.Load() {
			// Close each connection after its response, so clients move to new
			// connections (served by the next runtime process on a shared socket) without
			// the server having to close idle keep-alive connections under them.
			w.Header().Set("Connection", "close")
		}
		h.ServeHTTP(w, req)
	})
}

// ControlHandler returns the public API plus the agent's control API: the KServe
// model-repository extension (index, load, unload), Edgeward's default switch and probe.
// Serve it only where the agent alone can reach it (a unix socket or loopback).
func (r *Runtime) ControlHandler() http.Handler {
	mux := http.NewServeMux()
	r.publicRoutes(mux)
	mux.HandleFunc("GET /v2", r.serverMetadata("binary_tensor_data", "model_repository", "edgeward_probe"))
	mux.HandleFunc("POST /v2/repository/index", r.handleIndex)
	mux.HandleFunc("POST /v2/repository/models/{name}/load", r.handleLoad)
	mux.HandleFunc("POST /v2/repository/models/{name}/unload", r.handleUnload)
	mux.HandleFunc("POST /v2/repository/models/{name}/versions/{version}/default", r.handleDefault)
	mux.HandleFunc("POST /v2/models/{name}/versions/{version}/probe", r.handleProbe)
	mux.HandleFunc("GET /v2/models/{name}/drift", r.handleDrift)
	mux.HandleFunc("GET /v2/models/{name}/versions/{version}/drift", r.handleDrift)
	return r.recoverer(mux)
}

func (r *Runtime) publicRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /v2/health/live", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]bool{"live": true})
	})
	mux.HandleFunc("GET /v2/health/ready", func(w http.ResponseWriter, _ *http.Request) {
		code := http.StatusOK
		if !r.Ready() {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, map[string]bool{"ready": code == http.StatusOK})
	})
	mux.HandleFunc("GET /v2/models/{name}", r.handleMetadata)
	mux.HandleFunc("GET /v2/models/{name}/versions/{version}", r.handleMetadata)
	mux.HandleFunc("GET /v2/models/{name}/ready", r.handleModelReady)
	mux.HandleFunc("GET /v2/models/{name}/versions/{version}/ready", r.handleModelReady)
	mux.HandleFunc("POST /v2/models/{name}/infer", r.handleInfer)
	mux.HandleFunc("POST /v2/models/{name}/versions/{version}/infer", r.handleInfer)
	mux.Handle("GET /metrics", r.metrics.handler())
	mux.HandleFunc("/", func(w http.ResponseWriter, req *http.Request) {
		// A path served under other methods is 405 with Allow (RFC 9110), as the
		// mux would answer without this catch-all; anything else is 404. Both in JSON,
		// as every error of the API.
		if allow := allowed(mux, req); allow != "" {
			w.Header().Set("Allow", allow)
			writeError(w, http.StatusMethodNotAllowed, fmt.Errorf("method %s not allowed: %s takes %s", req.Method, req.URL.Path, allow))
			return
		}
		writeError(w, http.StatusNotFound, fmt.Errorf("no endpoint %s %s", req.Method, req.URL.Path))
	})
}

// allowed lists the methods mux serves req's path under (a GET route serves HEAD too),
// "" when none: only the catch-all's.
func allowed(mux *http.ServeMux, req *http.Request) string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost} {
		probe := *req
		probe.Method = m
		if _, pattern := mux.Handler(&probe); pattern != "" && pattern != "/" {
			out = append(out, m)
		}
	}
	return strings.Join(out, ", ")
}

// recoverer turns a panic in a handler into a 500 so that one bad request cannot take the
// process down (ORT itself is only ever given validated tensors).
func (r *Runtime) recoverer(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		defer func() {
			if p := recover(); p != nil {
				if p == http.ErrAbortHandler {
					panic(p)
				}
				r.log.Error("handler panic", "path", req.URL.Path, "panic", fmt.Sprint(p))
				writeError(w, http.StatusInternalServerError, errors.New("internal error"))
			}
		}()
		h.ServeHTTP(w, req)
	})
}

// serverMetadata answers GET /v2: the server's name, its own version (the build's, from
// its module and commit), the extensions given and the ONNX Runtime library's version
// beside. Each port advertises only the extensions it serves, so that a conformance
// suite exercising one finds it: binary tensors on the public port; the control API
// adds the model repository and Edgeward's probe.
func (r *Runtime) serverMetadata(extensions ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{
			"name":        "edgeward-runtime",
			"version":     serverVersion(),
			"extensions":  extensions,
			"onnxruntime": r.ORTVersion(),
		})
	}
}

// serverVersion is the runtime's version for server metadata: the module version, and
// the commit for a build from a work tree ("(devel)").
func serverVersion() string {
	bi := buildinfo.Read()
	if bi.Version != "(devel)" || bi.Commit == "unknown" {
		return bi.Version
	}
	return bi.Version + "+" + bi.Commit[:min(12, len(bi.Commit))]
}

func (r *Runtime) handleMetadata(w http.ResponseWriter, req *http.Request) {
	info, err := r.Metadata(req.PathValue("name"), req.PathValue("version"))
	if err != nil {
		if isBusy(err) {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (r *Runtime) handleModelReady(w http.ResponseWriter, req *http.Request) {
	name, version := req.PathValue("name"), req.PathValue("version")
	if _, err := r.Metadata(name, version); err != nil {
		if isBusy(err) {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"name": name, "ready": true})
}

func (r *Runtime) handleInfer(w http.ResponseWriter, req *http.Request) {
	start := time.Now()
	name, version := req.PathValue("name"), req.PathValue("version")
	code, m, served, err := r.serveInfer(w, req, name, version)
	if err != nil {
		if isBusy(err) {
			w.Header().Set("Retry-After", "1")
		}
		writeError(w, code, err)
	}
	r.observeInfer(m, name, served, code, time.Since(start))
}

// observeInfer counts an inference request: one that reached the loaded version m
// through its own series, one that did not (m nil: refused before a version was taken)
// under the version it would have reached (served; none for an unknown model, so that
// arbitrary names make no series). A request to a version that has since been unloaded
// is not counted: its series are gone, and counting would bring them back for good.
//
// An answered request counts through the series resolved at load (after an unload they
// are no longer exported, so a late count is lost, not revived). Anything else looks its
// series up by label, which would create them: it does so under r.mu's read lock, after
// checking that the version is still loaded, as Unload drops series under the write lock.
func (r *Runtime) observeInfer(m *Model, name, served string, code int, d time.Duration) {
	if m != nil && code == http.StatusOK {
		if !m.unloaded.Load() {
			m.series.ok.Inc()
			m.series.latency.Observe(d.Seconds())
		}
		return
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	switch {
	case m != nil:
		if m.unloaded.Load() {
			return
		}
	case served != "":
		if _, err := r.lookupLocked(name, served); err != nil {
			return // unloaded since the request was refused: its series are gone
		}
	default:
		name = ""
	}
	r.metrics.observe(name, served, code, d)
}

// serveInfer returns the status code, the version that served the request (nil when
// none was taken), the version it reached or would have ("" when the model is unknown)
// and the error to report, if any.
func (r *Runtime) serveInfer(w http.ResponseWriter, req *http.Request, name, version string) (int, *Model, string, error) {
	// Read and decode before taking a reference on a version, so that a slow upload
	// cannot hold an old version's session open during a swap.
	for _, ce := range req.Header.Values("Content-Encoding") { // every one: "identity" first hid a "gzip"
		if ce != "" && !strings.EqualFold(strings.TrimSpace(ce), "identity") {
			err := fmt.Errorf("request content encoding %.32q is not supported: send it uncompressed", ce)
			return http.StatusUnsupportedMediaType, nil, r.servedVersion(name, version), err
		}
	}
	hl, err := headerLength(req.Header)
	if err != nil {
		return statusOf(err), nil, r.servedVersion(name, version), err
	}
	s := r.getScratch()
	defer r.putScratch(s)
	body, held, err := readBodyWithin(w, req, r.cfg.maxRequestBytes(), s.body, r.bodies)
	if err != nil {
		return statusOf(err), nil, r.servedVersion(name, version), err
	}
	defer r.bodies.give(held)
	s.body = body
	if err := s.decode(body, hl, r.cfg.maxElements(), r.bodies.roomFor(held)); err != nil {
		return statusOf(err), nil, r.servedVersion(name, version), err
	}
	// The tensors decoded from JSON are held beside the body until the answer.
	decoded := s.decodedBytes()
	if err := r.bodies.takeFor(held, decoded); err != nil {
		return statusOf(err), nil, r.servedVersion(name, version), err
	}
	defer r.bodies.give(decoded)
	m, err := r.acquire(name, version)
	if err != nil {
		return statusOf(err), nil, "", err
	}
	released := false
	defer func() {
		if !released {
			m.inflight.Done()
		}
	}()
	outs, err := m.runWith(req.Context(), s.inputs, s.names, true, &s.run)
	if err != nil {
		return statusOf(err), m, m.version, err
	}
	bin := binaryOutputs(&s.req, outs, s.bin)
	if bin != nil {
		s.bin = bin
	}
	// The answer's bytes count as held until written, within WriteTimeout (a client
	// that does not read is cut off then), and like any request's bytes they must fit:
	// counted without refusal, JSON answers (an echoed id is six times its size escaped,
	// a float its digits) took 1.6 GB resident under a 64 MiB bound (found from outside,
	// 2 Dec). They are taken as the answer is encoded, ahead of each piece by its
	// longest form (answerBuf), so that an answer is refused before it is built, not
	// after. A refused answer is 503 when the runtime is busy, 413 when it alone could
	// never fit (binary outputs are a fraction of their JSON).
	ab := answerBuf{b: s.resp[:0], own: held + decoded, budget: r.bodies}
	n, err := ab.encode(m.name, m.version, s.req.ID, outs, bin)
	s.resp = ab.b
	defer func() { r.bodies.give(ab.taken) }()
	if err != nil {
		return statusOf(err), m, m.version, err
	}
	ab.settle() // what the longest forms did not use
	h := w.Header()
	if bin != nil {
		h["Content-Type"] = octetStreamType
		h[runtimeapi.HeaderLengthHeader] = []string{strconv.Itoa(n)}
	} else {
		h["Content-Type"] = jsonType
	}
	h["Content-Length"] = []string{strconv.Itoa(len(s.resp))}
	// The answer is encoded: the version is free to go (an unload need not wait for
	// this client to read).
	m.inflight.Done()
	released = true
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(r.cfg.writeTimeout()))
	w.WriteHeader(http.StatusOK)
	w.Write(s.resp)
	return http.StatusOK, m, m.version, nil
}

// Content-Type values of infer answers, shared by all (never modified in place: Header's
// Set and Add replace or copy a whole slice).
var (
	jsonType        = []string{"application/json"}
	octetStreamType = []string{"application/octet-stream"}
)

// inferScratch is the memory one inference request needs: the body, the decoded request
// and inputs, the run's slices and the response. The runtime keeps a pool of them, so
// that a request in the usual shape allocates little beyond what ONNX Runtime does. Its
// contents are valid until it is put back.
type inferScratch struct {
	body   []byte
	req    runtimeapi.InferRequest
	inputs []Input
	names  []string
	data   [][]byte // element buffers, one per input decoded from JSON
	run    runScratch
	bin    []bool // which outputs are sent as binary data
	resp   []byte
}

// maxPooledBytes bounds the buffers a pooled inferScratch keeps: a rare large request
// does not pin its memory for the life of the process.
const maxPooledBytes = 64 << 10

func (r *Runtime) getScratch() *inferScratch {
	if s, ok := r.scratch.Get().(*inferScratch); ok {
		return s
	}
	return &inferScratch{}
}

// putScratch drops s's references into the request and ONNX Runtime's memory and
// returns it to the pool, without buffers larger than maxPooledBytes.
func (r *Runtime) putScratch(s *inferScratch) {
	if cap(s.body) > maxPooledBytes {
		s.body = nil
	}
	if cap(s.resp) > maxPooledBytes {
		s.resp = nil
	}
	for i, d := range s.data {
		if cap(d) > maxPooledBytes {
			s.data[i] = nil
		}
	}
	clear(s.inputs[:cap(s.inputs)])
	s.run.reset()
	for i := range s.req.Inputs {
		s.req.Inputs[i].Data = nil
		keepParams(&s.req.Inputs[i].Parameters)
	}
	for i := range s.req.Outputs {
		keepParams(&s.req.Outputs[i].Parameters)
	}
	keepParams(&s.req.Parameters)
	r.scratch.Put(s)
}

// keepParams keeps a parameters map for the next request, emptied of the values that
// point into this one's body; a large one (a rare request) is dropped.
func keepParams(m *map[string]json.RawMessage) {
	if len(*m) > 8 {
		*m = nil
		return
	}
	clear(*m)
}

// servedVersion is the version a request for name and version would reach, "" when none
// (for metrics labels of requests that failed before reaching a model).
func (r *Runtime) servedVersion(name, version string) string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, err := r.lookupLocked(name, version)
	if err != nil {
		return ""
	}
	return m.version
}

// answerBuf is an inference answer being encoded whose bytes are taken from the byte
// budget before they are written: each piece (a name, a chunk of elements) is reserved
// at its longest form first, so that at most one chunk's worst case is taken beyond the
// bytes written, and an answer that does not fit is refused before it is built.
type answerBuf struct {
	b      []byte
	taken  int64 // bytes taken from budget for b; the caller gives them back
	own    int64 // what the request holds besides
	budget *byteBudget
	// overran records that a piece was written past what was reserved for it: a
	// longest form too short (a bug; TestAnswerReservationsAreEnough checks it).
	overran bool
}

// jsonChunk is how many elements answerBuf reserves at once, and answerStep the least
// it takes from the budget at once.
const (
	jsonChunk  = 1024
	answerStep = 4 << 10
)

// reserve makes sure that more bytes may be appended to a.b, taking what is missing.
// The buffer's capacity is counted too when it grows (doubling, counted first, or as
// much of it as the budget has room for): counted by length only, a doubled buffer held up to twice what was counted until it was written
// (found in review, 2 Dec).
func (a *answerBuf) reserve(more int) error {
	if int64(len(a.b)) > a.taken {
		a.overran = true
	}
	need := int64(len(a.b)) + int64(more)
	if need > a.taken {
		// Ahead by at least answerStep, so that a small answer takes once: refused
		// that, exactly what is missing.
		if ahead := max(need, a.taken+answerStep); a.budget.take(ahead - a.taken) {
			a.taken = ahead
		} else if err := a.budget.takeFor(a.own+a.taken, need-a.taken); err != nil {
			return err
		} else {
			a.taken = need
		}
	}
	if need > int64(cap(a.b)) {
		// Doubling, not append's quarter steps: those allocate five times the final
		// size on the way to it.
		// Near the bound, as much of the doubling as the budget has room for (halving
		// what is asked): growing by what each piece needs alone copied the answer
		// once a piece.
		c := max(need, 2*int64(cap(a.b)))
		for c > a.taken && !a.budget.take(c-a.taken) {
			c = a.taken + (c-a.taken)/2
		}
		a.taken = max(a.taken, c)
		b := make([]byte, len(a.b), c)
		copy(b, a.b)
		a.b = b
	}
	return nil
}

// settle gives back what a.taken holds beyond the buffer that is kept: its capacity
// (a pooled buffer's capacity, never counted, is not given back either).
func (a *answerBuf) settle() {
	keep := min(a.taken, max(int64(cap(a.b)), int64(len(a.b))))
	a.budget.give(a.taken - keep)
	a.taken = keep
}

// encode appends the answer to a.b: JSON alone when bin is nil, else a JSON header
// (its length n) followed by the raw bytes of each output marked in bin, in order
// (binary tensor extension). Outputs not marked are in the JSON as data. On an error
// (the budget refused a piece) a.b holds part of an answer.
func (a *answerBuf) encode(model, version, id string, outs []Output, bin []bool) (n int, err error) {
	start := len(a.b)
	str := func(prefix, s string) error {
		if err := a.reserve(len(prefix) + 6*len(s) + 2); err != nil {
			return err
		}
		a.b = append(a.b, prefix...)
		a.b = appendJSONString(a.b, s)
		return nil
	}
	if err := str(`{"model_name":`, model); err != nil {
		return 0, err
	}
	if err := str(`,"model_version":`, version); err != nil {
		return 0, err
	}
	if id != "" {
		if err := str(`,"id":`, id); err != nil {
			return 0, err
		}
	}
	if err := a.reserve(len(`,"outputs":[`)); err != nil {
		return 0, err
	}
	a.b = append(a.b, `,"outputs":[`...)
	for i := range outs {
		o := &outs[i]
		prefix := `{"name":`
		if i > 0 {
			prefix = `,{"name":`
		}
		if err := str(prefix, o.Name); err != nil {
			return 0, err
		}
		if err := a.reserve(len(`,"datatype":"`) + len(o.Datatype) + len(`","shape":[`) + 21*len(o.Shape) +
			len(`],"parameters":{"binary_data_size":`) + 21 + len(`]}`) + 2); err != nil {
			return 0, err
		}
		a.b = append(a.b, `,"datatype":"`...)
		a.b = append(a.b, o.Datatype...)
		a.b = append(a.b, `","shape":[`...)
		for j, d := range o.Shape {
			if j > 0 {
				a.b = append(a.b, ',')
			}
			a.b = strconv.AppendInt(a.b, d, 10)
		}
		if bin != nil && bin[i] {
			a.b = append(a.b, `],"parameters":{"binary_data_size":`...)
			a.b = strconv.AppendInt(a.b, int64(o.binarySize()), 10)
			a.b = append(a.b, "}}"...)
			continue
		}
		a.b = append(a.b, `],"data":[`...)
		for from := 0; from < o.n; {
			to, most := from, 0
			for to < o.n && (to == from || to-from < jsonChunk && most < 64<<10) {
				most += o.jsonElementMax(to)
				to++
			}
			if err := a.reserve(most + 2); err != nil {
				return 0, err
			}
			a.b = o.appendJSON(a.b, from, to)
			from = to
		}
		a.b = append(a.b, "]}"...)
	}
	if err := a.reserve(3); err != nil {
		return 0, err
	}
	if bin == nil {
		a.b = append(a.b, "]}\n"...)
		return len(a.b) - start, nil
	}
	a.b = append(a.b, "]}"...)
	n = len(a.b) - start
	for i := range outs {
		if bin[i] {
			if err := a.reserve(outs[i].binarySize()); err != nil {
				return 0, err
			}
			a.b = outs[i].appendBinary(a.b)
		}
	}
	return n, nil
}

// appendJSONString appends s as a JSON string: as is when it is printable ASCII without
// quotes or backslashes (model names, versions, most ids), else as encoding/json writes it.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s)
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

func (r *Runtime) handleIndex(w http.ResponseWriter, _ *http.Request) {
	idx := r.Index()
	if idx == nil {
		idx = []runtimeapi.IndexEntry{}
	}
	writeJSON(w, http.StatusOK, idx)
}

func (r *Runtime) handleLoad(w http.ResponseWriter, req *http.Request) {
	var lr runtimeapi.LoadRequest
	if err := decodeBody(w, req, r.cfg.maxRequestBytes(), &lr); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	lr.Name = req.PathValue("name")
	info, err := r.Load(req.Context(), lr)
	if err != nil {
		r.log.Warn("model load failed", "model", lr.Name, "version", lr.Version, "err", err)
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

func (r *Runtime) handleUnload(w http.ResponseWriter, req *http.Request) {
	var ur runtimeapi.UnloadRequest
	if err := decodeBody(w, req, r.cfg.maxRequestBytes(), &ur); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	if err := r.Unload(req.Context(), req.PathValue("name"), ur.Version); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": req.PathValue("name"), "version": ur.Version, "state": "UNAVAILABLE"})
}

func (r *Runtime) handleDefault(w http.ResponseWriter, req *http.Request) {
	name, version := req.PathValue("name"), req.PathValue("version")
	if err := r.SetDefault(name, version); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": name, "default": version})
}

func (r *Runtime) handleProbe(w http.ResponseWriter, req *http.Request) {
	var pr runtimeapi.ProbeRequest
	if err := decodeBody(w, req, r.cfg.maxRequestBytes(), &pr); err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	rep, err := r.Probe(req.Context(), req.PathValue("name"), req.PathValue("version"), &pr.Probe, pr.Gates)
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

func (r *Runtime) handleDrift(w http.ResponseWriter, req *http.Request) {
	rep, err := r.Drift(req.PathValue("name"), req.PathValue("version"))
	if err != nil {
		writeError(w, statusOf(err), err)
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// readBody reads at most max bytes of the request body; a larger body is ErrInvalid. A
// body is read into buf's memory while it fits, then into a buffer that grows, doubling,
// as the bytes arrive (up to the announced length, or to max): a client that announces
// max bytes and sends a few costs a few KiB while it holds its connection, not max.
func readBody(w http.ResponseWriter, req *http.Request, max int64, buf []byte) ([]byte, error) {
	body, _, err := readBodyWithin(w, req, max, buf, nil)
	return body, err
}

// readBodyWithin is readBody taking the memory it reads into from b (nil: no bound)
// before it reads into it: held is what it took, which the caller gives back when it is
// done with the body. What is taken follows what arrived, not what was announced nor
// the size of buf: each read may fill the buffer to twice what was read before it (at
// least firstRead), and only that much is taken, so a body holds at most twice what it
// sent, or firstRead. A client that announces 16 MiB and sends nothing holds 4 KiB of
// the bound, as net/http's own buffers hold for any connection; 1,030 such connections
// held the whole 64 MiB bound when the first read took 64 KiB (found from outside, 1 Dec).
// A body that would pass b's bound is errNoRoom; on any error nothing stays taken.
func readBodyWithin(w http.ResponseWriter, req *http.Request, limit int64, buf []byte, b *byteBudget) (_ []byte, _ int64, err error) {
	var taken int64 // from b
	defer func() {
		if err != nil && b != nil {
			b.give(taken)
		}
	}()
	// next returns body with room for its next read and where that read may fill it
	// to: twice what was read (at least firstRead), and no further than end (the
	// announced length, or one byte past limit). Those bytes are taken from b first; a
	// buffer that must grow is allocated only then, at that size.
	next := func(body []byte, end int) ([]byte, int, error) {
		to := min(end, max(2*len(body), firstRead))
		if b != nil && int64(to) > taken {
			if !b.take(int64(to) - taken) {
				b.refused.Add(1)
				return body, 0, errNoRoom
			}
			taken = int64(to)
		}
		if to > cap(body) {
			body = append(make([]byte, 0, to), body...)
		}
		return body, to, nil
	}
	if req.ContentLength > limit {
		return nil, 0, fmt.Errorf("%w: request body larger than %d bytes", errTooLarge, limit)
	}
	body := buf[:0]
	if n := int(req.ContentLength); n > 0 {
		for len(body) < n {
			var to int
			if body, to, err = next(body, n); err != nil {
				return nil, 0, err
			}
			m, err := req.Body.Read(body[len(body):to])
			body = body[:len(body)+m]
			if err == io.EOF && len(body) == n {
				break
			}
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if err != nil {
				return nil, 0, bodyReadError(err)
			}
		}
		return body, taken, nil
	}
	// Unknown length (chunked): up to one byte past limit, so that MaxBytesReader can
	// say the body is too large.
	rd := http.MaxBytesReader(w, req.Body, limit)
	for {
		var to int
		if body, to, err = next(body, int(min(limit+1, math.MaxInt))); err != nil {
			return nil, 0, err
		}
		m, err := rd.Read(body[len(body):to])
		body = body[:len(body)+m]
		if err == io.EOF {
			return body, taken, nil
		}
		if err != nil {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return nil, 0, fmt.Errorf("%w: request body larger than %d bytes", errTooLarge, limit)
			}
			return nil, 0, bodyReadError(err)
		}
	}
}

var errTooLarge = fmt.Errorf("%w: too large", runtimeapi.ErrInvalid)

// errBodyTimeout is a body that did not arrive within the server's read timeout: 408.
var errBodyTimeout = errors.New("the request body did not arrive in time")

// bodyReadError classifies a failed read of a request body: the read timeout passed
// (408), the connection ended before the announced length (the client went away:
// counted as 499, not as a 400 the client never sees; 1,028 closed slow uploads showed
// as 400s), or anything else the body's framing got wrong (400).
func bodyReadError(err error) error {
	switch {
	case errors.Is(err, os.ErrDeadlineExceeded):
		return fmt.Errorf("%w: %w", errBodyTimeout, err)
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return fmt.Errorf("read request body: the connection ended before it did: %w (%w)", context.Canceled, err)
	}
	return fmt.Errorf("%w: read request body: %w", runtimeapi.ErrInvalid, err)
}

// firstRead is how many bytes readBody's first read of a body may fill (and take from
// the budget); each later read may fill as many as were read before it.
const firstRead = 4 << 10

func decodeBody(w http.ResponseWriter, req *http.Request, max int64, v any) error {
	body, err := readBody(w, req, max, nil)
	if err != nil {
		return err
	}
	if err := jsonstrict.Decode(bytes.NewReader(body), v); err != nil {
		return fmt.Errorf("%w: request body: %w", runtimeapi.ErrInvalid, err)
	}
	return nil
}

// statusOf maps the package's errors to HTTP status codes.
func statusOf(err error) int {
	switch {
	case errors.Is(err, errTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, errBodyTimeout):
		return http.StatusRequestTimeout
	case errors.Is(err, runtimeapi.ErrInvalid), errors.Is(err, errRun):
		return http.StatusBadRequest
	case errors.Is(err, runtimeapi.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, runtimeapi.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, runtimeapi.ErrUnavailable):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled):
		return statusClientClosed
	case errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout
	}
	return http.StatusInternalServerError
}

// statusClientClosed is nginx's 499, "client closed request": the status under which a
// request whose client went away (its context cancelled, the run terminated) is counted.
// It is not a server error: counted as 503, every impatient client would page whoever
// watches the 5xx rate. The client, gone, never sees it.
const statusClientClosed = 499

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encode response"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": errorText(err)})
}

// maxErrorText bounds the text of an error answer (HTTP body, gRPC status message), in
// bytes before JSON escaping.
const maxErrorText = 1024

// errorText is err's text as an answer carries it: cut to maxErrorText bytes on a
// character, saying how much was cut. Errors quote what the request held (a path, a
// model or input name, a datatype), and a request of 900 KB of '<' in its path got a
// 5.4 MB 404 (each '<' JSON-escaped to six bytes), which clients that never read held in
// the server's memory (found from outside, 2 Dec).
func errorText(err error) string {
	s := err.Error()
	if len(s) <= maxErrorText {
		return s
	}
	cut := printable.Cut(s, maxErrorText)
	return fmt.Sprintf("%s… (%d bytes more)", cut, len(s)-len(cut))
}
