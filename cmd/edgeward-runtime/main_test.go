package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func ortLib(t *testing.T) string {
	t.Helper()
	p := os.Getenv("ONNXRUNTIME_LIB")
	if p == "" {
		p = filepath.Join("..", "..", ".deps", "onnxruntime", "lib", "libonnxruntime.so.1")
	}
	p, _ = filepath.Abs(p)
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("ONNX Runtime library: %v (run `make deps`)", err)
		}
		t.Skipf("ONNX Runtime library missing (%v); run `make deps`", err)
	}
	return p
}

func irisModel(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/yalue/onnxruntime_go").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	return filepath.Join(strings.TrimSpace(string(out)), "test_data", "sklearn_randomforest.onnx")
}

// proc is one edgeward-runtime process sharing the public socket.
type proc struct {
	cmd     *exec.Cmd
	control *runtimeapi.Client
	done    chan error
}

// start runs bin with the public socket pub as fd 3 and more inherited sockets as fd 4
// onwards (extra, e.g. gRPC's).
func start(t *testing.T, bin, lib string, pub *os.File, sock string, args ...string) *proc {
	return startFiles(t, bin, lib, []*os.File{pub}, sock, args...)
}

func startFiles(t *testing.T, bin, lib string, files []*os.File, sock string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, append([]string{"--ort-lib", lib, "--listen-fd", "3", "--control", "unix:" + sock}, args...)...)
	cmd.ExtraFiles = files
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &proc{cmd: cmd, control: runtimeapi.NewUnixClient(sock), done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("%s stderr:\n%s", filepath.Base(sock), stderr.String())
		}
	})
	for i := 0; ; i++ {
		ok, _ := p.control.Ready(context.Background())
		if ok {
			return p
		}
		select {
		case err := <-p.done:
			t.Fatalf("runtime exited before ready: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// buildRuntime builds this command into dir and returns the binary's path.
func buildRuntime(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "edgeward-runtime")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// listenFile opens a loopback listening socket and returns it as a file to hand to a
// runtime process, with its address; both are closed when the test ends.
func listenFile(t *testing.T) (*os.File, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, ln.Addr().String()
}

// TestRuntimeSwap hands the public socket from one runtime process to another under
// continuous load from two clients: the agent's runtime-swap mechanism. No request may
// fail. It also reports the cost: the new process's start-to-ready time.
func TestRuntimeSwap(t *testing.T) {
	lib := ortLib(t)
	iris := irisModel(t)
	dir := t.TempDir()
	bin := buildRuntime(t, dir)
	pub, addr := listenFile(t)
	url := "http://" + addr + "/v2/models/iris/infer"
	model := "iris=1.0.0=" + iris

	a := start(t, bin, lib, pub, filepath.Join(dir, "a.sock"), "--model", model)

	var (
		stop     atomic.Bool
		ok, fail atomic.Int64
		mu       sync.Mutex
		errs     []string
		wg       sync.WaitGroup
	)
	body := []byte(`{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[6.3,2.3,4.4,1.3]}]}`)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				if err := infer(url, body); err != nil {
					fail.Add(1)
					mu.Lock()
					errs = append(errs, err.Error())
					mu.Unlock()
				} else {
					ok.Add(1)
				}
			}
		}()
	}
	// Load on the old process alone, until it has served some requests (no fixed
	// sleep: on a loaded machine the first inference can take longer than any guess).
	waitServed := func(what string, from int64) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); ok.Load() < from+5; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				stop.Store(true)
				wg.Wait()
				t.Fatalf("%s: %d requests served in a minute (%d failed: %v); want 5", what, ok.Load()-from, fail.Load(), errs[:min(len(errs), 3)])
			}
		}
	}
	waitServed("the old process alone", 0)

	okOld := ok.Load() // served by the old process alone
	began := time.Now()
	b := start(t, bin, lib, pub, filepath.Join(dir, "b.sock"), "--hold", "--model", model)
	ready := time.Since(began)
	rep, err := b.control.Probe(context.Background(), "iris", "1.0.0", probeSet(), nil)
	if err != nil || rep.Cases != 4 {
		t.Fatalf("probe of the new process = %+v, %v", rep, err)
	}
	if err := serve(b.control); err != nil {
		t.Fatal(err)
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-a.done; err != nil {
		t.Errorf("old runtime exit: %v", err)
	}
	a.done <- nil // for the cleanup
	okSwap := ok.Load()
	waitServed("the new process alone, after the old one exited", okSwap)
	stop.Store(true)
	wg.Wait()
	t.Logf("runtime swap: new process ready %v after start; %d requests ok, %d failed", ready, ok.Load(), fail.Load())
	if fail.Load() != 0 {
		t.Errorf("%d requests failed during the runtime swap: %v", fail.Load(), errs[:min(len(errs), 3)])
	}
	// No failure is no proof by itself: requests must have been served before the swap
	// and, after the old process exited, by the new one.
	if okOld == 0 || ok.Load() == okSwap {
		t.Errorf("requests ok: %d before the swap, %d after the old process exited; want some of each", okOld, ok.Load()-okSwap)
	}
}

func probeSet() *runtimeapi.ProbeSet {
	return &runtimeapi.ProbeSet{
		Inputs: []runtimeapi.RequestTensor{{Name: "X", Datatype: runtimeapi.FP32, Shape: []int64{4, 4},
			Data: json.RawMessage(`[5.1,3.5,1.4,0.2, 7.7,2.8,6.7,2.0, 6.3,2.3,4.4,1.3, 5.9,3.0,5.1,1.8]`)}},
		Output: "output_label", Labels: []int64{0, 2, 1, 2}, Warmup: 1, Runs: 4,
	}
}

func serve(c *runtimeapi.Client) error {
	req, _ := http.NewRequest(http.MethodPost, c.BaseURL+"/v2/edgeward/serve", nil)
	resp, err := c.HTTPClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("serve: %s", resp.Status)
	}
	return nil
}

func infer(url string, body []byte) error {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || !bytes.Contains(b, []byte(`"data":[1]`)) {
		return fmt.Errorf("%d %s", resp.StatusCode, b)
	}
	return nil
}

func TestGOMAXPROCSFlag(t *testing.T) {
	cur := goruntime.GOMAXPROCS(0)
	for _, c := range []struct {
		flag  string
		given bool
		env   string
		want  int
		auto  bool
	}{
		{"auto", false, "", 1, true},     // the default: start at 1, tuned
		{"auto", false, "3", cur, false}, // the environment's, already applied by Go
		{"auto", true, "3", 1, true},     // a given flag wins
		{"2", true, "3", 2, false},
		{"0", true, "", 8, false}, // Go's default: the CPUs
		{"0", false, "", 8, false},
	} {
		got, auto, err := gomaxprocs(c.flag, c.given, c.env, 8)
		if err != nil || got != c.want || auto != c.auto {
			t.Errorf("gomaxprocs(%q, given %v, env %q) = %d, %v, %v; want %d, %v", c.flag, c.given, c.env, got, auto, err, c.want, c.auto)
		}
	}
	for _, bad := range []string{"-1", "two", ""} {
		if _, _, err := gomaxprocs(bad, true, "", 8); err == nil {
			t.Errorf("gomaxprocs(%q) accepted", bad)
		}
	}
}

func TestSysmonAwakeEnv(t *testing.T) {
	for _, c := range []struct {
		name    string
		args    []string
		env     []string
		want    string // GODEBUG after; "" for no re-exec
		reexecs bool
	}{
		{"default", []string{"--listen", "x"}, []string{"PATH=/bin"}, sysmonSetting, true},
		{"keeps other settings", nil, []string{"GODEBUG=madvdontneed=1", "HOME=/"}, "madvdontneed=1," + sysmonSetting, true},
		{"already set (after the re-exec)", nil, []string{"GODEBUG=" + sysmonSetting}, "", false},
		{"the operator's own period", nil, []string{"GODEBUG=schedtrace=1000"}, "", false},
		{"schedtrace=0 is off", nil, []string{"GODEBUG=schedtrace=0"}, "schedtrace=0," + sysmonSetting, true},
		{"the last setting wins", nil, []string{"GODEBUG=schedtrace=1000,schedtrace=0"}, "schedtrace=1000,schedtrace=0," + sysmonSetting, true},
		{"turned off", []string{"--sysmon-awake=false"}, nil, "", false},
		{"turned off, one dash", []string{"-sysmon-awake=0"}, nil, "", false},
		{"on explicitly", []string{"--sysmon-awake=true"}, nil, sysmonSetting, true},
		{"after --", []string{"--", "--sysmon-awake=false"}, nil, sysmonSetting, true},
	} {
		env, ok := sysmonAwakeEnv(c.args, c.env)
		if ok != c.reexecs {
			t.Errorf("%s: re-exec %v, want %v", c.name, ok, c.reexecs)
			continue
		}
		if !ok {
			continue
		}
		var got []string
		for _, kv := range env {
			if v, found := strings.CutPrefix(kv, "GODEBUG="); found {
				got = append(got, v)
			}
		}
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("%s: GODEBUG %q, want [%q]", c.name, got, c.want)
		}
		for _, kv := range c.env {
			if !strings.HasPrefix(kv, "GODEBUG=") && !slices.Contains(env, kv) {
				t.Errorf("%s: %q dropped from the environment", c.name, kv)
			}
		}
		if !sysmonAwake(got[0]) {
			t.Errorf("%s: sysmonAwake(%q) = false", c.name, got[0])
		}
	}
}

// TestHeldBytesFlag: the real binary with --max-held-bytes at 64 KiB, over real HTTP. An
// upload of 60,000 bytes stalled short of its end holds its bytes (seen in /metrics);
// a 10 KB request then gets 503 with Retry-After, and once the first is answered the
// same request is served.
func TestHeldBytesFlag(t *testing.T) {
	lib := ortLib(t)
	dir := t.TempDir()
	bin := buildRuntime(t, dir)
	pub, addr := listenFile(t)
	start(t, bin, lib, pub, filepath.Join(dir, "c.sock"), "--model", "iris=1.0.0="+irisModel(t),
		"--max-request-bytes", "65536", "--max-held-bytes", "65536")
	base := "http://" + addr

	held := func() string {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "edgeward_runtime_request_bytes_held "); ok {
				return v
			}
		}
		t.Fatal("no edgeward_runtime_request_bytes_held in /metrics")
		return ""
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60000\r\n\r\n")
	c.Write(bytes.Repeat([]byte(" "), 59999))
	deadline := time.Now().Add(10 * time.Second)
	for held() != "60000" {
		if time.Now().After(deadline) {
			t.Fatalf("bytes held %s; want 60000 for the stalled upload", held())
		}
		time.Sleep(10 * time.Millisecond)
	}

	rows := strings.Repeat("6.3,2.3,4.4,1.3,", 600)
	body := []byte(fmt.Sprintf(`{"inputs":[{"name":"X","shape":[600,4],"datatype":"FP32","data":[%s]}]}`, rows[:len(rows)-1]))
	post := func() *http.Response {
		resp, err := http.Post(base+"/v2/models/iris/infer", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	if resp := post(); resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("a %d-byte request beside the stalled upload: %s, Retry-After %q; want 503, 1", len(body), resp.Status, resp.Header.Get("Retry-After"))
	}
	c.Write([]byte(" ")) // the upload's last byte: it is answered (400, not JSON) and gives its bytes back
	if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err != nil || resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("the upload's answer: %v, %v; want 400", resp, err)
	}
	if resp := post(); resp.StatusCode != http.StatusOK {
		t.Fatalf("the request after the upload was answered: %s", resp.Status)
	}
	if got := held(); got != "0" {
		t.Errorf("bytes held %s at rest; want 0", got)
	}
}

// TestReadTimeoutFlag: the real binary with --read-timeout 1s ends an HTTP upload that
// stalls short of its end after about a second (the default is a minute). gRPC
// ModelInfer reads use the same setting (runtime TestGRPCMessageReadsAreBounded).
func TestReadTimeoutFlag(t *testing.T) {
	lib := ortLib(t)
	dir := t.TempDir()
	bin := buildRuntime(t, dir)
	pub, addr := listenFile(t)
	start(t, bin, lib, pub, filepath.Join(dir, "c.sock"), "--model", "iris=1.0.0="+irisModel(t), "--read-timeout", "1s")
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	begin := time.Now()
	fmt.Fprintf(c, "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"inputs\":")
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	io.Copy(io.Discard, c) // until the server answers and closes, or only closes
	if d := time.Since(begin); d < time.Second || d > 15*time.Second {
		t.Fatalf("the stalled upload ended after %v; want about --read-timeout (1s)", d)
	}
}

// TestMaxConnsFlag: with --max-conns 4 and --max-conns-per-source 3, three connections
// that send nothing from one address hold that source's places, and a fourth from it is
// closed unserved while another address still gets the last place; a fifth connection,
// from a third address, is closed unserved too (before, each was accepted until the
// file descriptors ran out, and a model swap could then not open its file; and one
// client could hold every place). Once one closes, requests are served again, and the
// refusals are counted by bound.
func TestMaxConnsFlag(t *testing.T) {
	lib := ortLib(t)
	dir := t.TempDir()
	bin := buildRuntime(t, dir)
	pub, addr := listenFile(t)
	start(t, bin, lib, pub, filepath.Join(dir, "c.sock"), "--model", "iris=1.0.0="+irisModel(t), "--max-conns", "4", "--max-conns-per-source", "3")
	base := "http://" + addr
	// open dials from the loopback address from and says whether the runtime kept the
	// connection open: refused within wait (EOF or a reset), or not.
	open := func(from string, wait time.Duration) (net.Conn, bool) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, false // reset before the dial returned
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(wait))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		return c, errors.As(err, &ne) && ne.Timeout()
	}
	// The runtime accepts in the order the connections were made: those that are not
	// refused at once are the ones it keeps, however late it accepts them; one over a
	// bound is refused whenever it is accepted.
	var held []net.Conn
	for i := range 3 {
		c, ok := open("127.0.0.1", 300*time.Millisecond)
		if !ok {
			t.Fatalf("connection %d of 3 from one source refused", i)
		}
		held = append(held, c)
	}
	if _, ok := open("127.0.0.1", 10*time.Second); ok {
		t.Fatal("a fourth connection from one source was kept open under --max-conns-per-source 3")
	}
	if _, ok := open("127.0.0.2", 300*time.Millisecond); !ok {
		t.Fatal("another source was refused the last place")
	}
	if _, ok := open("127.0.0.3", 10*time.Second); ok {
		t.Fatal("a fifth connection was kept open under --max-conns 4")
	}
	held[0].Close()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var body []byte
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := client.Get(base + "/metrics")
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics after a place was given back: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// At least one of each; the first tries of /metrics may be refused too, before the
	// runtime has seen the closed connection go. Each refusal is counted before the
	// connection is closed (connlimit).
	for _, bound := range []string{"source", "total"} {
		name := `edgeward_runtime_connections_refused_total{bound="` + bound + `"}`
		var refused int
		if _, err := fmt.Sscanf(metricLine(body, name), name+" %d", &refused); err != nil || refused < 1 {
			t.Errorf("/metrics lacks the refusal over the %s bound (%d, %v):\n%s", bound, refused, err, grepLines(body, "connections"))
		}
	}
	if !bytes.Contains(body, []byte("edgeward_runtime_connections_open ")) {
		t.Errorf("/metrics lacks the open count:\n%s", grepLines(body, "connections"))
	}
}

// metricLine is the sample line of metric name (no labels) in a /metrics body.
func metricLine(b []byte, name string) string {
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, name+" ") {
			return l
		}
	}
	return ""
}

func grepLines(b []byte, s string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, s) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestOrphanedRuntimeDrains: a runtime whose parent dies without a parent-death signal
// reaching it (here the parent is a shell that sets none, killed with SIGKILL) notices
// that its parent changed, drains and stops, and frees its port. Before, such a runtime
// served on for good: seen once after an agent was killed in e2e, 40 minutes later.
func TestOrphanedRuntimeDrains(t *testing.T) {
	lib := ortLib(t)
	bin := buildRuntime(t, t.TempDir())
	// The shell starts the runtime in the background naming itself as the parent, says
	// the runtime's PID, and waits. In the environment, as the agent does, it names
	// another process (the test): the shell stands for a wrapper script between the
	// agent and the runtime, and is the parent watched.
	t.Run("flag", func(t *testing.T) {
		orphanedRuntimeDrains(t, bin, lib, `--parent-pid $$`, nil)
	})
	t.Run("environment, a wrapper between", func(t *testing.T) {
		orphanedRuntimeDrains(t, bin, lib, ``, []string{"EDGEWARD_PARENT_PID=" + strconv.Itoa(os.Getpid())})
	})
}

func orphanedRuntimeDrains(t *testing.T, bin, lib, flag string, env []string) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "runtime.log")
	sock := filepath.Join(dir, "c.sock")
	script := `"$0" --ort-lib "$1" --listen 127.0.0.1:0 --control "unix:$2" --model "iris=1.0.0=$3" --drain-grace 100ms ` + flag + ` 2>"$4" & echo $!; wait`
	sh := exec.Command("sh", "-c", script, bin, lib, sock, irisModel(t), logPath)
	sh.Env = append(os.Environ(), env...)
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Fscan(out, &pid); err != nil {
		sh.Process.Kill()
		t.Fatalf("runtime PID from the shell: %v", err)
	}
	t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) })
	logged := func() string { b, _ := os.ReadFile(logPath); return string(b) }
	control := runtimeapi.NewUnixClient(sock)
	for deadline := time.Now().Add(30 * time.Second); ; {
		if ok, _ := control.Ready(context.Background()); ok {
			break
		}
		if time.Now().After(deadline) {
			sh.Process.Kill()
			t.Fatalf("runtime not ready in 30 s:\n%s", logged())
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Alive and serving while its parent lives.
	time.Sleep(1500 * time.Millisecond)
	if ok, err := control.Ready(context.Background()); !ok {
		t.Fatalf("runtime stopped while its parent lived: %v\n%s", err, logged())
	}
	sh.Process.Kill()
	sh.Wait()
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(logged(), `"msg":"stopped"`); {
		if time.Now().After(deadline) {
			t.Fatalf("runtime still running 20 s after its parent was killed:\n%s", logged())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if l := logged(); !strings.Contains(l, "parent gone, draining") {
		t.Errorf("the runtime stopped without saying its parent was gone:\n%s", l)
	}
}

// TestDrainDoesNotWaitForALoad: a runtime told to stop while its control API is loading a
// model stops after its drain grace, not once the load is done. Whoever asked for the
// load is the agent that is stopping it or that is gone (a runtime gets SIGTERM when its
// agent is killed): nobody uses the answer. Before, the runtime of a killed agent went on
// loading for as long as the load took, up to the drain timeout (30 s), beside the
// runtime of the restarted agent: a 268 MB model took it to 833 MB resident while the
// new runtime loaded the committed model (found from outside, 2 Dec, killing the agent
// in the middle of trials). The load here reads a FIFO nobody writes: it never ends.
func TestDrainDoesNotWaitForALoad(t *testing.T) {
	lib := ortLib(t)
	bin := buildRuntime(t, t.TempDir())
	dir := t.TempDir()
	fifo := filepath.Join(dir, "model.onnx")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	pub, _ := listenFile(t)
	p := start(t, bin, lib, pub, filepath.Join(dir, "c.sock"), "--model", "iris=1.0.0="+irisModel(t), "--drain-grace", "100ms", "--drain-timeout", "30s")
	loaded := make(chan error, 1)
	go func() {
		_, err := p.control.Load(context.Background(), runtimeapi.LoadRequest{Name: "slow", Version: "1.0.0", Path: fifo})
		loaded <- err
	}()
	// Opening the FIFO for writing returns once the runtime has opened it to read the
	// model: the load is then in flight, and stays so (nothing is written).
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	stopped := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup, which waits for it too
		if took := time.Since(stopped); took > 10*time.Second {
			t.Errorf("the runtime took %v to stop with a load in flight; want about its drain grace (100 ms)", took)
		}
		if err != nil {
			t.Errorf("the runtime stopped with %v; want a clean stop", err)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("the runtime was still running 25 s after SIGTERM, waiting for a load that nobody will use")
	}
	select {
	case err := <-loaded:
		if err == nil {
			t.Error("the load of a model that was never read succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Error("the agent's load request was left hanging after the runtime stopped")
	}
}
