// Package runtime is Edgeward's inference runtime: ONNX Runtime sessions (one per loaded
// model version), the Open Inference Protocol (KServe v2) HTTP API, hot model swap,
// probes with commit gates, and Prometheus metrics.
//
// It serves the contract in runtime/runtimeapi: the wire types, the probe set, the gates
// decision and the client the agent drives it with live there, stdlib-only, so that
// callers link neither ONNX Runtime nor Prometheus. This package returns that package's
// errors (runtimeapi.ErrNotFound, …) and maps them to the status codes the client maps
// back.
//
// # Model swap
//
// Several versions of a model can be loaded side by side; one of them is the default that
// unversioned requests reach. The agent loads a new version beside the serving one
// (Load), probes it (Probe), then makes it the default (SetDefault, an atomic pointer
// switch under the registry lock) and unloads the old one (Unload). A request takes a
// reference on the version it runs on while the registry lock is held, so Unload, which
// first removes the version from the registry and then waits for those references to be
// released before destroying the ORT session, never pulls a session from under a running
// request, and no request fails because of a swap.
//
// # Runtime (library) swap
//
// A new libonnxruntime or runtime binary needs a new process: ONNX Runtime's environment
// is process-wide and cannot be re-initialised from another library. The public port
// keeps serving throughout because the agent, not the runtime, owns the listening
// socket: it binds the public address once and starts each runtime process with the
// socket inherited as a file descriptor (cmd/edgeward-runtime --listen-fd 3, i.e.
// exec.Cmd.ExtraFiles[0]) and a control socket of its own. The new process starts with
// --hold: it loads its models and answers its control API but does not accept public
// connections, so the agent can probe it first. On pass the agent tells it to serve
// (POST /v2/edgeward/serve) and sends SIGTERM to the old process, which turns not-ready,
// answers every further request with "Connection: close" for a grace period so clients
// move to new connections (which the kernel hands to the new process), then stops
// accepting, finishes its in-flight requests and exits. On a failed probe the agent
// stops the new process instead; the old one never noticed. See ListenerFromFD and
// SetDraining.
package runtime

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"regexp"
	goruntime "runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/segcrypt"
	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Config configures a Runtime. The zero value works on a laptop with the library in the
// dynamic loader's search path; a Config must not be modified after New.
type Config struct {
	// LibraryPath is the ONNX Runtime shared library. Empty means $ONNXRUNTIME_LIB, or
	// "libonnxruntime.so.1" found by the dynamic loader when that is unset too.
	LibraryPath string
	// IntraOpThreads and InterOpThreads size each session's thread pools. Zero means 1,
	// which suits a small device serving many small requests concurrently.
	IntraOpThreads int
	InterOpThreads int
	// MaxRequestBytes bounds an HTTP request body. Zero means 16 MiB.
	MaxRequestBytes int64
	// MaxTensorElements bounds the elements of one input tensor. Zero means 4 Mi.
	MaxTensorElements int
	// MaxModelBytes bounds a model file. Zero means 1 GiB.
	MaxModelBytes int64
	// MaxConcurrentRuns bounds the ONNX Runtime runs in flight across every model
	// (runGate). Zero means runtime.NumCPU(): with one intra-op thread per run, more
	// runs at once add threads and arena memory, not throughput.
	MaxConcurrentRuns int
	// MaxWaitingRequests bounds the inference requests waiting for a run; one more is
	// refused with 503 and Retry-After (gRPC UNAVAILABLE). Probes always wait. Zero
	// means 256.
	MaxWaitingRequests int
	// MaxHeldBytes bounds the bytes of inference requests held at once (bodies, decoded
	// tensors) across HTTP and gRPC (byteBudget); a request that would pass it is
	// refused with 503 and Retry-After (gRPC UNAVAILABLE), or 413 (RESOURCE_EXHAUSTED)
	// when what it alone would hold passes it. Zero means four times
	// MaxRequestBytes (64 MiB by default); it is never less than MaxRequestBytes.
	MaxHeldBytes int64
	// ReadTimeout bounds how long one gRPC ModelInfer message may take to arrive once
	// its read began (edgeward-runtime's HTTP server uses it for a whole request too).
	// Zero means one minute.
	ReadTimeout time.Duration
	// WriteTimeout bounds how long an inference answer may take to be written to its
	// client, over HTTP or gRPC: a client that does not read it is cut off then (its
	// gRPC connection closed), and what the
	// request held (its bytes under MaxHeldBytes, its model version) is released. Zero
	// means one minute. Before, a client that never read held them for as long as it
	// wished, and an unload of the version waited for it (found from outside, 2 Dec).
	WriteTimeout time.Duration
	// IdleTimeout is how long a gRPC connection may stay open with no call in progress
	// before the server closes it (GOAWAY; clients reconnect when they next call), as
	// edgeward-runtime's HTTP server closes idle connections. Zero means two minutes.
	// Without it a connection that only said hello held one of --max-conns' places for
	// good: four of them kept every HTTP client out (found from outside, 1 Dec).
	IdleTimeout time.Duration
	// GRPCReadGrace is how long a gRPC ModelInfer message may take to arrive while other
	// calls wait for a read slot; past it the read is preempted (DEADLINE_EXCEEDED) and
	// its slot goes to a waiting call (readGate). Zero: 2 s, never more than ReadTimeout.
	GRPCReadGrace time.Duration
	// Logger receives operational logs. Nil means no logs.
	Logger *slog.Logger
	// Now is the clock for probe latencies and load times. Nil means time.Now.
	Now func() time.Time
}

func (c *Config) libraryPath() string {
	switch {
	case c.LibraryPath != "":
		return c.LibraryPath
	case os.Getenv("ONNXRUNTIME_LIB") != "":
		return os.Getenv("ONNXRUNTIME_LIB")
	}
	return "libonnxruntime.so.1"
}

func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v <= 0 {
		return def
	}
	return v
}

func (c *Config) maxRequestBytes() int64 { return orDefault(c.MaxRequestBytes, 16<<20) }
func (c *Config) maxElements() int       { return orDefault(c.MaxTensorElements, 4<<20) }
func (c *Config) maxModelBytes() int64   { return orDefault(c.MaxModelBytes, 1<<30) }
func (c *Config) maxRuns() int           { return orDefault(c.MaxConcurrentRuns, goruntime.NumCPU()) }
func (c *Config) maxWaiting() int        { return orDefault(c.MaxWaitingRequests, 256) }
func (c *Config) maxHeldBytes() int64 {
	return max(orDefault(c.MaxHeldBytes, 4*c.maxRequestBytes()), c.maxRequestBytes())
}

// grpcReads is how many gRPC ModelInfer messages may be read at once: each may be
// MaxRequestBytes long, and together they stay within MaxHeldBytes.
func (c *Config) grpcReads() int { return int(max(c.maxHeldBytes()/c.maxRequestBytes(), 1)) }

func (c *Config) grpcReadGrace() time.Duration {
	return min(orDefault(c.GRPCReadGrace, 2*time.Second), c.readTimeout())
}

func (c *Config) idleTimeout() time.Duration { return orDefault(c.IdleTimeout, 2*time.Minute) }

func (c *Config) writeTimeout() time.Duration { return orDefault(c.WriteTimeout, time.Minute) }

func (c *Config) readTimeout() time.Duration {
	if c.ReadTimeout <= 0 {
		return time.Minute
	}
	return c.ReadTimeout
}

func (c *Config) now() time.Time {
	if c.Now != nil {
		return c.Now()
	}
	return time.Now()
}

// envMu serialises initialisation of the ONNX Runtime environment, which the
// onnxruntime_go package keeps process-wide; it guards no state of this package.
var envMu sync.Mutex

// initEnvironment loads the ONNX Runtime library unless this process already did.
func initEnvironment(path string) error {
	envMu.Lock()
	defer envMu.Unlock()
	if ort.IsInitialized() {
		return nil
	}
	ort.SetSharedLibraryPath(path)
	// Fatal only: ORT logs each failed run at ERROR, in its own coloured text format,
	// into a log that is JSON (and a hostile client could fill it); every failure also
	// reaches the runtime as a status, which answers or logs it.
	if err := ort.InitializeEnvironment(ort.WithLogLevelFatal()); err != nil {
		return fmt.Errorf("onnx runtime library %s: %w", path, err)
	}
	return nil
}

// Runtime serves loaded model versions. It is safe for concurrent use.
type Runtime struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu     sync.RWMutex
	models map[string]*modelVersions // by model name
	closed bool
	// loadedAny is set by the first model load and stays set. Until then a request
	// for any model is answered 503 with Retry-After (errStarting), not 404: after a
	// power cut, an agent restart or a crash the public port is open (it is inherited,
	// or the kernel queues connections) while the committed model is still loading,
	// and a 404 reads to clients as "this model does not exist".
	loadedAny bool

	draining atomic.Bool
	// measuring holds one probe or one load at a time (a one-slot semaphore, so a wait
	// ends with its context): each measures the process's peak RSS from a reset of the
	// kernel's mark, which the other would disturb.
	measuring chan struct{}
	scratch   sync.Pool // of *inferScratch, for the HTTP inference path
	meter     runMeter  // long ONNX Runtime runs, for TuneProcs
	gate      *runGate  // runs in flight and requests waiting for one, across models
	bodies    *byteBudget
	// reads bounds the gRPC ModelInfer messages being read at once (and the calls
	// waiting to be read): grpc-go holds a message whole once its read begins.
	reads *readGate
}

type modelVersions struct {
	versions map[string]*Model
	def      string // the version unversioned requests reach
}

// New initialises ONNX Runtime from cfg.LibraryPath (once per process: the ONNX Runtime
// environment is process-wide and stays loaded until the process exits) and returns a
// Runtime with no models.
func New(cfg Config) (*Runtime, error) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		// Tensor data is little-endian on the wire and handed to ONNX Runtime as is.
		return nil, errors.New("edgeward-runtime needs a little-endian host")
	}
	if err := initEnvironment(cfg.libraryPath()); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Runtime{cfg: cfg, log: log, metrics: newMetrics(), models: map[string]*modelVersions{},
		gate: newRunGate(cfg.maxRuns(), cfg.maxWaiting()), bodies: &byteBudget{max: cfg.maxHeldBytes()},
		reads: newReadGate(cfg.grpcReads(), cfg.maxWaiting(), cfg.grpcReadGrace()), measuring: make(chan struct{}, 1)}
	r.metrics.watchGate(r.gate, r.bodies, r.reads)
	return r, nil
}

// ORTVersion is the version of the loaded ONNX Runtime library.
func (r *Runtime) ORTVersion() string { return ort.GetVersion() }

// Close unloads every model, waiting for their in-flight requests, or until ctx ends.
func (r *Runtime) Close(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	var all []*Model
	for _, mv := range r.models {
		for _, m := range mv.versions {
			all = append(all, m)
		}
	}
	r.models = map[string]*modelVersions{}
	for _, m := range all {
		m.unloaded.Store(true)
		r.metrics.unloaded(m.name, m.version)
	}
	r.mu.Unlock()
	var errs []error
	for _, m := range all {
		errs = append(errs, m.drainAndClose(ctx))
	}
	return errors.Join(errs...)
}

var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func checkNameVersion(name, version string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: model name %q: want lower-case letters, digits, '.', '_' or '-', 1-63 characters", runtimeapi.ErrInvalid, name)
	}
	if _, err := artifact.ParseVersion(version); err != nil {
		return fmt.Errorf("%w: %w", runtimeapi.ErrInvalid, err)
	}
	return nil
}

// Load reads an ONNX model, creates its session and adds it beside any loaded versions
// of the same model. It returns the model's metadata, including the sha256 of the bytes
// actually loaded (for the agent's measurement log).
//
// The model's bytes are read into the Go heap (they are hashed, and ONNX Runtime makes
// its session from them) and are garbage once the session exists. A heap that size is
// neither collected nor returned to the system until the heap doubles or two minutes
// pass, and then only slowly: a runtime serving a 268 MB model stayed at 570 MB resident
// for good (found from outside under a memory cgroup, 2 Dec), about twice what the
// session needs. So a load of releaseAfter bytes or more, done or failed, returns them
// to the system at once (309 MB resident for that model).
//
// The process's peak RSS during the load (the model's bytes and the session being
// built from them: 241 MB for a 64 MB model whose probe alone peaked at 114 MB) is kept
// with the model and counted in its probes' peak RSS, for the max_rss_mb gate: a
// device must have the memory to load a version, not only to serve it.
func (r *Runtime) Load(ctx context.Context, req runtimeapi.LoadRequest) (runtimeapi.ModelInfo, error) {
	var held int
	release, err := r.measure(ctx)
	if err != nil {
		return runtimeapi.ModelInfo{}, fmt.Errorf("load %s %s: waiting for a probe to end: %w", req.Name, req.Version, err)
	}
	resetPeakRSS()
	info, err := r.load(ctx, req, &held)
	release()
	if held >= releaseAfter {
		debug.FreeOSMemory()
	}
	return info, err
}

// measure waits for the turn to measure peak RSS (see Runtime.measuring) and returns
// its release.
func (r *Runtime) measure(ctx context.Context) (func(), error) {
	select {
	case r.measuring <- struct{}{}:
		return func() { <-r.measuring }, nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// releaseAfter is the size of a model's bytes from which Load returns them to the system
// right after the load: below it, a few megabytes of garbage left to the collector cost
// less than the forced collection.
const releaseAfter = 4 << 20

// load is Load; *held is set to the size of the model's bytes once they are read.
func (r *Runtime) load(ctx context.Context, req runtimeapi.LoadRequest, held *int) (runtimeapi.ModelInfo, error) {
	if err := checkNameVersion(req.Name, req.Version); err != nil {
		return runtimeapi.ModelInfo{}, err
	}
	if req.Path == "" {
		return runtimeapi.ModelInfo{}, fmt.Errorf("%w: load %s %s: path is required", runtimeapi.ErrInvalid, req.Name, req.Version)
	}
	r.mu.RLock()
	_, missing := r.lookupLocked(req.Name, req.Version)
	closed := r.closed
	r.mu.RUnlock()
	if closed {
		return runtimeapi.ModelInfo{}, fmt.Errorf("%w: runtime is closed", runtimeapi.ErrUnavailable)
	}
	if missing == nil {
		return runtimeapi.ModelInfo{}, fmt.Errorf("%w: model %s version %s is already loaded", runtimeapi.ErrConflict, req.Name, req.Version)
	}
	var data []byte
	var fileDigest string // of the file, when it is not the plaintext
	var err error
	if len(req.Key) > 0 {
		data, fileDigest, err = r.readEncryptedModel(ctx, req)
		// The session keeps its own copy of the model: the plaintext read here is
		// wiped once the session exists (or failed), so it does not linger in the heap.
		defer clear(data)
	} else {
		data, err = r.readModel(ctx, req.Path)
	}
	if err != nil {
		return runtimeapi.ModelInfo{}, err
	}
	*held = len(data)
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	if req.SHA256 != "" && req.SHA256 != digest {
		return runtimeapi.ModelInfo{}, fmt.Errorf("%w: model %s: sha256 %s, want %s", runtimeapi.ErrInvalid, req.Path, digest, req.SHA256)
	}
	m, err := newModel(req.Name, req.Version, data, r.cfg)
	if err != nil {
		return runtimeapi.ModelInfo{}, fmt.Errorf("load model %s version %s from %s: %w", req.Name, req.Version, req.Path, err)
	}
	m.sha256, m.meter, m.gate = digest, &r.meter, r.gate
	if fileDigest != "" {
		// Encrypted: the file's digest is the ciphertext's; the plaintext's, computed
		// here from the decrypted bytes the session was created from (and checked
		// against req.SHA256), is reported beside it for the measurement log.
		m.sha256, m.plainSHA256 = fileDigest, digest
	}
	m.loadedAt = r.cfg.now()
	m.loadPeakRSSMB = peakRSSMB()

	// The metric series change under r.mu, in the same critical section as the map, so
	// they follow the order of loads, default switches and unloads: an Unload of this
	// version racing with this Load (or a switch of default) cannot leave a gauge or a
	// series for a version that is gone, nor delete the series of one that is loaded.
	r.mu.Lock()
	mv := r.models[req.Name]
	if mv == nil {
		mv = &modelVersions{versions: map[string]*Model{}}
	}
	if r.closed || mv.versions[req.Version] != nil {
		r.mu.Unlock()
		m.session.Destroy()
		if r.closed {
			return runtimeapi.ModelInfo{}, fmt.Errorf("%w: runtime is closed", runtimeapi.ErrUnavailable)
		}
		return runtimeapi.ModelInfo{}, fmt.Errorf("%w: model %s version %s is already loaded", runtimeapi.ErrConflict, req.Name, req.Version)
	}
	r.models[req.Name] = mv
	r.loadedAny = true
	mv.versions[req.Version] = m
	prev := mv.def
	if mv.def == "" || req.Default {
		mv.def = req.Version
	}
	def := mv.def
	m.series = r.metrics.served(req.Name, req.Version)
	r.metrics.loaded(req.Name, req.Version, prev, def)
	info := m.info()
	r.mu.Unlock()
	r.log.Info("model loaded", "model", req.Name, "version", req.Version, "sha256", digest, "default", def == req.Version)
	return info, nil
}

func (r *Runtime) readModel(ctx context.Context, path string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: model file: %w", runtimeapi.ErrNotFound, err)
		}
		return nil, fmt.Errorf("model file: %w", err)
	}
	defer f.Close()
	return readWhole(f, path, r.cfg.maxModelBytes())
}

// readWhole reads the file f (named path) into one buffer of its size, so a model
// costs its own size in memory once: io.ReadAll grows by doubling and copying, which
// peaked at twice a 1 GiB model. A file larger than max, or one that grew while it was
// read, is refused.
func readWhole(f *os.File, path string, max int64) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("model file: %w", err)
	}
	size := st.Size()
	if size > max {
		return nil, fmt.Errorf("%w: model %s is larger than %d bytes", runtimeapi.ErrInvalid, path, max)
	}
	data := make([]byte, size+1) // one byte more: a file that grew is seen, not cut
	n, err := io.ReadFull(f, data)
	switch {
	case err == nil:
		return nil, fmt.Errorf("%w: model %s grew while it was read (more than its %d bytes)", runtimeapi.ErrInvalid, path, size)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		if int64(n) != size {
			return nil, fmt.Errorf("read model %s: %d of its %d bytes (it shrank while it was read)", path, n, size)
		}
		return data[:n:n], nil
	default:
		return nil, fmt.Errorf("read model %s: %w", path, err)
	}
}

// readEncryptedModel decrypts the model file req.Path with req.Key into memory: exactly
// req.PlainLength bytes, every segment authenticated, or an error naming the segment
// that was not.
//
// It also returns the SHA-256 of the ciphertext file, hashed as it is read.
func (r *Runtime) readEncryptedModel(ctx context.Context, req runtimeapi.LoadRequest) ([]byte, string, error) {
	if len(req.Key) != segcrypt.KeySize {
		return nil, "", fmt.Errorf("%w: load %s %s: content key is %d bytes, want %d", runtimeapi.ErrInvalid, req.Name, req.Version, len(req.Key), segcrypt.KeySize)
	}
	if max := r.cfg.maxModelBytes(); req.PlainLength < 0 || req.PlainLength > max {
		return nil, "", fmt.Errorf("%w: model %s: plaintext length %d outside [0, %d]", runtimeapi.ErrInvalid, req.Path, req.PlainLength, max)
	}
	f, err := os.Open(req.Path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, "", fmt.Errorf("%w: model file: %w", runtimeapi.ErrNotFound, err)
		}
		return nil, "", fmt.Errorf("model file: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	data, err := segcrypt.Decrypt(ctx, io.TeeReader(bufio.NewReaderSize(f, 1<<20), h), segcrypt.Key(req.Key), req.PlainLength)
	if err != nil {
		if errors.Is(err, segcrypt.ErrAuth) || errors.Is(err, segcrypt.ErrFormat) || errors.Is(err, segcrypt.ErrLength) {
			return nil, "", fmt.Errorf("%w: decrypt model %s: %w", runtimeapi.ErrInvalid, req.Path, err)
		}
		return nil, "", fmt.Errorf("decrypt model %s: %w", req.Path, err)
	}
	return data, hex.EncodeToString(h.Sum(nil)), nil
}

// SetDefault makes a loaded version the one unversioned requests reach. The switch is
// atomic: every request sees either the old or the new default.
func (r *Runtime) SetDefault(name, version string) error {
	r.mu.Lock()
	mv := r.models[name]
	if mv == nil || mv.versions[version] == nil {
		r.mu.Unlock()
		return fmt.Errorf("%w: model %s version %s is not loaded", runtimeapi.ErrNotFound, name, version)
	}
	old := mv.def
	mv.def = version
	r.metrics.defaultChanged(name, old, version)
	r.mu.Unlock()
	r.log.Info("default model version", "model", name, "version", version, "previous", old)
	return nil
}

// Unload removes a version so that no new request reaches it, waits until its in-flight
// requests finish (or ctx ends; the session is then closed when they do) and closes its
// session. The default version cannot be unloaded while other versions are loaded: make
// another one the default first.
func (r *Runtime) Unload(ctx context.Context, name, version string) error {
	r.mu.Lock()
	mv := r.models[name]
	if mv == nil || mv.versions[version] == nil {
		r.mu.Unlock()
		return fmt.Errorf("%w: model %s version %s is not loaded", runtimeapi.ErrNotFound, name, version)
	}
	if mv.def == version && len(mv.versions) > 1 {
		r.mu.Unlock()
		return fmt.Errorf("%w: model %s version %s is the default; make another version the default first", runtimeapi.ErrConflict, name, version)
	}
	m := mv.versions[version]
	delete(mv.versions, version)
	if len(mv.versions) == 0 {
		delete(r.models, name)
	}
	m.unloaded.Store(true)
	r.metrics.unloaded(name, version)
	r.mu.Unlock()
	r.log.Info("model unloading", "model", name, "version", version)
	return m.drainAndClose(ctx)
}

// lookupLocked finds a version ("" for the default). It returns a non-nil error only
// when the model or version is missing.
func (r *Runtime) lookupLocked(name, version string) (*Model, error) {
	mv := r.models[name]
	if mv == nil && !r.loadedAny {
		return nil, fmt.Errorf("%w: model %q: %w", runtimeapi.ErrUnavailable, name, errStarting)
	}
	if mv == nil {
		return nil, fmt.Errorf("%w: model %q is not loaded", runtimeapi.ErrNotFound, name)
	}
	if version == "" {
		version = mv.def
	}
	m := mv.versions[version]
	if m == nil {
		return nil, fmt.Errorf("%w: model %q has no loaded version %q", runtimeapi.ErrNotFound, name, version)
	}
	return m, nil
}

// acquire returns a loaded version ("" for the default) with a reference taken; the
// caller must call release when its request is done.
func (r *Runtime) acquire(name, version string) (*Model, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.closed {
		return nil, fmt.Errorf("%w: runtime is closed", runtimeapi.ErrUnavailable)
	}
	m, err := r.lookupLocked(name, version)
	if err != nil {
		return nil, err
	}
	m.inflight.Add(1)
	return m, nil
}

// Infer runs a loaded version ("" for the default) on inputs, returning the named
// outputs (all tensor outputs when names is empty). Inputs are checked against the model
// first; a mismatch is an ErrInvalid naming the input.
func (r *Runtime) Infer(ctx context.Context, name, version string, inputs []Input, names []string) (*Result, error) {
	m, err := r.acquire(name, version)
	if err != nil {
		return nil, err
	}
	defer m.inflight.Done()
	outs, err := m.run(ctx, inputs, names, true)
	if err != nil {
		return nil, err
	}
	return &Result{Model: m.name, Version: m.version, Outputs: outs}, nil
}

// Result is what Infer returns.
type Result struct {
	Model, Version string
	Outputs        []Output
}

// Metadata describes a loaded version ("" for the default).
func (r *Runtime) Metadata(name, version string) (runtimeapi.ModelInfo, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	m, err := r.lookupLocked(name, version)
	if err != nil {
		return runtimeapi.ModelInfo{}, err
	}
	info := m.info()
	if version == "" {
		info.Versions = slices.Sorted(maps.Keys(r.models[name].versions))
	}
	return info, nil
}

// Index lists the loaded model versions, sorted by name and version.
func (r *Runtime) Index() []runtimeapi.IndexEntry {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var out []runtimeapi.IndexEntry
	for name, mv := range r.models {
		for v, m := range mv.versions {
			out = append(out, runtimeapi.IndexEntry{Name: name, Version: v, State: "READY", Default: v == mv.def, SHA256: m.sha256, PlainSHA256: m.plainSHA256})
		}
	}
	slices.SortFunc(out, func(a, b runtimeapi.IndexEntry) int {
		if a.Name != b.Name {
			if a.Name < b.Name {
				return -1
			}
			return 1
		}
		va, _ := artifact.ParseVersion(a.Version)
		vb, _ := artifact.ParseVersion(b.Version)
		return va.Compare(vb)
	})
	return out
}

// errStarting: the runtime has loaded no model since it started (answered 503 with
// Retry-After; gRPC UNAVAILABLE).
var errStarting = errors.New("no model is loaded yet: the runtime is starting (after a restart, its models are loading); retry")

// Ready reports whether the runtime serves: it is not draining and has a model loaded.
func (r *Runtime) Ready() bool {
	if r.draining.Load() {
		return false
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.models) > 0
}

// SetDraining marks the runtime as shutting down: readiness turns false so that load
// balancers and the agent stop sending it traffic, while requests still run.
func (r *Runtime) SetDraining() { r.draining.Store(true) }
