package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	ort "github.com/yalue/onnxruntime_go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// inferModel is one model of the inference comparison.
type inferModel struct {
	Name   string `json:"name"`
	Note   string `json:"note"`
	path   string
	input  string
	shape  []int64
	data   []float32
	output string
	body   []byte
	// binBody is the binary tensor data request (JSON header, then the input's FP32
	// bytes), binHeader its Inference-Header-Content-Length.
	binBody   []byte
	binHeader string
	grpcReq   *inference.ModelInferRequest
}

// prepareModels writes the three models into dir and returns them with a request each.
func prepareModels(ctx context.Context, dir string) ([]*inferModel, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", "github.com/yalue/onnxruntime_go").Output()
	if err != nil {
		return nil, fmt.Errorf("locate onnxruntime_go module (Iris model): %w", err)
	}
	iris := &inferModel{Name: "iris", Note: "scikit-learn random forest (onnxruntime_go test_data), 4 features",
		path:  filepath.Join(strings.TrimSpace(string(out)), "test_data", "sklearn_randomforest.onnx"),
		input: "X", shape: []int64{1, 4}, data: []float32{5.1, 3.5, 1.4, 0.2}, output: "output_label"}
	vib, err := modelgen.Model("1.1.0")
	if err != nil {
		return nil, err
	}
	vibration := &inferModel{Name: "vibration", Note: "modelgen MLP 4-H-2 (vibration 1.1.0)",
		path: filepath.Join(dir, "vibration-1.1.0.onnx"), input: "x", shape: []int64{1, 4},
		data: []float32{2.1, 3.0, 3.1, 44}, output: "label"}
	if err := os.WriteFile(vibration.path, vib, 0o644); err != nil {
		return nil, err
	}
	wide := &inferModel{Name: "wide", Note: "dense MLP 64-2304x4-10, random weights (~16 M MACs/row)",
		path: filepath.Join(dir, "wide.onnx"), input: "x", shape: []int64{1, 64}, output: "label"}
	for i := range 64 {
		wide.data = append(wide.data, float32(i%7)-3)
	}
	if err := os.WriteFile(wide.path, modelgen.DenseBench(), 0o644); err != nil {
		return nil, err
	}
	models := []*inferModel{iris, vibration, wide}
	for _, m := range models {
		req := map[string]any{
			"inputs":  []map[string]any{{"name": m.input, "shape": m.shape, "datatype": "FP32", "data": m.data}},
			"outputs": []map[string]any{{"name": m.output}},
		}
		m.body, _ = json.Marshal(req)
		raw := make([]byte, 0, 4*len(m.data))
		for _, f := range m.data {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
		}
		header, _ := json.Marshal(map[string]any{
			"inputs":  []map[string]any{{"name": m.input, "shape": m.shape, "datatype": "FP32", "parameters": map[string]any{"binary_data_size": len(raw)}}},
			"outputs": []map[string]any{{"name": m.output, "parameters": map[string]any{"binary_data": true}}},
		})
		m.binBody, m.binHeader = append(header, raw...), strconv.Itoa(len(header))
		m.grpcReq = &inference.ModelInferRequest{ModelName: m.Name,
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: m.input, Datatype: "FP32", Shape: m.shape}},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: m.output}},
			RawInputContents: [][]byte{raw}}
	}
	return models, nil
}

// system is one way of running a model: in-process, or an HTTP server (or the transport
// floor, which runs none).
type system interface {
	name() string
	// worker returns a function doing one inference; each concurrent worker has its own.
	worker(m *inferModel) (func() error, func(), error)
}

type inProcess struct {
	sessions map[string]*ort.DynamicAdvancedSession
}

func newInProcess(lib string, models []*inferModel) (*inProcess, error) {
	ort.SetSharedLibraryPath(lib)
	if err := ort.InitializeEnvironment(); err != nil {
		return nil, fmt.Errorf("onnxruntime: %w", err)
	}
	p := &inProcess{sessions: map[string]*ort.DynamicAdvancedSession{}}
	for _, m := range models {
		opts, err := ort.NewSessionOptions()
		if err != nil {
			return nil, err
		}
		opts.SetIntraOpNumThreads(1) // edgeward-runtime's defaults
		opts.SetInterOpNumThreads(1)
		s, err := ort.NewDynamicAdvancedSession(m.path, []string{m.input}, []string{m.output}, opts)
		opts.Destroy()
		if err != nil {
			return nil, fmt.Errorf("session %s: %w", m.Name, err)
		}
		p.sessions[m.Name] = s
	}
	return p, nil
}

func (p *inProcess) name() string { return "in-process session.Run" }

func (p *inProcess) worker(m *inferModel) (func() error, func(), error) {
	x, err := ort.NewTensor(ort.NewShape(m.shape...), slices.Clone(m.data))
	if err != nil {
		return nil, nil, err
	}
	s := p.sessions[m.Name]
	in := []ort.Value{x}
	outs := make([]ort.Value, 1)
	run := func() error {
		outs[0] = nil
		if err := s.Run(in, outs); err != nil {
			return err
		}
		outs[0].Destroy()
		return nil
	}
	return run, func() { x.Destroy() }, nil
}

type httpSystem struct {
	label  string
	base   string
	binary bool // binary tensor data both ways instead of JSON
}

func (h *httpSystem) name() string { return h.label }

func (h *httpSystem) worker(m *inferModel) (func() error, func(), error) {
	tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
	c := &http.Client{Transport: tr}
	url := h.base + "/v2/models/" + m.Name + "/infer"
	body, ct := m.body, "application/json"
	if h.binary {
		body, ct = m.binBody, "application/octet-stream"
	}
	run := func() error {
		req, err := http.NewRequest("POST", url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header["Content-Type"] = []string{ct}
		if h.binary {
			req.Header["Inference-Header-Content-Length"] = []string{m.binHeader}
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: status %d", url, resp.StatusCode)
		}
		return err
	}
	return run, tr.CloseIdleConnections, nil
}

// grpcSystem calls the Open Inference Protocol's gRPC ModelInfer, raw_input_contents in,
// one connection per worker.
type grpcSystem struct {
	label string
	addr  string
}

func (g *grpcSystem) name() string { return g.label }

func (g *grpcSystem) worker(m *inferModel) (func() error, func(), error) {
	conn, err := grpc.NewClient(g.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, err
	}
	c := inference.NewGRPCInferenceServiceClient(conn)
	ctx := context.Background()
	run := func() error {
		resp, err := c.ModelInfer(ctx, m.grpcReq)
		if err == nil && len(resp.RawOutputContents) != 1 {
			err = fmt.Errorf("%s: %d raw outputs", g.label, len(resp.RawOutputContents))
		}
		return err
	}
	return run, func() { conn.Close() }, nil
}

// sample is one timed window of one system: latencies of every request and throughput.
type sample struct {
	p50, p99, rps float64
}

// measure runs conc workers for d and returns the window's p50/p99 (µs) and req/s.
func measure(sys system, m *inferModel, conc int, d time.Duration) (sample, error) {
	runs := make([]func() error, conc)
	for i := range conc {
		run, done, err := sys.worker(m)
		if err != nil {
			return sample{}, err
		}
		defer done()
		if err := run(); err != nil { // connect and warm outside the window
			return sample{}, err
		}
		runs[i] = run
	}
	lats := make([][]time.Duration, conc)
	errs := make([]error, conc)
	var wg sync.WaitGroup
	start := time.Now()
	end := start.Add(d)
	for i := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := make([]time.Duration, 0, 1<<14)
			for {
				t := time.Now()
				if !t.Before(end) {
					break
				}
				if err := runs[i](); err != nil {
					errs[i] = err
					return
				}
				l = append(l, time.Since(t))
			}
			lats[i] = l
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	var all []time.Duration
	for i := range conc {
		if errs[i] != nil {
			return sample{}, errs[i]
		}
		all = append(all, lats[i]...)
	}
	slices.Sort(all)
	return sample{p50: percentile(all, 0.50), p99: percentile(all, 0.99), rps: float64(len(all)) / elapsed.Seconds()}, nil
}

// InferRow is one (model, concurrency, system) line of the results.
type InferRow struct {
	Model       string  `json:"model"`
	Concurrency int     `json:"concurrency"`
	System      string  `json:"system"`
	P50us       float64 `json:"p50_us"`
	P99us       float64 `json:"p99_us"`
	ReqPerSec   float64 `json:"req_per_s"`
	// Relative to in-process in the same round, medians over rounds.
	OverheadP50us  float64 `json:"overhead_p50_us,omitempty"`
	ThroughputFrac float64 `json:"throughput_vs_in_process,omitempty"`
	// This Edgeward protocol (JSON, binary, gRPC) over the Node.js peer, medians over
	// rounds (req/s ratio).
	EdgewardSpeedup float64 `json:"edgeward_speedup,omitempty"`
	// OwnWorkP50us is edgeward's p50 minus its transport floor's p50 (HTTP, or gRPC for
	// gRPC) minus in-process p50: what edgeward-runtime itself adds (decode, validate,
	// tensors, encode, metrics).
	OwnWorkP50us float64 `json:"own_work_p50_us,omitempty"`
	// Min and max over rounds of the per-round ratios above: the noise.
	OverheadRange   [2]float64 `json:"overhead_p50_us_range,omitempty"`
	ThroughputRange [2]float64 `json:"throughput_vs_in_process_range,omitempty"`
	SpeedupRange    [2]float64 `json:"edgeward_speedup_range,omitempty"`
	Rounds          int        `json:"rounds"`
}

type InferResult struct {
	Models []*inferModel `json:"models"`
	Window string        `json:"window"`
	Rows   []InferRow    `json:"rows"`
}

func benchInfer(ctx context.Context, cfg *config) (*InferResult, error) {
	models, err := prepareModels(ctx, filepath.Join(cfg.work, "models"))
	if err != nil {
		return nil, err
	}
	inproc, err := newInProcess(cfg.ortLib, models)
	if err != nil {
		return nil, err
	}
	// edgeward-runtime, the real binary, with the three models.
	ep, gp := freePort(), freePort()
	args := []string{"--listen", fmt.Sprintf("127.0.0.1:%d", ep), "--grpc-listen", fmt.Sprintf("127.0.0.1:%d", gp), "--control", fmt.Sprintf("127.0.0.1:%d", freePort()), "--ort-lib", cfg.ortLib}
	for _, m := range models {
		args = append(args, "--model", m.Name+"=1.0.0="+m.path)
	}
	rt, err := startService("edgeward-runtime", filepath.Join(cfg.work, "edgeward-runtime.log"), nil, filepath.Join(cfg.bin, "edgeward-runtime"), args...)
	if err != nil {
		return nil, err
	}
	defer rt.stop()
	// The Node.js peer.
	np := freePort()
	nargs := []string{filepath.Join(cfg.benchDir, "node", "server.js"), fmt.Sprint(np)}
	for _, m := range models {
		nargs = append(nargs, m.Name+"="+m.path)
	}
	node, err := startService("node", filepath.Join(cfg.work, "node.log"), nil, "node", nargs...)
	if err != nil {
		return nil, err
	}
	defer node.stop()
	// The transport floor: a canned answer from a Go net/http server in its own process.
	floorBin := filepath.Join(cfg.work, "bin", "httpfloor")
	if _, err := runChild(ctx, "go", []string{"build", "-o", floorBin, "./bench/httpfloor"}, nil); err != nil {
		return nil, err
	}
	fp, fgp := freePort(), freePort()
	// The floor runs with edgeward-runtime's scheduler settings for short runs (one Go
	// thread, sysmon kept awake: --gomaxprocs auto and --sysmon-awake), so that the
	// own-work figure compares the same transport on the same scheduler.
	fl, err := startService("httpfloor", filepath.Join(cfg.work, "httpfloor.log"), []string{"GOMAXPROCS=1", "GODEBUG=schedtrace=2147483647"}, floorBin, fmt.Sprint(fp), fmt.Sprintf("grpc=%d", fgp))
	if err != nil {
		return nil, err
	}
	defer fl.stop()
	fb := fmt.Sprintf("http://127.0.0.1:%d", fp)
	if err := waitHTTP(fb+"/v2/health/ready", 30*time.Second); err != nil {
		return nil, err
	}
	eb, nb := fmt.Sprintf("http://127.0.0.1:%d", ep), fmt.Sprintf("http://127.0.0.1:%d", np)
	if err := waitHTTP(eb+"/v2/health/ready", 30*time.Second); err != nil {
		return nil, err
	}
	if err := waitHTTP(nb+"/v2/health/ready", 30*time.Second); err != nil {
		return nil, err
	}
	// The systems, by index: in-process, the three Edgeward protocols, the Node.js
	// peer, the two transport floors.
	const (
		sInProc = iota
		sJSON
		sBinary
		sGRPC
		sPeer
		sFloor
		sGRPCFloor
	)
	systems := []system{
		sInProc:    inproc,
		sJSON:      &httpSystem{label: "edgeward-runtime HTTP", base: eb},
		sBinary:    &httpSystem{label: "edgeward-runtime HTTP binary tensors", base: eb, binary: true},
		sGRPC:      &grpcSystem{label: "edgeward-runtime gRPC", addr: fmt.Sprintf("127.0.0.1:%d", gp)},
		sPeer:      &httpSystem{label: "Node.js onnxruntime-node HTTP", base: nb},
		sFloor:     &httpSystem{label: "HTTP floor (canned answer, no model)", base: fb},
		sGRPCFloor: &grpcSystem{label: "gRPC floor (canned answer, no model)", addr: fmt.Sprintf("127.0.0.1:%d", fgp)},
	}
	floorOf := map[int]int{sJSON: sFloor, sBinary: sFloor, sGRPC: sGRPCFloor}
	res := &InferResult{Models: models, Window: cfg.inferWindow.String()}
	for _, m := range models {
		for _, conc := range []int{1, 2} {
			// warm every system (JIT, allocator, connection pools)
			for _, s := range systems {
				if _, err := measure(s, m, conc, cfg.inferWindow/4); err != nil {
					return nil, fmt.Errorf("%s %s: %w", s.name(), m.Name, err)
				}
			}
			per := make([][]sample, len(systems))
			type ratios struct{ overhead, frac, speedup, own []float64 }
			rs := map[int]*ratios{sJSON: {}, sBinary: {}, sGRPC: {}}
			for r := range cfg.rounds {
				got := make([]sample, len(systems))
				for k := range systems { // rotate the order each round
					i := (k + r) % len(systems)
					s, err := measure(systems[i], m, conc, cfg.inferWindow)
					if err != nil {
						return nil, fmt.Errorf("%s %s: %w", systems[i].name(), m.Name, err)
					}
					got[i] = s
					per[i] = append(per[i], s)
				}
				for e, x := range rs {
					x.overhead = append(x.overhead, got[e].p50-got[sInProc].p50)
					x.frac = append(x.frac, got[e].rps/got[sInProc].rps)
					x.speedup = append(x.speedup, got[e].rps/got[sPeer].rps)
					x.own = append(x.own, got[e].p50-got[floorOf[e]].p50-got[sInProc].p50)
				}
			}
			for i, s := range systems {
				var p50, p99, rps []float64
				for _, x := range per[i] {
					p50, p99, rps = append(p50, x.p50), append(p99, x.p99), append(rps, x.rps)
				}
				row := InferRow{Model: m.Name, Concurrency: conc, System: s.name(), P50us: round(median(p50), 1),
					P99us: round(median(p99), 1), ReqPerSec: round(median(rps), 0), Rounds: cfg.rounds}
				if x := rs[i]; x != nil {
					row.OverheadP50us, row.ThroughputFrac = round(median(x.overhead), 1), round(median(x.frac), 3)
					row.EdgewardSpeedup, row.OwnWorkP50us = round(median(x.speedup), 2), round(median(x.own), 1)
					row.OverheadRange = roundRange(x.overhead, 1)
					row.ThroughputRange = roundRange(x.frac, 3)
					row.SpeedupRange = roundRange(x.speedup, 2)
				}
				res.Rows = append(res.Rows, row)
				logf("infer %-9s c=%d %-36s p50 %8.1fµs p99 %8.1fµs %8.0f req/s", m.Name, conc, s.name(), row.P50us, row.P99us, row.ReqPerSec)
			}
		}
	}
	return res, nil
}
