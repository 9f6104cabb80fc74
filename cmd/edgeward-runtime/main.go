// Command edgeward-runtime serves ONNX models over the Open Inference Protocol.
//
// The agent starts it from a runtime slot. The public API (applications) listens on
// --listen, or on an inherited socket (--listen-fd) so that a runtime swap never closes
// the public port: the agent binds the port once, passes the socket to every runtime
// process it starts (exec.Cmd.ExtraFiles, fd 3 onwards) and drains the old process with
// SIGTERM once the new one serves. The control API (load, unload, default, probe) is
// served on --control, a unix socket or loopback address only the agent reaches. With
// --grpc-listen (or an inherited --grpc-listen-fd) the Open Inference Protocol's gRPC API
// is served too.
//
// With --hold the process does not accept public connections until the agent sends
// POST /v2/edgeward/serve on the control API, so the agent can load and probe a new
// runtime before it takes any traffic.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/logging"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

type modelFlags []runtimeapi.LoadRequest

func (m *modelFlags) String() string { return fmt.Sprint(*m) }
func (m *modelFlags) Set(s string) error {
	parts := strings.SplitN(s, "=", 3)
	if len(parts) != 3 {
		return fmt.Errorf("want NAME=VERSION=PATH, got %q", s)
	}
	*m = append(*m, runtimeapi.LoadRequest{Name: parts[0], Version: parts[1], Path: parts[2]})
	return nil
}

func main() {
	if env, ok := sysmonAwakeEnv(os.Args[1:], os.Environ()); ok {
		// Restart this process image with the scheduler setting, which Go reads only at
		// start: same PID, same inherited sockets (nothing has run yet to touch them).
		exe, err := os.Executable()
		if err == nil {
			err = syscall.Exec(exe, os.Args, env)
		}
		fmt.Fprintln(os.Stderr, "edgeward-runtime: keeping sysmon awake: re-exec:", err, "(running without)")
	}
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "edgeward-runtime:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("edgeward-runtime", flag.ContinueOnError)
	var (
		cfg      runtime.Config
		models   modelFlags
		listen   = fs.String("listen", "127.0.0.1:8080", "public Open Inference Protocol address")
		listenFD = fs.Int("listen-fd", 0, "serve the public API on this inherited listening socket (e.g. 3) instead of --listen")
		grpcAddr = fs.String("grpc-listen", "", "serve the Open Inference Protocol's gRPC API (inference.GRPCInferenceService) on this address too, e.g. 127.0.0.1:8001; empty: no gRPC")
		grpcFD   = fs.Int("grpc-listen-fd", 0, "serve gRPC on this inherited listening socket instead of --grpc-listen (so the port survives a runtime swap)")
		control  = fs.String("control", "127.0.0.1:8081", "control API address (host:port or unix:/path); only the agent may reach it")
		hold     = fs.Bool("hold", false, "do not accept public connections until POST /v2/edgeward/serve on the control API")
		maxConns = fs.Int("max-conns", 0, "connections the public listeners (HTTP and gRPC) keep open at once, together; one more is closed unserved (0: half the file descriptors left after 256 for the runtime's own files; -1: no bound)")
		perSrc   = fs.Int("max-conns-per-source", 0, "connections one source (an IPv4 address, an IPv6 /64) keeps open at once on the public listeners; one more is closed unserved (0: 1024, at most --max-conns; -1: no bound)")
		drain    = fs.Duration("drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight requests may take")
		grace    = fs.Duration("drain-grace", time.Second, "on SIGTERM, how long to keep serving with keep-alives off before closing idle connections")
		logFmt   = fs.String("log-format", logging.JSON, "log format: json or text (the agent passes its own, so a device's log is one format)")
		procs    = fs.String("gomaxprocs", "auto", "Go scheduler threads (GOMAXPROCS): auto (1 while ONNX Runtime's runs are short, which saves the wake-ups of idle threads around each request; the CPUs available while runs of 1 ms or more take 10 % of the time or more, so that they do not queue behind each other: runtime.ProcsPolicy, docs/BENCHMARKS.md), a number, or 0 for Go's default (the CPUs available). Unless given, the GOMAXPROCS environment variable wins")
		parent   = fs.Int("parent-pid", envInt("EDGEWARD_PARENT_PID"), "drain and stop once the parent this process had at start is gone (the agent sets $EDGEWARD_PARENT_PID to its own PID: should its parent-death signal be lost, an orphaned runtime would keep the inference port from the agent's next start); a parent at start other than this PID (a wrapper script between) is watched instead; 0: no watch (default $EDGEWARD_PARENT_PID)")
		_        = fs.Bool("sysmon-awake", true, "keep Go's monitor thread (sysmon) from parking while the process is idle, so that the first system or cgo call of each request does not wake it and it does not retake the P of each run (GODEBUG schedtrace at its largest period, set by re-executing at start: one scheduler line on stderr once uptime reaches 24.8 days, then every 24.8 days). false: Go's default")
	)
	fs.StringVar(&cfg.LibraryPath, "ort-lib", os.Getenv("ONNXRUNTIME_LIB"), "ONNX Runtime shared library (default $ONNXRUNTIME_LIB)")
	fs.IntVar(&cfg.IntraOpThreads, "intra-op-threads", 1, "threads inside one operator, per session")
	fs.IntVar(&cfg.InterOpThreads, "inter-op-threads", 1, "threads across operators, per session")
	fs.Int64Var(&cfg.MaxRequestBytes, "max-request-bytes", 16<<20, "largest request body")
	fs.IntVar(&cfg.MaxConcurrentRuns, "max-concurrent-runs", 0, "ONNX Runtime runs in flight at once, across models; further requests wait (0: the number of CPUs)")
	fs.Int64Var(&cfg.MaxHeldBytes, "max-held-bytes", 0, "bytes of inference requests (bodies, decoded tensors) held in memory at once; a request that would pass it is refused with 503 and Retry-After (gRPC UNAVAILABLE), one that alone would pass it with 413 (0: 4 × --max-request-bytes)")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", time.Minute, "how long one request may take to arrive: a whole HTTP request, or a gRPC ModelInfer message once its read began")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", time.Minute, "how long an inference answer may take to be written, over HTTP or gRPC: a client that does not read it is cut off then, and what its request held is released")
	fs.DurationVar(&cfg.GRPCReadGrace, "grpc-read-grace", 2*time.Second, "how long a gRPC ModelInfer message may take to arrive while other calls wait for a read slot; past it the read ends with DEADLINE_EXCEEDED and its slot goes to a waiting call (at most --read-timeout)")
	fs.IntVar(&cfg.MaxWaitingRequests, "max-waiting", 256, "inference requests that may wait for a run; one more is refused with 503 and Retry-After (gRPC UNAVAILABLE); probes always wait")
	fs.Var(&models, "model", "load NAME=VERSION=PATH before serving (repeatable; the first of a name is its default)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "gomaxprocs" })
	n, auto, err := gomaxprocs(*procs, given, os.Getenv("GOMAXPROCS"), goruntime.NumCPU())
	if err != nil {
		return err
	}
	goruntime.GOMAXPROCS(n) // before the gRPC server sizes its stream workers by it
	log, err := logging.New(os.Stderr, *logFmt)
	if err != nil {
		return err
	}
	cfg.Logger = log

	rt, err := runtime.New(cfg)
	if err != nil {
		return err
	}
	for _, m := range models {
		if _, err := rt.Load(ctx, m); err != nil {
			return err
		}
	}

	pub, err := publicListener(*listen, *listenFD)
	if err != nil {
		return err
	}
	ctl, err := controlListener(*control)
	if err != nil {
		return err
	}
	var grpcLn net.Listener
	if *grpcAddr != "" || *grpcFD > 0 {
		if grpcLn, err = publicListener(*grpcAddr, *grpcFD); err != nil {
			return fmt.Errorf("grpc: %w", err)
		}
	}
	limiter := rt.ConnLimiter(*maxConns, *perSrc)
	pub = limiter.Listen(pub)
	if grpcLn != nil {
		grpcLn = limiter.Listen(grpcLn)
	}
	grpcSrv := rt.NewGRPCServer()

	// Request line and headers at most 64 KiB (net/http allows 1 MiB): a connection keeps
	// the memory its longest request line took until it closes, 0.9 MB each for idle
	// connections that once sent a 900 KB path (found from outside, 2 Dec).
	public := &http.Server{Handler: rt.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: cfg.ReadTimeout, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: maxHeaderBytes, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
	serve := sync.OnceFunc(func() {
		log.Info("serving public API", "addr", pub.Addr().String())
		go func() {
			if err := public.Serve(pub); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("public API", "err", err)
			}
		}()
		if grpcLn != nil {
			log.Info("serving gRPC API", "addr", grpcLn.Addr().String())
			go func() {
				if err := grpcSrv.Serve(grpcLn); err != nil {
					log.Error("gRPC API", "err", err)
				}
			}()
		}
	})
	ctlMux := http.NewServeMux()
	ctlMux.HandleFunc("POST /v2/edgeward/serve", func(w http.ResponseWriter, _ *http.Request) {
		serve()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"serving":true}` + "\n"))
	})
	ctlMux.Handle("/", rt.ControlHandler())
	ctlSrv := &http.Server{Handler: ctlMux, ReadHeaderTimeout: 10 * time.Second, MaxHeaderBytes: maxHeaderBytes}
	go func() {
		if err := ctlSrv.Serve(ctl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("control API", "err", err)
		}
	}()
	tctx, stopTuning := context.WithCancel(ctx)
	defer stopTuning()
	if auto {
		go rt.TuneProcs(tctx, runtime.ProcsPolicy{}, 0, func(n int) { log.Info("gomaxprocs", "procs", n) })
	}
	log.Info("edgeward-runtime started", "onnxruntime", rt.ORTVersion(), "control", ctl.Addr().String(), "hold", *hold, "pid", os.Getpid(),
		"gomaxprocs", goruntime.GOMAXPROCS(0), "gomaxprocs_auto", auto, "sysmon_awake", sysmonAwake(os.Getenv("GODEBUG")))
	if !*hold {
		serve()
	}

	sig, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var orphaned <-chan struct{} // nil: never
	if *parent != 0 {
		// The parent at start is watched: the agent, or a wrapper between (which the
		// agent's parent-death signal then ends). Already init's, the agent is gone.
		start := os.Getppid()
		if start != *parent {
			log.Info("the runtime's parent is not the one named: watching the parent it has", "parent_pid", *parent, "ppid", start)
		}
		if start == 1 {
			start = -1 // gone already: the watch ends at once
		}
		orphaned = watchParent(sig, start, time.Second, os.Getppid)
	}
	select {
	case <-sig.Done():
	case <-orphaned:
		log.Warn("parent gone, draining", "parent_pid", *parent, "ppid", os.Getppid())
	}

	// Drain. First keep serving for a grace period with every response closing its
	// connection (the runtime does that once draining), so busy clients move to new connections, which the shared
	// socket gives to the next runtime process. Then stop accepting (the socket stays open
	// in the agent and the next process), close idle connections, let in-flight requests
	// finish, and close the sessions. A client that reuses a connection idle for the whole
	// grace period at the instant it is closed sees a reset; HTTP clients retry that when
	// the request carries an Idempotency-Key header (inference is idempotent).
	log.Info("draining", "grace", grace.String(), "timeout", drain.String())
	rt.SetDraining()
	select {
	case <-time.After(*grace):
	case <-ctx.Done():
	}
	// The control API is the agent's, and the agent that asked for a load or a probe
	// still in flight is the one stopping this process, or is gone (a runtime gets
	// SIGTERM when its agent dies): nobody will use the answer. Its requests are not
	// waited for. Before, the runtime of a killed agent went on loading a model for as
	// long as the load took, up to the drain timeout, beside the runtime of the
	// restarted agent (a 268 MB model: 833 MB resident; found from outside, 2 Dec).
	ctlErr := ctlSrv.Close()
	dctx, cancel := context.WithTimeout(context.Background(), *drain)
	defer cancel()
	// gRPC: GOAWAY to every connection (clients reconnect, to the next process on a
	// shared socket), then wait for in-flight calls until the drain timeout.
	grpcDone := make(chan struct{})
	go func() { grpcSrv.GracefulStop(); close(grpcDone) }()
	errs := []error{public.Shutdown(dctx), ctlErr}
	select {
	case <-grpcDone:
	case <-dctx.Done():
		grpcSrv.Stop()
		errs = append(errs, fmt.Errorf("grpc: %w", dctx.Err()))
	}
	errs = append(errs, rt.Close(dctx))
	if err := errors.Join(errs...); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("drain: %w", err)
	}
	log.Info("stopped")
	return nil
}

// watchParent returns a channel closed once getppid no longer answers pid, checked at
// start and then every period until ctx ends. The agent starts its runtime with a
// parent-death signal too, but that signal is tied to the thread that forked and was
// once not delivered when the agent was killed (an e2e run, 1 Dec): the runtime then
// served on, holding the inference port, and the restarted agent could not bind it.
// A changed parent (re-parented to init or a subreaper) is the one sign that cannot be
// lost.
func watchParent(ctx context.Context, pid int, period time.Duration, getppid func() int) <-chan struct{} {
	gone := make(chan struct{})
	go func() {
		t := time.NewTicker(period)
		defer t.Stop()
		for getppid() == pid {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		close(gone)
	}()
	return gone
}

// envInt is the integer in the environment variable name, 0 if unset or not one.
func envInt(name string) int {
	n, _ := strconv.Atoi(os.Getenv(name))
	return n
}

// gomaxprocs returns the GOMAXPROCS to start with and whether TuneProcs should adjust
// it: the flag's value when it was given or when the environment sets none, else the
// environment's (which Go already applied). "auto" starts at 1 and is tuned; 0 means
// Go's default, the CPUs available.
func gomaxprocs(flagValue string, given bool, env string, cpus int) (int, bool, error) {
	if !given && env != "" {
		return goruntime.GOMAXPROCS(0), false, nil
	}
	if flagValue == "auto" {
		return 1, true, nil
	}
	n, err := strconv.Atoi(flagValue)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("--gomaxprocs %q: want auto, or 0 or more", flagValue)
	}
	if n == 0 {
		return cpus, false, nil
	}
	return n, false, nil
}

// sysmonSetting is the GODEBUG setting that keeps sysmon awake. Go's monitor thread
// parks when every P is idle and is woken by the next system or cgo call: for a server
// idle between requests, once per request, after which it ticks every 20 µs for a while
// and retakes the P of any cgo call (an ONNX Runtime run) that spans two ticks. With a
// schedule trace period set it never parks, and while nothing needs it its ticks slow
// to every 10 ms. The period is the largest Go accepts (2³¹−1 ms, 24.8 days). Go prints
// one scheduler line on stderr when the machine's uptime (the monotonic clock) reaches
// one period, at start on a machine up longer, and one period after each line.
const sysmonSetting = "schedtrace=2147483647"

// sysmonAwake reports whether a GODEBUG value sets a schedule trace period (this
// program's setting or the operator's own). As in Go, the last setting of a name wins.
func sysmonAwake(godebug string) bool {
	awake := false
	for kv := range strings.SplitSeq(godebug, ",") {
		if k, v, _ := strings.Cut(kv, "="); k == "schedtrace" {
			n, err := strconv.Atoi(v)
			awake = err == nil && n > 0
		}
	}
	return awake
}

// sysmonAwakeEnv returns the environment to re-execute with when --sysmon-awake (the
// default) is in effect and GODEBUG does not set schedtrace yet; ok is false when no
// re-exec is needed. It reads --sysmon-awake=BOOL from args itself, before flag parsing,
// up to a "--" argument.
func sysmonAwakeEnv(args, env []string) (_ []string, ok bool) {
	for _, a := range args {
		if a == "--" {
			break
		}
		name := strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-") // -flag or --flag
		if v, found := strings.CutPrefix(name, "sysmon-awake="); found {
			if b, err := strconv.ParseBool(v); err == nil && !b {
				return nil, false
			}
		}
	}
	out := make([]string, 0, len(env)+1)
	var godebug string
	for _, kv := range env {
		if v, found := strings.CutPrefix(kv, "GODEBUG="); found {
			godebug = v
			continue
		}
		out = append(out, kv)
	}
	if sysmonAwake(godebug) {
		return nil, false
	}
	if godebug != "" {
		godebug += ","
	}
	return append(out, "GODEBUG="+godebug+sysmonSetting), true
}

func publicListener(addr string, fd int) (net.Listener, error) {
	if fd <= 0 {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("public listener: %w", err)
		}
		return ln, nil
	}
	return runtime.ListenerFromFD(fd)
}

func controlListener(addr string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		_ = os.Remove(path) // a stale socket from a previous process
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("control listener: %w", err)
		}
		if err := os.Chmod(path, 0o600); err != nil {
			ln.Close()
			return nil, fmt.Errorf("control listener: %w", err)
		}
		return ln, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("control listener: %w", err)
	}
	return ln, nil
}

// maxHeaderBytes bounds an HTTP request's line and headers on the runtime's servers.
const maxHeaderBytes = 64 << 10
