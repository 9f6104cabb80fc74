package agent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/testport"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// runtimePIDs lists the edgeward-runtime processes whose command line names dir (their
// control sockets live in the agent's state directory).
func runtimePIDs(t *testing.T, dir string) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "edgeward-runtime") && strings.Contains(string(b), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitStopped waits until every thread of process pid is stopped (state T in
// /proc/PID/task/*/stat).
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
		if err != nil || len(tasks) == 0 {
			t.Fatalf("threads of pid %d: %v (%d found)", pid, err, len(tasks))
		}
		running := 0
		for _, f := range tasks {
			b, err := os.ReadFile(f)
			if err != nil {
				continue // the thread exited
			}
			// The state follows the command name's closing parenthesis.
			if i := bytes.LastIndexByte(b, ')'); i < 0 || i+2 >= len(b) || (b[i+2] != 'T' && b[i+2] != 't') {
				running++
			}
		}
		if running == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d threads of pid %d still not stopped 10 s after SIGSTOP", running, len(tasks), pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// supervised is an agent run (Run) with a real edgeward-runtime, the TPM simulator and
// a server that is down, serving its committed model.
type supervised struct {
	dir StateDir
	// infer sends one inference request on a new connection: a connection a killed
	// process held is reset, which no supervisor can prevent.
	infer func() (code int, body string, err error)
	// grpcInfer sends the same request through the gRPC API (ModelInfer) on a new
	// connection and returns each output's values.
	grpcInfer func() (map[string][]float64, error)
}

// startSupervised starts Run on a committed device and waits until it serves; it is
// stopped (and must return nil) at cleanup.
func startSupervised(t *testing.T) supervised {
	t.Helper()
	lib := ortLibrary(t)
	t.Setenv("ONNXRUNTIME_LIB", lib)
	bin := filepath.Join(t.TempDir(), "edgeward-runtime")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgeward-runtime").CombinedOutput(); err != nil {
		t.Fatalf("go build edgeward-runtime: %v\n%s", err, out)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	dir := committedDevice(t, ctx, tpm)
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "maintenance", http.StatusServiceUnavailable)
	}))
	t.Cleanup(server.Close)
	freeAddr := func() string { // reserved for this process, outside the ephemeral range
		p, err := testport.Take()
		if err != nil {
			t.Fatal(err)
		}
		return "127.0.0.1:" + strconv.Itoa(p)
	}
	addr, grpcAddr := freeAddr(), freeAddr()

	ran := make(chan error, 1)
	go func() {
		ran <- Run(ctx, Config{StateDir: dir, Server: server.URL, TPM: tpm, RuntimeBinary: bin, Listen: addr, GRPCListen: grpcAddr, Interval: 3 * time.Second})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ran:
			if err != nil {
				t.Errorf("Run = %v; want nil when stopped", err)
			}
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<20)
			t.Errorf("Run did not return 30 s after it was stopped:\n%s", buf[:goruntime.Stack(buf, true)])
		}
	})

	url := "http://" + addr + "/v2/models/vibration-anomaly/infer"
	body := []byte(`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[0.1,0.2,0.3,0.4]}]}`)
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	infer := func() (int, string, error) {
		resp, err := client.Post(url, "application/json", bytes.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	grpcInfer := func() (map[string][]float64, error) {
		conn, err := grpc.NewClient(grpcAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second) // the machine may be loaded
		defer cancel()
		resp, err := inference.NewGRPCInferenceServiceClient(conn).ModelInfer(ctx, &inference.ModelInferRequest{
			ModelName: "vibration-anomaly",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "x", Datatype: "FP32", Shape: []int64{1, 4},
				Contents: &inference.InferTensorContents{Fp32Contents: []float32{0.1, 0.2, 0.3, 0.4}}}},
		})
		if err != nil {
			return nil, err
		}
		if len(resp.RawOutputContents) != len(resp.Outputs) {
			return nil, fmt.Errorf("ModelInfer answered %d outputs, %d raw contents", len(resp.Outputs), len(resp.RawOutputContents))
		}
		outs := map[string][]float64{}
		for i, o := range resp.Outputs {
			raw := resp.RawOutputContents[i]
			var vs []float64
			switch o.Datatype {
			case "FP32":
				for ; len(raw) >= 4; raw = raw[4:] {
					vs = append(vs, float64(math.Float32frombits(binary.LittleEndian.Uint32(raw))))
				}
			case "INT64":
				for ; len(raw) >= 8; raw = raw[8:] {
					vs = append(vs, float64(int64(binary.LittleEndian.Uint64(raw))))
				}
			default:
				return nil, fmt.Errorf("output %q: datatype %s", o.Name, o.Datatype)
			}
			outs[o.Name] = vs
		}
		return outs, nil
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		code, _, err := infer()
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the agent never served the committed model: HTTP %d, %v", code, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return supervised{dir: dir, infer: infer, grpcInfer: grpcInfer}
}

// sameAnswerOverGRPC checks that the supervised runtime answers ModelInfer on the
// agent's gRPC socket with the values its REST API gives for the same input.
func sameAnswerOverGRPC(t *testing.T, sv supervised) {
	t.Helper()
	code, body, err := sv.infer()
	if err != nil || code != http.StatusOK {
		t.Fatalf("REST infer = HTTP %d %s, %v", code, body, err)
	}
	var rest runtimeapi.InferResponse
	if err := json.Unmarshal([]byte(body), &rest); err != nil || len(rest.Outputs) == 0 {
		t.Fatalf("REST infer answered %s (%v); want outputs", body, err)
	}
	want := map[string][]float64{}
	for _, o := range rest.Outputs {
		var vs []float64
		if err := json.Unmarshal(o.Data, &vs); err != nil {
			t.Fatalf("REST output %q data %s: %v", o.Name, o.Data, err)
		}
		// JSON carries an FP32 in its shortest decimal form: round it back to FP32.
		if o.Datatype == runtimeapi.FP32 {
			for i, v := range vs {
				vs[i] = float64(float32(v))
			}
		}
		want[o.Name] = vs
	}
	got, err := sv.grpcInfer()
	if err != nil {
		t.Fatalf("gRPC ModelInfer on the agent's gRPC socket: %v; want the supervised runtime to answer", err)
	}
	if !maps.EqualFunc(got, want, slices.Equal) {
		t.Errorf("gRPC ModelInfer = %v; REST = %v; want the same values", got, want)
	}
}

// TestSupervisedRuntimeRestarts SIGKILLs the serving edgeward-runtime under a running
// agent (real binary, ONNX Runtime, TPM simulator, a server that is down): requests in
// the gap are refused with HTTP 503 and a JSON error at once, never left hanging; the
// agent restarts the runtime with the committed model re-loaded and re-measured, and
// inference answers again within seconds without restarting the agent.
func TestSupervisedRuntimeRestarts(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts edgeward-runtime")
	}
	sv := startSupervised(t)
	dir, infer := sv.dir, sv.infer
	pids := runtimePIDs(t, string(dir))
	if len(pids) != 1 {
		t.Fatalf("runtime processes = %v; want one", pids)
	}
	sameAnswerOverGRPC(t, sv)
	before, err := os.ReadFile(dir.Measurements())
	if err != nil {
		t.Fatal(err)
	}

	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	refused := 0
	for {
		start := time.Now()
		code, b, err := infer()
		took := time.Since(start)
		if err != nil {
			t.Fatalf("request %v after the runtime was killed: %v after %v; want an answer (503 or 200), not a hang", start.Sub(killed), err, took)
		}
		if code == http.StatusOK {
			break
		}
		var e struct{ Error string }
		if code != http.StatusServiceUnavailable || json.Unmarshal([]byte(b), &e) != nil || e.Error == "" {
			t.Fatalf("request during the restart = HTTP %d %s; want 503 with a JSON error", code, b)
		}
		if took > time.Second {
			t.Errorf("503 took %v; want it at once", took)
		}
		refused++
		if time.Since(killed) > 15*time.Second {
			t.Fatalf("inference still refused %v after the runtime was killed; want it back within seconds", time.Since(killed))
		}
		time.Sleep(20 * time.Millisecond)
	}
	back := time.Since(killed)
	t.Logf("runtime SIGKILLed: %d requests refused with 503, inference back after %v", refused, back)
	if refused == 0 {
		t.Errorf("no request was refused between the kill and the restart; want 503s in the gap")
	}
	if now := runtimePIDs(t, string(dir)); len(now) != 1 || now[0] == pids[0] {
		t.Errorf("runtime processes after the restart = %v; want one new one (killed %d)", now, pids[0])
	}
	after, err := os.ReadFile(dir.Measurements())
	if err != nil {
		t.Fatal(err)
	}
	if n, m := strings.Count(string(before), `"vibration-anomaly"`), strings.Count(string(after), `"vibration-anomaly"`); m <= n {
		t.Errorf("model measurements %d before the kill, %d after the restart; want the re-loaded model re-measured", n, m)
	}
	// The restarted process was handed the gRPC socket too.
	sameAnswerOverGRPC(t, sv)

	// A runtime that hangs (SIGSTOP) fails its health checks, is killed and replaced.
	hung := runtimePIDs(t, string(dir))
	if len(hung) != 1 {
		t.Fatalf("runtime processes = %v; want one", hung)
	}
	if err := syscall.Kill(hung[0], syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(hung[0], syscall.SIGKILL)
	// kill(2) returns before the group stop ends: one thread takes SIGSTOP and stops
	// the others when it next runs, and on a loaded machine the rest may serve a
	// request meanwhile. The hang starts when every thread is stopped.
	waitStopped(t, hung[0])
	stopped := time.Now()
	for {
		if code, _, err := infer(); err == nil && code == http.StatusOK {
			break
		}
		if time.Since(stopped) > 30*time.Second {
			t.Fatalf("inference not back %v after the runtime hung; want it killed and restarted", time.Since(stopped))
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("runtime hung (SIGSTOP): inference back after %v", time.Since(stopped))
	// Killed for its hang after exactly healthFailures failed checks, and said so: one
	// slow answer on a loaded machine must not cost a runtime its life.
	h, err := ReadRuntimeHealth(dir.RuntimeHealth())
	if want := fmt.Sprintf("runtime pid %d: signal: killed, killed after %d health checks failed in a row", hung[0], healthFailures); err != nil || !strings.HasPrefix(h.Why, want) {
		t.Errorf("runtime health after the hang: Why %q, %v; want it to start %q", h.Why, err, want)
	}
	if now := runtimePIDs(t, string(dir)); len(now) != 1 || now[0] == hung[0] {
		t.Errorf("runtime processes after the hang = %v; want one new one (hung %d)", now, hung[0])
	}
}

// TestWithRuntimeDown checks what a check-in's last error says about runtime deaths.
func TestWithRuntimeDown(t *testing.T) {
	now := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	quiet := RuntimeHealth{}
	died := RuntimeHealth{Deaths: 2, LastDeath: now.Add(-time.Minute), Why: "runtime pid 7: signal: killed"}
	old := RuntimeHealth{Deaths: 1, LastDeath: now.Add(-time.Hour)}
	looping := RuntimeHealth{Deaths: 5, LastDeath: now.Add(-time.Hour), CrashLoop: 4, RestartDelay: 8 * time.Second}
	disk := &wire.UpdateError{Kind: wire.ErrorNoSpace, At: now.Add(-2 * time.Minute)}
	later := &wire.UpdateError{Kind: wire.ErrorNoSpace, At: now}
	for _, tc := range []struct {
		name string
		e    *wire.UpdateError
		rts  RuntimeHealth
		want wire.UpdateErrorKind
	}{
		{"no deaths, no error", nil, quiet, ""},
		{"no deaths", disk, quiet, wire.ErrorNoSpace},
		{"a recent death", nil, died, wire.ErrorRuntimeDown},
		{"a death after the update error", disk, died, wire.ErrorRuntimeDown},
		{"an update error after the death", later, died, wire.ErrorNoSpace},
		{"an old death", nil, old, ""},
		{"a crash loop, whatever happened since", later, looping, wire.ErrorRuntimeDown},
	} {
		got := withRuntimeDown(tc.e, tc.rts, now, 3*time.Minute)
		var kind wire.UpdateErrorKind
		if got != nil {
			kind = got.Kind
		}
		if kind != tc.want {
			t.Errorf("%s: withRuntimeDown = %+v; want kind %q", tc.name, got, tc.want)
		}
		if kind == wire.ErrorRuntimeDown && !strings.Contains(got.Message, fmt.Sprintf("%d time(s)", tc.rts.Deaths)) {
			t.Errorf("%s: message %q; want the count of deaths", tc.name, got.Message)
		}
		if kind == wire.ErrorRuntimeDown && tc.rts.CrashLoop > 0 && !strings.Contains(got.Message, "crash loop") {
			t.Errorf("%s: message %q; want it to name the crash loop", tc.name, got.Message)
		}
	}
}

// TestCrashLoopEndsOnceTheRuntimeServes: a crash loop is over once the restarted
// runtime has served stableAfter: the health says so from then on, and an update error
// after the death is the check-in's last error again. Before, the loop stayed until the
// next death, and one early death hid every update error for good (found from outside,
// 2 Dec).
func TestCrashLoopEndsOnceTheRuntimeServes(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	h, _ := noteDeath(RuntimeHealth{ServingSince: t0}, "runtime pid 7: signal: killed", t0.Add(5*time.Second))
	h.ServingSince = t0.Add(6 * time.Second) // restarted, serving again
	download := &wire.UpdateError{Kind: wire.ErrorDownload, At: t0.Add(20 * time.Second)}
	for _, tc := range []struct {
		at      time.Duration
		looping bool
		want    wire.UpdateErrorKind
	}{
		{10 * time.Second, true, wire.ErrorRuntimeDown}, // serving 4 s: still the loop
		{35 * time.Second, true, wire.ErrorRuntimeDown}, // 29 s
		{36 * time.Second, false, wire.ErrorDownload},   // 30 s: over; the later download error shows
		{12 * time.Minute, false, wire.ErrorDownload},
	} {
		now := t0.Add(tc.at)
		got := settled(h, now)
		if (got.CrashLoop > 0) != tc.looping || got.At != now || got.Deaths != 1 {
			t.Errorf("at +%v: settled = %+v; want crash loop %v, one death", tc.at, got, tc.looping)
		}
		if e := withRuntimeDown(download, got, now, 30*time.Second); e == nil || e.Kind != tc.want {
			t.Errorf("at +%v: last error %+v; want %s", tc.at, e, tc.want)
		}
	}
	// Not serving (the restart held back): the loop goes on however long ago it began.
	down := h
	down.ServingSince = time.Time{}
	if got := settled(down, t0.Add(time.Hour)); got.CrashLoop != 1 {
		t.Errorf("not serving an hour on: settled = %+v; want the loop still", got)
	}
}

// TestRestartDelay is the crash-loop rate limit: a runtime that served long enough is
// restarted at once; one that dies soon after its start waits, longer each time, up
// to the cap.
func TestRestartDelay(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 10, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		prev   time.Duration
		served time.Duration // before the death
		want   time.Duration
	}{
		{0, time.Hour, 0},
		{0, stableAfter, 0},
		{30 * time.Second, stableAfter, 0}, // a runtime that served ends the loop
		{0, stableAfter - time.Millisecond, crashLoopMin},
		{0, 0, crashLoopMin},
		{crashLoopMin, time.Second, 2 * crashLoopMin},
		{8 * time.Second, time.Second, 16 * time.Second},
		{crashLoopMax / 2, time.Second, crashLoopMax},
		{crashLoopMax, time.Second, crashLoopMax},
	} {
		died := t0.Add(tc.served)
		if got := restartDelay(tc.prev, t0, died); got != tc.want {
			t.Errorf("restartDelay(%v, served %v) = %v; want %v", tc.prev, tc.served, got, tc.want)
		}
	}
}

// TestNoteDeath: what a death records in RuntimeHealth and the reason requests are
// refused with, for a runtime that served long enough (a death, not a loop) and for
// deaths in a crash loop.
func TestNoteDeath(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	const why = "runtime pid 7: signal: killed"
	looping := RuntimeHealth{Deaths: 3, CrashLoop: 2, RestartDelay: 2 * time.Second, ServingSince: now.Add(-time.Second)}
	for _, tc := range []struct {
		name    string
		h       RuntimeHealth
		want    RuntimeHealth
		refusal string
	}{
		{"served an hour", RuntimeHealth{Deaths: 1, CrashLoop: 2, RestartDelay: 4 * time.Second, ServingSince: now.Add(-time.Hour)},
			RuntimeHealth{Deaths: 2, LastDeath: now, Why: why, NextRestart: now}, why},
		{"first crash", RuntimeHealth{ServingSince: now.Add(-time.Second)},
			RuntimeHealth{Deaths: 1, LastDeath: now, Why: why, CrashLoop: 1, RestartDelay: crashLoopMin, NextRestart: now.Add(crashLoopMin)},
			why + "; crash loop (1 deaths in a row within 30s of their start): restart in 1s"},
		{"third crash in a row", looping,
			RuntimeHealth{Deaths: 4, LastDeath: now, Why: why, CrashLoop: 3, RestartDelay: 4 * time.Second, NextRestart: now.Add(4 * time.Second)},
			why + "; crash loop (3 deaths in a row within 30s of their start): restart in 4s"},
	} {
		got, refusal := noteDeath(tc.h, why, now)
		if got != tc.want || refusal != tc.refusal {
			t.Errorf("%s: noteDeath(%+v) = %+v, %q; want %+v, %q", tc.name, tc.h, got, refusal, tc.want, tc.refusal)
		}
	}
	// A death during a model trial (the candidate, more likely than not): restarted at
	// once, the crash loop neither advanced nor reset.
	got, refusal := noteTrialDeath(looping, why, now)
	wantWhy := why + " (during the trial of a new version: restarted at once)"
	if want := (RuntimeHealth{Deaths: 4, LastDeath: now, Why: wantWhy, CrashLoop: 2, NextRestart: now}); got != want || refusal != wantWhy {
		t.Errorf("noteTrialDeath(%+v) = %+v, %q; want %+v", looping, got, refusal, want)
	}
}

// TestCrashLoopIsRateLimited SIGKILLs the serving runtime each time it is back: each
// death soon after a start holds the next restart back longer (1 s, 2 s, 4 s), the
// refusals say so, and the health the agent records for `edgeward-agent status` shows
// the crash loop.
func TestCrashLoopIsRateLimited(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts edgeward-runtime")
	}
	sv := startSupervised(t)
	var gaps []time.Duration
	for kill := 1; kill <= 3; kill++ {
		pids := runtimePIDs(t, string(sv.dir))
		if len(pids) != 1 {
			t.Fatalf("kill %d: runtime processes = %v; want one", kill, pids)
		}
		if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		sawLoop := false
		for {
			code, body, err := sv.infer()
			if err == nil && code == http.StatusOK {
				break
			}
			if code == http.StatusServiceUnavailable && strings.Contains(body, "crash loop") {
				sawLoop = true
			}
			if time.Since(killed) > 30*time.Second {
				t.Fatalf("kill %d: inference not back after %v: HTTP %d %s %v", kill, time.Since(killed), code, body, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		gaps = append(gaps, time.Since(killed))
		if !sawLoop {
			t.Errorf("kill %d: no 503 named the crash loop", kill)
		}
	}
	t.Logf("runtime killed 3 times as soon as it served: back after %v", gaps)
	// The rate limit: each restart waited at least its hold-back.
	for i, want := range []time.Duration{crashLoopMin, 2 * crashLoopMin, 4 * crashLoopMin} {
		if gaps[i] < want {
			t.Errorf("restart %d after %v; want it held back at least %v", i+1, gaps[i], want)
		}
	}
	// The supervisor writes the health file once it sees the new runtime ready, which
	// can come just after the runtime answers its first request: wait for that write.
	var h RuntimeHealth
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if h, err = ReadRuntimeHealth(sv.dir.RuntimeHealth()); err != nil {
			t.Fatal(err)
		}
		if !h.ServingSince.IsZero() || time.Now().After(deadline) {
			break
		}
	}
	if h.Deaths != 3 || h.CrashLoop != 3 || h.RestartDelay != 4*crashLoopMin || h.ServingSince.IsZero() {
		t.Errorf("health file = %+v; want 3 deaths, all in a crash loop, restarts held back 4s, serving again", h)
	}
	var out bytes.Buffer
	writeRuntimeHealth(&out, h)
	if !strings.Contains(out.String(), "3 death(s)") || !strings.Contains(out.String(), "crash loop: 3 death(s) in a row") {
		t.Errorf("status:\n%s\nwant the deaths and the crash loop", out.String())
	}
	if e := withRuntimeDown(nil, h, time.Now(), 3*time.Second); e == nil || e.Kind != wire.ErrorRuntimeDown || !strings.Contains(e.Message, "crash loop") {
		t.Errorf("check-in last error = %+v; want runtime_down naming the crash loop", e)
	}
}

// TestJudgeWithTheRuntimeDown: while the supervised runtime is down (dead, being
// restarted) the judge neither panics nor blames the version: undoing a trial does
// nothing, and a control call fails with an error the updater retries as an
// infrastructure failure.
func TestJudgeWithTheRuntimeDown(t *testing.T) {
	ctx := context.Background()
	j := &RuntimeJudge{Runtimes: &Runtimes{}}
	target := rollback.Target{Path: "models/vibration-anomaly/1.1.0.onnx", Version: "1.1.0"}
	if err := j.RolledBack(ctx, artifact.KindModel, target, artifact.Meta{}); err != nil {
		t.Errorf("RolledBack with the runtime down = %v; want nil (nothing loaded)", err)
	}
	_, err := j.rc().Index(ctx)
	if !errors.Is(err, ErrNoServingRuntime) || !updater.Transient(err) || updater.ClassifyError(fmt.Errorf("trial: %w: %w", updater.ErrRuntimeDown, err)) != wire.ErrorRuntimeDown {
		t.Errorf("control call with the runtime down = %v; want ErrNoServingRuntime, transient", err)
	}
	if attrs := j.DriftAttrs(ctx); attrs != nil {
		t.Errorf("DriftAttrs with the runtime down = %v; want none", attrs)
	}
}

// TestRuntimeKilledIsNotJudged: a runtime process killed with SIGKILL from outside (the
// OOM killer, an operator) before its control API answers has not judged the version:
// its start fails with ErrRuntimeKilled, which the updater retries. One that exits on
// its own (a library that does not load) fails for real.
func TestRuntimeKilledIsNotJudged(t *testing.T) {
	dir := t.TempDir()
	killer := filepath.Join(dir, "killed-runtime")
	if err := os.WriteFile(killer, []byte("#!/bin/sh\nkill -KILL $$\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	failer := filepath.Join(dir, "failing-runtime")
	if err := os.WriteFile(failer, []byte("#!/bin/sh\necho 'cannot load the library' >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, tc := range []struct {
		bin       string
		transient bool
	}{{killer, true}, {failer, false}} {
		r := &Runtimes{Binary: tc.bin, Listener: ln.(*net.TCPListener), Dir: dir, Stderr: io.Discard}
		_, err := r.Start(context.Background(), nil, true)
		if err == nil {
			t.Fatalf("Start(%s) = nil; want an error", filepath.Base(tc.bin))
		}
		if got := errors.Is(err, ErrRuntimeKilled) && updater.Transient(err); got != tc.transient {
			t.Errorf("Start(%s) = %v; killed and transient %v, want %v", filepath.Base(tc.bin), err, got, tc.transient)
		}
	}
}

// TestStatusSettlesTheHealthFile: status read from the state directory shows a crash
// loop as over once the runtime the file says is serving has served stableAfter; the
// file, written at the restart, still says looping (found in review, 2 Dec).
func TestStatusSettlesTheHealthFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	slots, err := rollback.Open(ctx, rollback.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer slots.Close()
	written := time.Now().Add(-time.Hour)
	h := RuntimeHealth{At: written, Deaths: 1, CrashLoop: 1, RestartDelay: time.Second, ServingSince: written}
	b, _ := json.Marshal(h)
	if err := os.WriteFile(StateDir(dir).RuntimeHealth(), b, 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := (&State{Dir: StateDir(dir), Slots: slots}).ReadStatus(ctx)
	if err != nil || st.Runtime == nil || st.Runtime.CrashLoop != 0 || st.Runtime.Deaths != 1 || !st.Runtime.At.Equal(written) {
		t.Fatalf("status runtime = %+v, %v; want the loop over, one death, the record's time", st.Runtime, err)
	}
	var out strings.Builder
	st.Write(&out)
	if strings.Contains(out.String(), "crash loop") {
		t.Errorf("status says a crash loop an hour after the runtime started serving:\n%s", out.String())
	}
}
