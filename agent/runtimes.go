package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// Runtimes starts and supervises the device's edgeward-runtime processes. The agent owns
// the public inference socket (Listener) and passes it to every process as fd 3, so a
// runtime swap never closes the port: a new process starts with --hold, is loaded and
// probed over its own control socket, then Serve makes it accept connections and drains
// the old one with SIGTERM (runtime/README.md, "Runtime swap"). Safe for concurrent use.
type Runtimes struct {
	// Binary is the edgeward-runtime executable. Required.
	Binary string
	// LogFormat is passed to each runtime process (--log-format), so that what it
	// writes into the agent's log has the agent's format; "": the runtime's default.
	LogFormat string
	// Listener is the public socket. Required.
	Listener *net.TCPListener
	// GRPCListener, if set, is the public gRPC socket (the Open Inference Protocol's
	// inference.GRPCInferenceService), passed to every process as fd 4 the same way; nil:
	// the runtimes serve no gRPC.
	GRPCListener *net.TCPListener
	// Dir holds the control sockets. Required.
	Dir string
	// Stderr receives the processes' output; nil: os.Stderr.
	Stderr io.Writer
	Logger *slog.Logger

	// Restart, if set, brings serving back after the serving runtime died or stopped
	// answering (Supervise): it starts a runtime without hold and loads the committed
	// model (RuntimeJudge.LoadCommitted). Nil: Supervise only refuses requests.
	Restart func(ctx context.Context) error

	// HealthFile, if set, is where Supervise writes the supervision's RuntimeHealth (JSON)
	// at every death and restart, for `edgeward-agent status`.
	HealthFile string

	mu         sync.Mutex
	cur        *RuntimeProc
	all        map[*RuntimeProc]bool
	seq        int
	restarting bool // Supervise is restarting: Start holds even a serving process until the model is loaded
	trials     int  // model trials in flight in the serving runtime (TrialStarted)
	health     RuntimeHealth
}

// RuntimeHealth is what the supervision saw of the serving runtime since the agent
// started.
type RuntimeHealth struct {
	// At is when this was recorded.
	At time.Time `json:"at"`
	// ServingSince is when the current runtime started serving (zero: none serves).
	ServingSince time.Time `json:"serving_since,omitempty"`
	// Deaths counts the serving runtime's deaths (exits, or hangs it was killed for);
	// LastDeath and Why are the last one's time and cause.
	Deaths    int       `json:"deaths"`
	LastDeath time.Time `json:"last_death,omitempty"`
	Why       string    `json:"why,omitempty"`
	// CrashLoop counts the deaths in a row that each came less than StableAfter after
	// the runtime started serving; 0: the last runtime served longer (or none died).
	CrashLoop int `json:"crash_loop,omitempty"`
	// RestartDelay is how long the last restart was held back for the crash loop, and
	// NextRestart when it is (or was) due.
	RestartDelay time.Duration `json:"restart_delay,omitempty"`
	NextRestart  time.Time     `json:"next_restart,omitempty"`
}

// Supervision tuning: how often the serving runtime's control API is checked, how long
// a check may take, how many failures in a row mean it hangs, the backoff of a restart
// that fails, and the crash-loop rate limit: a runtime that dies less than stableAfter
// after it started serving is restarted only after a wait that starts at crashLoopMin
// and doubles with each such death up to crashLoopMax.
const (
	healthEvery    = time.Second
	healthTimeout  = 2 * time.Second
	healthFailures = 3
	restartMin     = 200 * time.Millisecond
	restartMax     = 10 * time.Second
	stableAfter    = 30 * time.Second
	crashLoopMin   = time.Second
	crashLoopMax   = time.Minute
)

// restartDelay is the crash-loop rate limit, pure: the wait before restarting a runtime
// that died at died after serving since served, when the previous restart was held
// back prev. A runtime that served stableAfter or longer is restarted at once (0: a
// death, not a loop); otherwise the wait doubles from crashLoopMin up to crashLoopMax.
func restartDelay(prev time.Duration, served, died time.Time) time.Duration {
	if died.Sub(served) >= stableAfter {
		return 0
	}
	return min(max(2*prev, crashLoopMin), crashLoopMax)
}

// noteDeath records in h a death of the serving runtime at now, why being its cause,
// and returns the reason its requests are refused with (503) until it is back: why, and
// for a crash loop the loop and when the restart is due. Pure: the crash-loop rate
// limit is restartDelay's.
func noteDeath(h RuntimeHealth, why string, now time.Time) (RuntimeHealth, string) {
	h.Deaths++
	h.LastDeath = now
	h.Why = why
	h.RestartDelay = restartDelay(h.RestartDelay, h.ServingSince, now)
	h.ServingSince = time.Time{}
	h.NextRestart = now.Add(h.RestartDelay)
	if h.RestartDelay <= 0 {
		h.CrashLoop = 0
		return h, why
	}
	h.CrashLoop++
	return h, fmt.Sprintf("%s; crash loop (%d deaths in a row within %s of their start): restart in %s", why, h.CrashLoop, stableAfter, h.RestartDelay)
}

// TrialStarted marks a model trial in flight in the serving runtime until the returned
// func is called. A death of the serving runtime meanwhile is the candidate's doing
// more likely than not (a model too large for the device's memory: the OOM killer):
// it is restarted at once and not counted toward the crash loop's hold-back, which
// kept the committed model from serving for minutes after such trials (found from
// outside, 2 Dec); the judge blames the candidate for it (ErrDiedInTrial).
func (r *Runtimes) TrialStarted() (ended func()) {
	r.mu.Lock()
	r.trials++
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		r.trials--
		r.mu.Unlock()
	}
}

// noteTrialDeath is noteDeath for a death while a model trial was in flight: counted,
// and restarted at once, the crash loop neither advanced nor reset.
func noteTrialDeath(h RuntimeHealth, why string, now time.Time) (RuntimeHealth, string) {
	h.Deaths++
	h.LastDeath = now
	h.Why = why + " (during the trial of a new version: restarted at once)"
	h.ServingSince = time.Time{}
	h.RestartDelay, h.NextRestart = 0, now
	return h, h.Why
}

// Health reports what the supervision saw of the serving runtime since the agent
// started. Safe for concurrent use.
func (r *Runtimes) Health() RuntimeHealth {
	r.mu.Lock()
	defer r.mu.Unlock()
	return settled(r.health, time.Now())
}

// settled is h as of now: a crash loop is over once the runtime restarted after it has
// served stableAfter (its next death, if any, is restarted at once: restartDelay).
// Counted only at the next death before, a loop of one early death stayed in the
// check-ins' last error and in status for good, hiding every update error after it
// (found from outside, 2 Dec: still "crash loop" 12 minutes on, while ten downloads
// failed unseen). Pure.
func settled(h RuntimeHealth, now time.Time) RuntimeHealth {
	h.At = now
	if h.CrashLoop > 0 && !h.ServingSince.IsZero() && now.Sub(h.ServingSince) >= stableAfter {
		h.CrashLoop, h.RestartDelay = 0, 0
	}
	return h
}

// saveHealth writes Health to HealthFile, if set (best effort: it is for people).
func (r *Runtimes) saveHealth() {
	if r.HealthFile == "" {
		return
	}
	b, _ := json.Marshal(r.Health())
	if err := durable.WriteFile(r.HealthFile, b, 0o600); err != nil {
		r.log().Warn("runtime health file", "path", r.HealthFile, "err", err)
	}
}

// ReadRuntimeHealth reads a HealthFile.
func ReadRuntimeHealth(path string) (RuntimeHealth, error) {
	var h RuntimeHealth
	b, err := os.ReadFile(path)
	if err != nil {
		return h, err
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return h, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// serving records that p now serves the public socket. Called with r.mu held.
func (r *Runtimes) servingLocked(p *RuntimeProc) {
	r.cur = p
	r.health.ServingSince = time.Now()
}

// Supervise watches the serving runtime until ctx ends. When it exits without Stop, or
// its control API fails healthFailures checks in a row (then it is killed), the public
// socket is answered by the agent itself with HTTP 503 and a JSON error — requests are
// refused, never left hanging in the accept queue — while Restart is retried with
// backoff (restartMin doubling to restartMax). A runtime that dies soon after it
// started serving is in a crash loop: its restart is held back (restartDelay, at most
// crashLoopMax), and Health and HealthFile say so. Once a runtime serves again the
// agent stops accepting. Deliberate swaps (Serve, Stop) are not deaths.
func (r *Runtimes) Supervise(ctx context.Context) {
	fails := 0
	tick := time.NewTicker(healthEvery)
	defer tick.Stop()
	for {
		p := r.Current()
		var done <-chan struct{}
		if p != nil {
			done = p.done
		}
		hung := "" // why the supervision killed it
		select {
		case <-ctx.Done():
			return
		case <-done:
		case <-tick.C:
			if p == nil {
				continue
			}
			hctx, cancel := context.WithTimeout(ctx, healthTimeout)
			_, err := p.Client.Index(hctx)
			cancel()
			if err == nil || ctx.Err() != nil {
				fails = 0
				continue
			}
			if fails++; fails < healthFailures {
				continue
			}
			hung = fmt.Sprintf(", killed after %d health checks failed in a row (last: %v)", fails, err)
			r.log().Error("runtime stopped answering its health check: killing it", "pid", p.cmd.Process.Pid, "err", err)
			p.cmd.Process.Kill()
			<-p.done
		}
		fails = 0
		r.mu.Lock()
		if p.stopping || r.cur != p {
			r.mu.Unlock()
			continue
		}
		r.cur = nil
		delete(r.all, p)
		var why string
		cause := deathCause(p.cmd.Process.Pid, p.cmd.ProcessState, hung, p.oom.after(p.cmd.Process.Pid))
		if r.trials > 0 {
			r.health, why = noteTrialDeath(r.health, cause, time.Now())
		} else {
			r.health, why = noteDeath(r.health, cause, time.Now())
		}
		delay := r.health.RestartDelay
		r.mu.Unlock()
		r.saveHealth()
		os.Remove(p.sock)
		r.log().Error("serving runtime died: refusing requests (503) until it is restarted", "why", why, "restart_in", delay)
		stop := r.refuse(why)
		if sleep(ctx, delay) == nil {
			r.restart(ctx)
		}
		stop()
		r.saveHealth()
	}
}

// restart calls Restart with backoff until it succeeds or ctx ends.
func (r *Runtimes) restart(ctx context.Context) {
	if r.Restart == nil {
		<-ctx.Done()
		return
	}
	r.mu.Lock()
	r.restarting = true
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.restarting = false
		r.mu.Unlock()
	}()
	wait := restartMin
	for {
		start := time.Now()
		err := r.Restart(ctx)
		if p := r.Current(); err == nil && p != nil && p.held {
			err = r.Serve(ctx, p) // the committed model is loaded: now it accepts
		}
		if err == nil {
			r.log().Info("runtime restarted; serving again", "took", time.Since(start))
			return
		}
		if ctx.Err() != nil {
			return
		}
		r.log().Error("runtime restart failed; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, restartMax)
	}
}

// refuse answers the public socket with 503 until the returned stop is called. The
// agent accepts beside any runtime then sharing the socket; stop unblocks its Accept
// (a deadline in the past) and waits for it.
func (r *Runtimes) refuse(why string) (stop func()) {
	body, _ := json.Marshal(map[string]string{"error": "the inference runtime is restarting: " + why})
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write(body)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	srv.SetKeepAlivesEnabled(false) // a kept connection would keep reaching the agent
	ln := &refusingListener{TCPListener: r.Listener, stop: make(chan struct{})}
	r.Listener.SetDeadline(time.Time{})
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	return func() {
		close(ln.stop)
		r.Listener.SetDeadline(time.Unix(1, 0))
		// Starting a runtime clears O_NONBLOCK on the shared socket for a moment
		// (exec passes it with File.Fd), and an accept(2) entered then blocks in the
		// kernel where no deadline reaches it: a connection of our own wakes it.
		for {
			select {
			case <-done:
				r.Listener.SetDeadline(time.Time{})
				return
			case <-time.After(100 * time.Millisecond):
				if c, err := net.DialTimeout("tcp", r.Listener.Addr().String(), time.Second); err == nil {
					c.Close()
				}
			}
		}
	}
}

// refusingListener is the agent's public socket while it refuses: Accept fails with
// net.ErrClosed once stop is closed, and Close does not close the shared socket.
type refusingListener struct {
	*net.TCPListener
	stop chan struct{}
}

func (l *refusingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.TCPListener.Accept()
		select {
		case <-l.stop:
			if c != nil {
				return c, nil // raced the stop: answered 503 all the same, then Accept ends
			}
			return nil, net.ErrClosed
		default:
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return nil, err
		}
		return c, nil
	}
}

func (l *refusingListener) Close() error { return nil }

// ErrRuntimeKilled: a runtime process was killed with SIGKILL, which the agent sends
// only to a process it stops or finds hung: the kernel's OOM killer or an operator did.
// The version it ran was not judged (updater.ErrRuntimeDown): a trial it ends is an
// infrastructure failure, retried a bounded number of times. A runtime that exits on
// its own or crashes (SIGSEGV, SIGABRT) fails its trial.
var ErrRuntimeKilled = fmt.Errorf("the runtime process was killed (SIGKILL): %w", updater.ErrRuntimeDown)

// runtimeReapWait bounds how long a failed call waits for the runtime's exit status.
const runtimeReapWait = 2 * time.Second

// awaitExit waits until p has exited or d has passed, whichever is first.
func (p *RuntimeProc) awaitExit(d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	}
}

// killed reports whether p has exited, killed by SIGKILL.
func (p *RuntimeProc) killed() bool {
	select {
	case <-p.done:
	default:
		return false
	}
	ws, ok := p.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// RuntimeProc is one edgeward-runtime process.
type RuntimeProc struct {
	// Client calls its control API.
	Client *runtimeapi.Client
	// Lib is the file the ONNX Runtime library it runs was read from ("" = its
	// default), SHA256 the digest of the sealed bytes it loaded (SealLibrary).
	Lib, SHA256 string
	sock        string
	cmd         *exec.Cmd
	done        chan struct{}
	oom         oomWatch // what tells an OOM kill of it from another death
	stopping    bool     // Stop was called: its exit is not a death (guarded by Runtimes.mu)
	held        bool     // started as the serving process during a restart, held until restart calls Serve
}

// Start starts a runtime process with the sealed ONNX Runtime library lib (nil = the
// runtime's default, $ONNXRUNTIME_LIB), which it loads from an inherited descriptor,
// and waits until its control API answers. With hold it does not accept public
// connections until Serve. The caller still closes lib.
func (r *Runtimes) Start(ctx context.Context, lib *Library, hold bool) (*RuntimeProc, error) {
	p := &RuntimeProc{done: make(chan struct{}), oom: watchOOM()}
	if lib != nil {
		p.Lib, p.SHA256 = lib.Path, lib.SHA256
	}
	f, err := r.Listener.File()
	if err != nil {
		return nil, fmt.Errorf("public socket: %w", err)
	}
	defer f.Close()
	files := []*os.File{f}
	if r.GRPCListener != nil {
		g, err := r.GRPCListener.File()
		if err != nil {
			return nil, fmt.Errorf("public gRPC socket: %w", err)
		}
		defer g.Close()
		files = append(files, g)
	}
	r.mu.Lock()
	r.seq++
	sock := filepath.Join(r.Dir, fmt.Sprintf("runtime-%d.sock", r.seq))
	p.held = !hold && r.restarting
	r.mu.Unlock()
	os.Remove(sock)
	args := []string{"--listen-fd", "3", "--control", "unix:" + sock}
	if r.GRPCListener != nil {
		args = append(args, "--grpc-listen-fd", "4")
	}
	if lib != nil {
		files = append(files, lib.f)
		args = append(args, "--ort-lib", fmt.Sprintf("/proc/self/fd/%d", 3+len(files)-1))
	}
	if hold || p.held {
		args = append(args, "--hold")
	}
	if r.LogFormat != "" {
		args = append(args, "--log-format", r.LogFormat)
	}
	cmd := exec.Command(r.Binary, args...)
	cmd.ExtraFiles = files // fd 3, then fd 4 (gRPC), then the library
	cmd.Stdout, cmd.Stderr = r.stderr(), r.stderr()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM} // never outlive the agent
	// And, should that signal be lost, the runtime watches its parent (--parent-pid): in
	// the environment, which a runtime from before that flag ignores.
	cmd.Env = append(os.Environ(), "EDGEWARD_PARENT_PID="+strconv.Itoa(os.Getpid()))
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start runtime %s: %w", r.Binary, err)
	}
	// exec cleared O_NONBLOCK on the socket the agent shares (File.Fd): set it again,
	// so the agent's own Accept (refuse) stays interruptible.
	for _, ln := range []*net.TCPListener{r.Listener, r.GRPCListener} {
		if ln == nil {
			continue
		}
		if rc, err := ln.SyscallConn(); err == nil {
			rc.Control(func(fd uintptr) { syscall.SetNonblock(int(fd), true) })
		}
	}
	p.cmd, p.sock = cmd, sock
	go func() { cmd.Wait(); close(p.done) }()
	p.Client = runtimeapi.NewUnixClient(sock)
	r.mu.Lock()
	if r.all == nil {
		r.all = map[*RuntimeProc]bool{}
	}
	r.all[p] = true
	r.mu.Unlock()
	r.log().Info("runtime started", "pid", cmd.Process.Pid, "lib", p.Lib, "sha256", p.SHA256, "hold", hold)
	if err := p.waitControl(ctx, 30*time.Second); err != nil {
		r.Stop(p)
		return nil, err
	}
	if !hold {
		r.mu.Lock()
		old := r.cur
		r.servingLocked(p)
		r.mu.Unlock()
		if old != nil {
			go r.Stop(old)
		}
	}
	return p, nil
}

// Serve makes p accept public connections and the current runtime, then drains the
// previous one (SIGTERM; it finishes in-flight requests).
func (r *Runtimes) Serve(ctx context.Context, p *RuntimeProc) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.Client.BaseURL+"/v2/edgeward/serve", nil)
	if err != nil {
		return err
	}
	resp, err := p.Client.HTTPClient.Do(req)
	if err != nil {
		return fmt.Errorf("runtime serve: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("runtime serve: HTTP %d", resp.StatusCode)
	}
	r.mu.Lock()
	old := r.cur
	r.servingLocked(p)
	r.mu.Unlock()
	if old != nil && old != p {
		go r.Stop(old)
	}
	return nil
}

// Current is the runtime serving the public socket (nil before the first Start without
// hold or Serve).
func (r *Runtimes) Current() *RuntimeProc {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

// Stop drains p (SIGTERM) and waits for it, killing it after 15 s.
func (r *Runtimes) Stop(p *RuntimeProc) {
	if p == nil || p.cmd == nil {
		return
	}
	r.mu.Lock()
	p.stopping = true
	r.mu.Unlock()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
	os.Remove(p.sock)
	r.mu.Lock()
	delete(r.all, p)
	if r.cur == p {
		r.cur = nil
		r.health.ServingSince = time.Time{}
	}
	r.mu.Unlock()
}

// Close stops every process.
func (r *Runtimes) Close() {
	r.mu.Lock()
	var ps []*RuntimeProc
	for p := range r.all {
		ps = append(ps, p)
	}
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range ps {
		wg.Add(1)
		go func() { defer wg.Done(); r.Stop(p) }()
	}
	wg.Wait()
}

func (p *RuntimeProc) waitControl(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		_, err := p.Client.Index(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			if p.killed() {
				return fmt.Errorf("runtime exited before its control API answered (lib %q): %w", p.Lib, ErrRuntimeKilled)
			}
			return fmt.Errorf("runtime exited before its control API answered (lib %q): %v", p.Lib, p.cmd.ProcessState)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("runtime control API not reachable: %w", err)
		}
	}
}

func (r *Runtimes) stderr() io.Writer {
	if r.Stderr != nil {
		return r.Stderr
	}
	return os.Stderr
}

func (r *Runtimes) log() *slog.Logger {
	if r.Logger != nil {
		return r.Logger
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var errNoRuntimes = errors.New("runtime trials need the agent to supervise its runtime processes")
