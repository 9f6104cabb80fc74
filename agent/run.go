package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
	"golang.org/x/mod/sumdb/note"
)

// Version is the agent version reported at check-in when Config.AgentVersion is empty.
const Version = "0.1.0"

// Config configures Run. Every field's zero value is documented and useful: the zero
// Config with Server set is a device enrolled in DefaultStateDir ('edgeward-agent enroll
// --tpm') that starts edgeward-runtime from beside its own executable and serves on
// 127.0.0.1:8080. A Config must not be modified after it is passed to Run.
type Config struct {
	// StateDir is the state directory written by Enroll; empty: DefaultStateDir.
	StateDir StateDir
	// LogFormat is the format of Logger ("json" or "text"), passed to the runtime
	// processes so the device's log is one format; "": the runtime's default (json).
	LogFormat string

	// Server is the device API's base URL (http://… or https://…). With a Server the
	// agent is a whole device: it needs a TPM, supervises its inference runtime, enrolls
	// with the server's attestation CA, checks in with TPM quotes and judges trials by
	// probing in the runtime. Empty: no server, no runtime; Director says what to install
	// and Judge judges the trials (a device managed by hand or by offline bundles).
	Server string
	// ServerRoots are the certificates trusted for an https Server and for https TUF
	// metadata and target URLs (check-ins, refreshes and downloads alike); nil: the
	// system roots.
	ServerRoots *x509.CertPool
	// Labels are sent at every check-in; the fleet's selectors match them.
	Labels map[string]string
	// Hardware is the hardware class sent at check-in; empty: artifact.HostHardware().
	Hardware string
	// AgentVersion is sent at check-in; empty: Version.
	AgentVersion string
	// AuditKey, if set, is the server's audit log verifier key: the device then
	// witnesses the log (AuditWitness, its checkpoint kept in StateDir) and refuses
	// check-in answers from a log that was forked, rewritten or rolled back. nil: it does not.
	AuditKey note.Verifier
	// AuditWitnesses and AuditQuorum: with AuditKey, the device accepts only
	// checkpoints cosigned by AuditQuorum of these witnesses (AuditWitness). 0: none
	// required.
	AuditWitnesses []note.Verifier
	AuditQuorum    int
	// AuditMaxAge, with AuditQuorum: the oldest quorum of cosignatures the device
	// accepts on the server's checkpoint (AuditWitness.MaxAge). 0: no bound.
	AuditMaxAge time.Duration
	// PCR is the measurement PCR the quotes cover; 0: 16 (development). Production
	// devices use 23 (both are resettable, so the log is per boot).
	PCR int
	// BootLog is the TCG boot event log the device sends with every check-in, its quote
	// then covering the boot PCRs (0–7) so that the server can replay the log and judge
	// the firmware, boot loaders and kernel (measured boot). Empty: DefaultBootLog when
	// the TPM is a hardware TPM (a device path) and the file exists, none otherwise (a
	// simulator's boot PCRs do not match the host's log). NoBootLog: none.
	BootLog string
	// IMALog is the kernel's IMA measurement list (binary, SHA-256 template hashes)
	// sent with every check-in, the quote then covering PCR 10 (runtime integrity: the
	// agent, its runtime and what else ran, as the kernel measured them). Empty:
	// DefaultIMALog when the TPM is a hardware TPM and the file exists, none
	// otherwise. NoBootLog ("none"): none.
	IMALog string
	// TPM, if set, is used instead of opening the TPM named at enrollment; Run does not
	// close it. With a Server, a device without a TPM is refused.
	TPM *attest.TPM

	// RuntimeBinary is the edgeward-runtime executable the agent starts and supervises;
	// empty: edgeward-runtime in the directory of the running executable.
	RuntimeBinary string
	// Listen is the public inference address the agent binds and hands to every runtime
	// process; empty: 127.0.0.1:8080.
	Listen string
	// GRPCListen, if set, is the public address of the Open Inference Protocol's gRPC
	// API (inference.GRPCInferenceService), bound and handed to every runtime process the
	// same way; empty: the runtimes serve no gRPC.
	GRPCListen string
	// RuntimeControl, if set, is the control API URL of a runtime the agent does not
	// supervise: no runtime process is started (and runtime trials fail closed).
	RuntimeControl string

	// Director and Judge are used without a Server: what to install, and who judges a
	// trial. Director is then required; a nil Judge means no trial passes (every install
	// rolls back at its deadline).
	Director updater.Director
	Judge    updater.Judge
	// DeviceID names the device in reports without a Server (with one, the device's
	// identity is its AK certificate's).
	DeviceID string
	// BundleDir, if set, is watched for offline bundles (updater.Agent.WatchBundles).
	BundleDir string

	// Interval between check-ins, jittered ±20%; 0: 5 minutes.
	Interval time.Duration
	// TrialTimeout bounds each trial; 0: 10 minutes.
	TrialTimeout time.Duration
	// CheckpointBytes, when positive, takes a durable download checkpoint every so many
	// bytes; 0: the updater.Downloader's default (every 64 MiB, at most once a second).
	CheckpointBytes int64
	// NoDeltas makes every install download the full target, never a delta from the
	// committed version (updater.TUFConfig.NoDeltas); false: deltas when published.
	NoDeltas bool
	// Once runs one round (no retries, no waiting) and returns its error.
	Once bool

	// Now and Sleep are the clock and the waiting (between check-ins, connection
	// attempts and runtime readiness polls); nil: the real ones.
	Now   func() time.Time
	Sleep func(ctx context.Context, d time.Duration) error
	// Logger receives the agent's log; nil: slog.Default().
	Logger *slog.Logger
}

// DefaultBootLog is where Linux exposes the firmware's TCG boot event log.
const DefaultBootLog = "/sys/kernel/security/tpm0/binary_bios_measurements"

// DefaultIMALog is where Linux exposes the IMA measurement list of the SHA-256 bank.
const DefaultIMALog = "/sys/kernel/security/ima/binary_runtime_measurements_sha256"

// NoBootLog as Config.BootLog (or Config.IMALog) sends no such log.
const NoBootLog = "none"

// logPath resolves Config.BootLog or Config.IMALog (default def) for a TPM opened at
// tpmURL.
func logPath(configured, def, tpmURL string) string {
	switch {
	case configured == NoBootLog:
		return ""
	case configured != "":
		return configured
	case strings.HasPrefix(tpmURL, "/"):
		if _, err := os.Stat(def); err == nil {
			return def
		}
	}
	return ""
}

// ErrNoTPM is returned by Run when a device with a Server has no TPM.
var ErrNoTPM = errors.New("agent: the device needs a TPM: enroll with one ('edgeward-agent enroll --tpm URL')")

func (c Config) withDefaults() Config {
	if c.StateDir == "" {
		c.StateDir = DefaultStateDir
	}
	if c.Hardware == "" {
		c.Hardware = artifact.HostHardware()
	}
	if c.AgentVersion == "" {
		c.AgentVersion = Version
	}
	if c.PCR == 0 {
		c.PCR = 16
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sleep == nil {
		c.Sleep = sleep
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Run runs the agent until ctx ends (then it returns nil) or, with Once, for one round.
//
// With a Server it serves first: it recovers the slots without the network
// (rollback.Manager.RecoverLocal: an interrupted download waits), binds the public inference
// socket, starts the runtime and loads and measures the committed model before any
// network work, so a device that restarts during an outage keeps serving what it
// committed. Then it enrolls with the server's attestation CA and obtains its device
// certificate (mTLS), retrying with backoff up to Interval while the server cannot be
// reached or refuses; then it runs the update loop (updater.Agent) with attested
// check-ins and probe-gated trials.
func Run(ctx context.Context, cfg Config) error {
	cfg = cfg.withDefaults()
	err := run(ctx, cfg)
	if err != nil && !cfg.Once && ctx.Err() != nil {
		// Stopped while starting (opening the state or the outbox, connecting): a stop
		// that was asked for, not a failure; what was stored stays stored, as at any
		// other stop. The error says what was interrupted.
		if !errors.Is(err, ctx.Err()) {
			cfg.Logger.Warn("stopped while starting", "err", err)
		}
		return nil
	}
	return err
}

func run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	start := time.Now()
	st, err := OpenState(ctx, StateConfig{Dir: cfg.StateDir, TPM: cfg.TPM, Roots: cfg.ServerRoots, Now: cfg.Now, Logger: log,
		Downloader: downloader(log, cfg.CheckpointBytes), NoDeltas: cfg.NoDeltas})
	if err != nil {
		return err
	}
	// A crash or a power cut in the middle of a write leaves its temporary file, which
	// nothing else removes: one more at every such loss, for the life of the device.
	// This agent is the state directory's only writer, and its own writes are newer.
	if removed, err := durable.RemoveInterrupted(string(st.Dir), start); len(removed) > 0 || err != nil {
		log.Info("removed the temporary files of writes a crash interrupted", "files", removed, "err", err)
	}
	var statusSrv *statusServer
	defer st.Close()
	// `edgeward-agent status` asks the running agent here instead of opening the TPM
	// it holds. Without the socket (a path too long for unix sockets, another agent
	// answering) the agent still runs; status then reads the state directory.
	if ss, err := serveStatus(st); err != nil {
		log.Warn("no status socket: edgeward-agent status will read the state directory", "err", err)
	} else {
		defer ss.Close()
		statusSrv = ss
	}
	if cfg.Server == "" {
		return runManaged(ctx, cfg, st, statusSrv)
	}
	if st.TPM == nil {
		return ErrNoTPM
	}
	// Serve first: nothing below waits on the network. An interrupted download is left
	// to the update loop: its first round checks in, then resumes it if the server still
	// wants that version, supersedes it or gives it up if not (updater.Agent.Run).
	if err := st.Slots.RecoverLocal(ctx); err != nil {
		return fmt.Errorf("recover: %w", err)
	}

	mlog, err := OpenMeasurementLog(ctx, st.Dir.Measurements(), st.TPM, cfg.PCR)
	if err != nil {
		return err
	}
	mlog.Logger = log // before any measurement: nothing else uses mlog yet
	if err := mlog.Unsaved(); err != nil {
		log.Warn("measurement log not saved: quotes cover the log in memory; a restart of the agent before it is saved starts a new log", "err", err)
	}
	judge := &RuntimeJudge{TUF: st.TUF, Log: mlog, WorkDir: string(st.Dir), Logger: log, Slots: st.Slots}
	// The TPM-resident key content keys of encrypted models are wrapped to (issue 18):
	// derived from the owner seed, the same after every restart, so a committed
	// encrypted model is served again without the server.
	dk, err := st.TPM.CreateDecryptionKey(ctx, []byte(DecryptionKeyLabel))
	if err != nil {
		return fmt.Errorf("TPM decryption key: %w", err)
	}
	defer dk.Close()
	judge.Decrypter = dk
	if cfg.RuntimeControl != "" {
		judge.Runtime = &runtimeapi.Client{BaseURL: cfg.RuntimeControl}
		if err := waitReady(ctx, cfg, judge.Runtime); err != nil {
			return err
		}
	} else {
		rts, err := supervise(ctx, cfg, st.Dir)
		if err != nil {
			return err
		}
		defer func() {
			rts.Close()
			// The public sockets supervise bound are Run's: once it returns, an agent
			// started again in the same process (or anything else) can bind them.
			rts.Listener.Close()
			if rts.GRPCListener != nil {
				rts.GRPCListener.Close()
			}
		}()
		judge.Runtimes = rts
	}
	if err := judge.LoadCommitted(ctx, st.Slots); err != nil {
		return err
	}
	if judge.Runtimes != nil {
		// A serving runtime that dies is restarted with the committed model re-loaded
		// and re-measured, as at start; meanwhile the public socket answers 503.
		sctx, stop := context.WithCancel(ctx)
		supervised := make(chan struct{})
		defer func() { stop(); <-supervised }()
		judge.Runtimes.Restart = func(ctx context.Context) error { return judge.LoadCommitted(ctx, st.Slots) }
		go func() { defer close(supervised); judge.Runtimes.Supervise(sctx) }()
	}

	// Then the network.
	conn, err := connect(ctx, cfg, st.TPM)
	if err != nil {
		if ctx.Err() != nil && !cfg.Once {
			return nil
		}
		return err
	}
	defer conn.Close()
	link := &Attested{API: conn.API, TPM: st.TPM, AK: conn.AK, Log: mlog, Labels: cfg.Labels, Hardware: cfg.Hardware,
		AgentVersion: cfg.AgentVersion, Logger: log, Slots: st.Slots, Extra: judge.DriftAttrs,
		BootLog: logPath(cfg.BootLog, DefaultBootLog, st.TPM.URL()), IMALog: logPath(cfg.IMALog, DefaultIMALog, st.TPM.URL()),
		DecryptionKey: dk, Now: cfg.Now}
	// The AK certificate is renewed while the agent runs (a third of its life left),
	// and the device certificate's next ACME orders carry the new one.
	link.RenewAK = func(ctx context.Context) (*attest.AKCertificate, error) {
		return enrollClient(cfg, serverClient(cfg.ServerRoots)).Enroll(ctx, st.TPM)
	}
	if conn.cert != nil {
		link.OnAK = conn.cert.SetAK
	}
	if cfg.AuditKey != nil {
		link.Audit = &AuditWitness{Key: cfg.AuditKey, Witnesses: cfg.AuditWitnesses, Quorum: cfg.AuditQuorum, MaxAge: cfg.AuditMaxAge, Now: cfg.Now,
			Path: st.Dir.AuditCheckpoint(), Logger: log}
	}
	o := &lateOutbox{path: st.Dir.Outbox(), logger: log}
	defer o.Close()
	a, err := updater.NewAgent(updater.AgentConfig{DeviceID: link.DeviceID(), TUF: st.TUF, Slots: st.Slots,
		Director: link, Judge: judge, OpenOutbox: o.Open, Sender: link, Interval: cfg.Interval, TrialTimeout: cfg.TrialTimeout,
		RefreshEveryRound: true, Now: cfg.Now, Sleep: cfg.Sleep, Logger: log})
	if err != nil {
		return err
	}
	link.LastError = a.LastError
	if judge.Runtimes != nil {
		link.LastError = func() *wire.UpdateError {
			return withRuntimeDown(a.LastError(), judge.Runtimes.Health(), cfg.Now(), cfg.Interval)
		}
	}
	if statusSrv != nil {
		statusSrv.setExtra(func(s *Status) {
			s.DeviceID, s.Server, s.LastError, s.ReportsHeld = link.DeviceID(), cfg.Server, link.LastError(), a.HeldReports()
			if judge.Runtimes != nil {
				h := judge.Runtimes.Health()
				s.Runtime = &h
			}
		})
	}
	return loop(ctx, cfg, a)
}

// withRuntimeDown is the check-in's last error: the update error e, or a runtime
// death (wire.ErrorRuntimeDown, with how many since the agent started) when it is
// more recent than e and recent enough to be news: within two check-in intervals (at
// least 10 minutes), so at least one check-in carries it.
//
// A runtime in a crash loop (RuntimeHealth.CrashLoop) is news for as long as it lasts,
// whatever the update error, and the message says how long its restarts are held back.
func withRuntimeDown(e *wire.UpdateError, h RuntimeHealth, now time.Time, interval time.Duration) *wire.UpdateError {
	at := h.LastDeath
	looping := h.CrashLoop > 0
	if h.Deaths == 0 || (!looping && ((e != nil && !at.After(e.At)) || now.Sub(at) > max(2*interval, 10*time.Minute))) {
		return e
	}
	msg := fmt.Sprintf("the inference runtime died %d time(s) since the agent started and was restarted; last: %s", h.Deaths, h.Why)
	if looping {
		msg = fmt.Sprintf("the inference runtime is in a crash loop: it died %d time(s) since the agent started, the last %d in a row within %s of their start; restarts held back %s; last: %s",
			h.Deaths, h.CrashLoop, stableAfter, h.RestartDelay, h.Why)
	}
	return &wire.UpdateError{Kind: wire.ErrorRuntimeDown, At: at.UTC(), Message: msg}
}

// runManaged is the agent without a server: cfg.Director and cfg.Judge decide. ss, if
// not nil, is the status socket.
func runManaged(ctx context.Context, cfg Config, st *State, ss *statusServer) error {
	if cfg.Director == nil {
		return errors.New("agent: without a Server, Config.Director is required")
	}
	o := &lateOutbox{path: st.Dir.Outbox(), logger: cfg.Logger}
	defer o.Close()
	a, err := updater.NewAgent(updater.AgentConfig{DeviceID: cfg.DeviceID, TUF: st.TUF, Slots: st.Slots,
		Director: cfg.Director, Judge: cfg.Judge, OpenOutbox: o.Open, Interval: cfg.Interval, TrialTimeout: cfg.TrialTimeout,
		Now: cfg.Now, Sleep: cfg.Sleep, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	if ss != nil {
		ss.setExtra(func(s *Status) { s.ReportsHeld = a.HeldReports() })
	}
	if cfg.Once {
		if err := st.Slots.Recover(ctx); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	return loop(ctx, cfg, a)
}

// lateOutbox opens the state's outbox for the update loop when it first can
// (updater.AgentConfig.OpenOutbox) and closes it when the loop is done. A device's first
// start on a full disk cannot create outbox.db: the agent then serves, checks in and
// holds its reports in memory until the disk has room, instead of failing to start.
// Safe for concurrent use.
type lateOutbox struct {
	path   string
	logger *slog.Logger

	mu sync.Mutex
	o  *updater.Outbox // guarded by mu
}

// Open opens the outbox at l.path (creating it if needed).
func (l *lateOutbox) Open(ctx context.Context) (*updater.Outbox, error) {
	o, err := updater.OpenOutbox(ctx, l.path)
	if err != nil {
		return nil, err
	}
	o.Logger = l.logger
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.o != nil {
		l.o.Close() // not expected: the agent opens it once
	}
	l.o = o
	return o, nil
}

// Close closes the outbox if Open opened it.
func (l *lateOutbox) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.o != nil {
		l.o.Close()
		l.o = nil
	}
}

// loop runs a's rounds (one with Once) and the offline bundle watch.
func loop(ctx context.Context, cfg Config, a *updater.Agent) error {
	if cfg.Once {
		return a.Step(ctx)
	}
	if cfg.BundleDir != "" {
		go func() {
			if err := a.WatchBundles(ctx, cfg.BundleDir, nil); err != nil && ctx.Err() == nil {
				cfg.Logger.Error("offline bundles", "dir", cfg.BundleDir, "err", err)
			}
		}()
	}
	err := a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// supervise binds the public inference socket (and the gRPC one, if configured), which
// the agent keeps across runtime swaps and passes to every runtime process it starts.
func supervise(ctx context.Context, cfg Config, dir StateDir) (*Runtimes, error) {
	bin := cfg.RuntimeBinary
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find edgeward-runtime beside the agent: %w", err)
		}
		bin = filepath.Join(filepath.Dir(self), "edgeward-runtime")
	}
	ln, err := listenAwaitingDrain(ctx, cfg.Listen, drainWait, cfg.Logger)
	if err != nil {
		return nil, fmt.Errorf("public inference socket %s: %w", cfg.Listen, err)
	}
	r := &Runtimes{Binary: bin, Listener: ln, Dir: string(dir), HealthFile: dir.RuntimeHealth(), Logger: cfg.Logger, LogFormat: cfg.LogFormat}
	if cfg.GRPCListen != "" {
		g, err := listenAwaitingDrain(ctx, cfg.GRPCListen, drainWait, cfg.Logger)
		if err != nil {
			ln.Close()
			return nil, fmt.Errorf("public gRPC inference socket %s: %w", cfg.GRPCListen, err)
		}
		r.GRPCListener = g
	}
	return r, nil
}

// drainWait is how long the agent waits for its address to be free at start: the
// runtime of an agent that was killed gets SIGTERM (Pdeathsig) and drains for up to 30 s
// with the inherited socket still open.
const drainWait = 35 * time.Second

// listenAwaitingDrain listens on addr, retrying for up to wait while the address is in
// use. Restarted within about a second of a kill, the agent found the socket still held
// by its previous runtime, draining, and exited with "address already in use" (found
// from outside, 2 Dec: a supervisor restarting faster than the shipped unit's 5 s got a
// failed start each time). It stops waiting when ctx ends (the agent told to stop).
func listenAwaitingDrain(ctx context.Context, addr string, wait time.Duration, log *slog.Logger) (*net.TCPListener, error) {
	deadline := time.Now().Add(wait)
	for said := false; ; said = true {
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			return ln.(*net.TCPListener), nil
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			return nil, err
		}
		if !said && log != nil {
			log.Warn("the inference address is in use, as while the previous runtime drains: waiting for it", "addr", addr, "for", wait)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("waiting for %s: %w (%w)", addr, context.Cause(ctx), err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitReady waits up to 30 s for the control API of a runtime the agent does not supervise.
func waitReady(ctx context.Context, cfg Config, rc *runtimeapi.Client) error {
	deadline := cfg.Now().Add(30 * time.Second)
	for {
		_, err := rc.Index(ctx)
		if err == nil {
			return nil
		}
		if cfg.Now().After(deadline) {
			return fmt.Errorf("runtime control API %s not reachable: %w", rc.BaseURL, err)
		}
		if err := cfg.Sleep(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// connect enrolls the TPM with the server's attestation CA (EK certificate → AK
// certificate) and returns the device API client, retrying while the server cannot be
// reached or refuses (backoff from 1 s up to the interval) until ctx ends; with Once it
// returns the first error. A TPM the fleet refuses for good (the device was
// decommissioned: attest.ErrOutOfService) asks again only every
// updater.DefaultOutOfServiceInterval, as a check-in refused for that reason does, and
// the log says so: asking every interval, it wrote "cannot connect to the server yet"
// 2,880 times a day and the server logged each refusal (found from outside, 2 Dec).
func connect(ctx context.Context, cfg Config, tpm *attest.TPM) (*connection, error) {
	httpc := serverClient(cfg.ServerRoots)
	interval := cfg.Interval
	if interval <= 0 {
		interval = 5 * time.Minute
	}
	wait := time.Second
	for {
		ak, err := enrollClient(cfg, httpc).Enroll(ctx, tpm)
		if err != nil {
			err = fmt.Errorf("enroll with the attestation CA at %s: %w", cfg.Server, err)
		} else {
			cfg.Logger.Info("enrolled", "device", ak.PermanentIdentifier)
			conn, derr := deviceClient(ctx, cfg, httpc, tpm, ak)
			if derr == nil {
				return conn, nil
			}
			err = fmt.Errorf("device certificate: %w", derr)
		}
		if cfg.Once {
			return nil, err
		}
		if errors.Is(err, attest.ErrOutOfService) {
			again := max(updater.DefaultOutOfServiceInterval, interval)
			cfg.Logger.Warn("the server has taken this device out of service; serving what is committed, asking again later",
				"err", printable.Text(err.Error(), 512), "in", again)
			if err := cfg.Sleep(ctx, again); err != nil {
				return nil, err
			}
			wait = time.Second
			continue
		}
		cfg.Logger.Warn("cannot connect to the server yet; serving what is committed, retrying", "err", err, "in", wait)
		if err := cfg.Sleep(ctx, wait); err != nil {
			return nil, err
		}
		wait = min(2*wait, max(interval, time.Second))
	}
}

// enrollClient is the attestation CA's client at cfg.Server.
func enrollClient(cfg Config, httpc *http.Client) *attest.EnrollClient {
	return &attest.EnrollClient{URL: strings.TrimRight(cfg.Server, "/") + wire.PathAttest, HTTP: httpc}
}

// serverClient is the HTTP client for the server: roots nil keeps the system roots.
// Either way a request has two minutes: without a timeout a server (or a middlebox)
// that accepts and never answers held the agent's round, and with it every trial and
// report, for ever. The transport (serverTransport) gives up sooner on a connection
// that never gets going.
func serverClient(roots *x509.CertPool) *http.Client {
	return &http.Client{Timeout: 2 * time.Minute, Transport: serverTransport(roots)}
}

// serverTransport is Go's default transport (the environment's proxy, a 30 s dial
// timeout, keep-alives) with a 10 s TLS handshake timeout, trusting roots (nil: the
// system's). A replica that accepts connections but does not run (stopped, wedged),
// behind a TCP load balancer that hands it a device's connection, then costs the
// device 10 s and a new connection, not the request's whole two minutes: with a
// --server-ca the transport had no handshake timeout at all.
func serverTransport(roots *x509.CertPool) *http.Transport {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSHandshakeTimeout = serverHandshakeTimeout
	tr.TLSClientConfig = &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	return tr
}

// serverHandshakeTimeout bounds a TLS handshake with the server.
const serverHandshakeTimeout = 10 * time.Second

// deviceClient returns the device API client. When the server names a device CA, the
// device obtains a certificate for a TPM-resident key (ACME device-attest-01) and
// every check-in uses it for mTLS; otherwise the TPM quote alone authenticates it.
func deviceClient(ctx context.Context, cfg Config, httpc *http.Client, tpm *attest.TPM, ak *attest.AKCertificate) (*connection, error) {
	plain := &deviceapi.Client{BaseURL: cfg.Server, HTTP: httpc}
	info, err := plain.DeviceCA(ctx)
	var apiErr *deviceapi.Error
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
		return &connection{AK: ak, API: plain}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	dc, err := NewDeviceCert(ctx, tpm, ak, info, "edgeward-device-tls")
	if err != nil {
		return nil, err
	}
	cfg.Logger.Info("device certificate", "subject", dc.Leaf().Subject.CommonName, "not_after", dc.Leaf().NotAfter)
	tr, ok := httpc.Transport.(*http.Transport)
	if !ok || tr == nil {
		tr = http.DefaultTransport.(*http.Transport)
	}
	tr = tr.Clone()
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr.TLSClientConfig.GetClientCertificate = dc.GetClientCertificate
	return &connection{AK: ak, API: &deviceapi.Client{BaseURL: cfg.Server, HTTP: &http.Client{Timeout: 2 * time.Minute, Transport: tr}}, cert: dc}, nil
}

// connection is the device's link to the server: its AK certificate, the device API
// client and, with mTLS, the device certificate whose TPM-resident key Close unloads.
type connection struct {
	AK   *attest.AKCertificate
	API  *deviceapi.Client
	cert *DeviceCert
}

// Close unloads the device certificate's key from the TPM (a shared TPM has few object slots).
func (c *connection) Close() {
	if c.cert != nil {
		c.cert.Close()
	}
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// RoundDownloadTime bounds the download of one update round (each slot kind's fetch:
// its delta, the delta's apply and the full target after a failed delta in all): past
// it the download pauses at a durable checkpoint and the next round, after its
// check-in, resumes it (updater.Downloader.MaxTime), so that a slow or hostile mirror
// cannot keep the device from checking in.
const RoundDownloadTime = 15 * time.Minute

// downloader is the updater.Downloader of the update loop (RoundDownloadTime), with a
// durable checkpoint every checkpoint bytes when positive, else with its defaults.
func downloader(log *slog.Logger, checkpoint int64) *updater.Downloader {
	d := &updater.Downloader{Logger: log, MaxTime: RoundDownloadTime}
	if checkpoint > 0 {
		d.CheckpointBytes, d.CheckpointInterval = checkpoint, -1
	}
	return d
}
