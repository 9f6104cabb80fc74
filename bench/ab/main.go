// Command ab is a small load loop for A/B runs of edgeward-runtime builds or settings:
// one model, one protocol (gRPC ModelInfer with raw_input_contents, the driver's
// grpc-go client; HTTP JSON; HTTP binary tensors; or in-process session.Run), conc
// connections for a window. It prints req/s, p50, p99 and, with -pid, the server's CPU
// time and context switches per request (from /proc: CPU time survives a loaded
// machine where wall time does not). Alternate old and new servers, several rounds.
//
//	ab models DIR    writes vibration.onnx and wide.onnx (the driver's models) into DIR
//	ab -proto grpc|http|bin -addr 127.0.0.1:8001 -model iris|vibration|wide -c 1 -d 3s -pid PID
//	ab -proto inproc -path wide.onnx -model wide [-gap 300us] [-hop] [-bytes] [-cpus 0,1]
package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	goruntime "runtime"

	"golang.org/x/sys/unix"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

func cpuTicks(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseFloat(f[11], 64)
	k, _ := strconv.ParseFloat(f[12], 64)
	return u + k // clock ticks (100/s)
}

// ctxSwitches sums the voluntary and involuntary context switches of pid's threads.
func ctxSwitches(pid int) float64 {
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	var n float64
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "voluntary_ctxt_switches:"); ok {
				x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += x
			} else if v, ok := strings.CutPrefix(l, "nonvoluntary_ctxt_switches:"); ok {
				x, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				n += x
			}
		}
	}
	return n
}

func main() {
	if len(os.Args) == 3 && os.Args[1] == "models" {
		vib, err := modelgen.Model("1.1.0")
		if err == nil {
			err = os.WriteFile(filepath.Join(os.Args[2], "vibration.onnx"), vib, 0o644)
		}
		if err == nil {
			err = os.WriteFile(filepath.Join(os.Args[2], "wide.onnx"), modelgen.DenseBench(), 0o644)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		return
	}
	proto := flag.String("proto", "grpc", "grpc, http, bin or inproc")
	addr := flag.String("addr", "127.0.0.1:8001", "server address")
	model := flag.String("model", "iris", "iris, vibration or wide")
	conc := flag.Int("c", 1, "connections")
	d := flag.Duration("d", 3*time.Second, "window")
	pid := flag.Int("pid", 0, "server pid for CPU per request")
	label := flag.String("label", "", "label printed first")
	spin := flag.Bool("spin", false, "with -gap: spin on the clock for the gap instead of sleeping, so the CPU stays busy (does the idle, or the time, slow the next run?)")
	gap := flag.Duration("gap", 0, "sleep this long between requests, outside the timed call (e.g. in-process runs with a server's idle time between them); req/s then counts the sleeps too")
	path := flag.String("path", "", "inproc: model file")
	fromBytes := flag.Bool("bytes", false, "inproc: create the session from the file's bytes, as edgeward-runtime does")
	cpus := flag.String("cpus", "", "inproc: run each Run on a thread pinned to the next CPU of this list, round robin (e.g. 0,1: alternate cores; 0,0: one core, two threads)")
	hop := flag.Bool("hop", false, "inproc: run each Run on a new goroutine, as a server's handler does")
	flag.Parse()
	input, output, data := "x", "label", []float32{2.1, 3.0, 3.1, 44}
	switch *model {
	case "iris":
		input, output, data = "X", "output_label", []float32{5.1, 3.5, 1.4, 0.2}
	case "wide":
		data = nil
		for i := range 64 {
			data = append(data, float32(i%7)-3)
		}
	}
	shape := []int64{1, int64(len(data))}
	raw := make([]byte, 0, 4*len(data))
	for _, f := range data {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	var mk func() (func() error, func())
	switch *proto {
	case "inproc":
		ort.SetSharedLibraryPath(os.Getenv("ONNXRUNTIME_LIB"))
		if err := ort.InitializeEnvironment(); err != nil {
			panic(err)
		}
		opts, _ := ort.NewSessionOptions()
		opts.SetIntraOpNumThreads(1)
		opts.SetInterOpNumThreads(1)
		var s *ort.DynamicAdvancedSession
		var err error
		if *fromBytes {
			b, _ := os.ReadFile(*path)
			s, err = ort.NewDynamicAdvancedSessionWithONNXData(b, []string{input}, []string{output}, opts)
		} else {
			s, err = ort.NewDynamicAdvancedSession(*path, []string{input}, []string{output}, opts)
		}
		if err != nil {
			panic(err)
		}
		var pinned []chan func()
		for _, c := range strings.Split(*cpus, ",") {
			if c == "" {
				continue
			}
			n, _ := strconv.Atoi(c)
			ch := make(chan func())
			go func() {
				goruntime.LockOSThread()
				var set unix.CPUSet
				set.Set(n)
				if err := unix.SchedSetaffinity(0, &set); err != nil {
					panic(err)
				}
				for f := range ch {
					f()
				}
			}()
			pinned = append(pinned, ch)
		}
		next := 0
		mk = func() (func() error, func()) {
			x, _ := ort.NewTensor(ort.NewShape(shape...), slices.Clone(data))
			outs := make([]ort.Value, 1)
			return func() error {
				outs[0] = nil
				if len(pinned) > 0 {
					ch := make(chan error, 1)
					pinned[next%len(pinned)] <- func() { ch <- s.Run([]ort.Value{x}, outs) }
					next++
					if err := <-ch; err != nil {
						return err
					}
				} else if *hop {
					ch := make(chan error)
					go func() { ch <- s.Run([]ort.Value{x}, outs) }()
					if err := <-ch; err != nil {
						return err
					}
				} else if err := s.Run([]ort.Value{x}, outs); err != nil {
					return err
				}
				outs[0].Destroy()
				return nil
			}, func() {}
		}
	case "grpc":
		req := &inference.ModelInferRequest{ModelName: *model,
			Inputs:           []*inference.ModelInferRequest_InferInputTensor{{Name: input, Datatype: "FP32", Shape: shape}},
			Outputs:          []*inference.ModelInferRequest_InferRequestedOutputTensor{{Name: output}},
			RawInputContents: [][]byte{raw}}
		mk = func() (func() error, func()) {
			conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				panic(err)
			}
			c := inference.NewGRPCInferenceServiceClient(conn)
			return func() error { _, err := c.ModelInfer(context.Background(), req); return err }, func() { conn.Close() }
		}
	default:
		body, _ := json.Marshal(map[string]any{
			"inputs":  []map[string]any{{"name": input, "shape": shape, "datatype": "FP32", "data": data}},
			"outputs": []map[string]any{{"name": output}}})
		ct, hl := "application/json", ""
		if *proto == "bin" {
			header, _ := json.Marshal(map[string]any{
				"inputs":  []map[string]any{{"name": input, "shape": shape, "datatype": "FP32", "parameters": map[string]any{"binary_data_size": len(raw)}}},
				"outputs": []map[string]any{{"name": output, "parameters": map[string]any{"binary_data": true}}}})
			body, ct, hl = append(header, raw...), "application/octet-stream", strconv.Itoa(len(header))
		}
		url := "http://" + *addr + "/v2/models/" + *model + "/infer"
		mk = func() (func() error, func()) {
			tr := &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}
			c := &http.Client{Transport: tr}
			return func() error {
				req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
				req.Header["Content-Type"] = []string{ct}
				if hl != "" {
					req.Header["Inference-Header-Content-Length"] = []string{hl}
				}
				resp, err := c.Do(req)
				if err != nil {
					return err
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					return fmt.Errorf("status %d", resp.StatusCode)
				}
				return nil
			}, tr.CloseIdleConnections
		}
	}
	runs := make([]func() error, *conc)
	for i := range runs {
		run, done := mk()
		defer done()
		for range 200 {
			if err := run(); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
		}
		runs[i] = run
	}
	lats := make([][]time.Duration, *conc)
	var wg sync.WaitGroup
	c0, s0 := cpuTicks(*pid), ctxSwitches(*pid)
	start := time.Now()
	end := start.Add(*d)
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				if *gap > 0 && *spin {
					for t := time.Now(); time.Since(t) < *gap; { // busy between requests: the CPU never idles
					}
				} else if *gap > 0 {
					time.Sleep(*gap) // idle between requests, outside the timed call
				}
				t := time.Now()
				if !t.Before(end) {
					return
				}
				if err := runs[i](); err != nil {
					fmt.Fprintln(os.Stderr, err)
					os.Exit(1)
				}
				lats[i] = append(lats[i], time.Since(t))
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	c1, s1 := cpuTicks(*pid), ctxSwitches(*pid)
	var all []time.Duration
	for _, l := range lats {
		all = append(all, l...)
	}
	slices.Sort(all)
	n := float64(len(all))
	cpu := ""
	if *pid > 0 {
		cpu = fmt.Sprintf(" cpu/req %6.1fus cs/req %4.1f", (c1-c0)*1e4/n, (s1-s0)/n)
	}
	fmt.Printf("%-10s %-4s %-9s c=%d %8.0f req/s p50 %7.1fus p99 %7.1fus%s\n", *label, *proto, *model, *conc,
		n/el.Seconds(), float64(all[len(all)/2].Nanoseconds())/1e3, float64(all[len(all)*99/100].Nanoseconds())/1e3, cpu)
}
