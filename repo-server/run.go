package reposerver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/internal/clientip"
	"github.com/edgeward/edgeward/internal/connlimit"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/ui"
	"github.com/edgeward/edgeward/repository"
	"github.com/prometheus/client_golang/prometheus"
)

// LastGoodPolicyFile, in the repository directory, holds a copy of the files of the
// policy in force (policy.WatcherConfig.LastGood).
const LastGoodPolicyFile = "policy-last-good.json"

// Config is a whole Edgeward server (`edgeward server`): the repository it serves and
// signs online metadata for, the fleet store and audit log, the attestation CA, the
// device and operator APIs, the dashboard, the fleet policy and, with TLSListen, TLS
// with a device CA. Only Dir is required; every other zero value is documented and
// works on a laptop. Run does not modify the Config.
//
// State lives beside the repository in Dir: fleet.db (fleet store and audit log, unless
// DB names another database),
// attest/ (attestation CA), policy/ (fleet policy), tls/ (server certificate), stepca/
// (the embedded device CA). What is missing is created on first start.
type Config struct {
	// Dir is the repository directory ('edgeward repo init'). Required.
	Dir string
	// DB is the database of the fleet store and the audit log: a PostgreSQL URL
	// (postgres://user:password@host:5432/edgeward?sslmode=verify-full), which several
	// replicas may share, or a sqlite file. "": Dir/fleet.db (sqlite). See
	// docs/OPERATORS.md, "Running on PostgreSQL".
	DB string
	// NewDatabase lets the server start on a database other than the one the
	// repository directory was served with (DatabaseMarker), and serve it from then on.
	// false: such a database is refused (ErrOtherDatabase).
	NewDatabase bool
	// Listen is the plain-HTTP address. It serves TUF metadata and targets, /healthz,
	// /metrics and the audit log's public API; the operator API and the dashboard only
	// without TLSListen or with PlainOperators; the device API only with PlainDevices.
	// "": 127.0.0.1:8440. ListenOff: no plain listener (TLSListen is then required).
	Listen string
	// TLSListen, if set, also serves HTTPS there (everything), and devices must then use
	// mTLS with a certificate from the device CA. "": no TLS listener and no device CA.
	TLSListen string
	// PlainOperators serves the operator API and the dashboard on the plain listener
	// although TLSListen is set (a TLS proxy in front of it, a lab on loopback). false:
	// with TLSListen they answer only over TLS, and on the plain listener 403.
	PlainOperators bool
	// PlainDevices serves the device API (nonces, check-ins) and enrollment on the
	// plain listener. false: devices must use TLSListen; the plain listener answers
	// them 403 before reading anything, so it cannot be used to fill the nonce store.
	PlainDevices bool
	// TLSNames are the names in the server's self-signed TLS certificate (Dir/tls,
	// created on first start; devices pin Dir/tls/server.pem). nil: localhost and
	// 127.0.0.1.
	TLSNames []string
	// CAURL and CARoot name an external step-ca (ACME directory URL, PEM root file) that
	// issues device certificates. "": with TLSListen, step-ca is embedded (Dir/stepca)
	// and trusts the attestation CA.
	CAURL, CARoot string
	// AttestDir holds the attestation CA's key and certificate. "": Dir/attest. Either
	// way a CA is created there on first start.
	AttestDir string
	// EKRoots is a PEM file of the TPM manufacturer roots EK certificates must chain to.
	// "": no TPM can enroll (a warning is logged).
	EKRoots string
	// EKIntermediates is a PEM file of manufacturer intermediates. "": none.
	EKIntermediates string
	// EKAllowlist, when set, is a file of the EKs that may enroll (EK IDs, one a line,
	// or PEM EK certificates), read again when it changes (ekAllowlist). "": every TPM
	// whose EK certificate chains to EKRoots.
	EKAllowlist string
	// PolicyDir is the fleet policy directory, hot-reloaded; rollouts created through
	// the operator API are written there. "": Dir/policy, created with a starter policy
	// (no rollouts) on first start. A directory named here is never created: a typo
	// must not start an empty fleet policy; if it does not exist the server runs
	// without rollouts. A copy of the policy in force is kept in
	// Dir/LastGoodPolicyFile: a server started on a directory that does not load
	// starts from it (and fails only without one).
	PolicyDir string
	// CheckInInterval is suggested to devices. 0: 30 seconds.
	CheckInInterval time.Duration
	// CheckInBurst and CheckInEvery bound each device's check-ins
	// (DeviceConfig.CheckInBurst).
	CheckInBurst int
	CheckInEvery time.Duration
	// Retention is how long the fleet's history (attestation verdicts, routing
	// decisions, install reports of finished rollouts) is kept; 0: forever
	// (DeviceConfig.Retention).
	Retention time.Duration
	// MeasurementPCR is the PCR devices measure artifacts into (must match the agents'
	// --pcr). 0: 16 (development; production uses 23).
	MeasurementPCR int
	// RefreshInterval is how often online metadata expiry is checked.
	// 0: min(1 minute, timestamp lifetime / 10).
	RefreshInterval time.Duration
	// CheckpointInterval is how often the audit checkpoint is signed and sent to the
	// witnesses. 0: 10 seconds.
	CheckpointInterval time.Duration
	// Witnesses are base URLs of 'edgeward audit witness' services. nil: none.
	Witnesses []string
	// KEK is the key-encryption key of encrypted targets' content keys (issue 18;
	// edgeward keys kek). With it the server publishes encrypted targets
	// (POST /v1/publish?encrypt=1) and releases their keys to attested devices. nil:
	// neither.
	KEK []byte
	// Signing, if set, holds the delegated keys the server signs published targets
	// with (POST /v1/publish). nil: the server signs no targets (503).
	Signing *repository.KeyRing
	// SecureCookie marks the dashboard's session cookie Secure even on plain HTTP.
	SecureCookie bool
	// TrustedProxies are the reverse proxies in front of the server whose
	// X-Forwarded-For is honoured (ServerConfig.TrustedProxies; `--trusted-proxy`). nil:
	// none; every request's source is its TCP peer.
	TrustedProxies []netip.Prefix
	// ProxyProtocol makes the TLS listener read the PROXY protocol (version 1 or 2)
	// from TrustedProxies: a TCP proxy passing TLS through (nginx's stream module with
	// `proxy_protocol on`, the way to front mTLS devices) names each connection's
	// client in a header before the TLS handshake, and the per-source bounds and
	// audit records then see that client instead of the proxy. A connection from a
	// trusted proxy without a valid header is closed; from any other peer no header is
	// read (one sent anyway fails the TLS handshake). Requires TLSListen and
	// TrustedProxies. false: no header is read from anyone.
	ProxyProtocol bool
	// MaxConns bounds the connections the listeners keep open at once, together (one
	// over it is closed unserved, with a reset): 0, half the file descriptors left
	// after 512 for the server's own files (connlimit.FromDescriptors; with a limit of
	// 20,000, 9,744); negative, no bound. Without it, clients holding connections
	// that send nothing use up the descriptors until the header timeout, and the server
	// can then open no file, database connection or log segment.
	MaxConns int
	// MaxConnsPerSource bounds the connections one source (an IPv4 address, an IPv6
	// /64) keeps open at once on the listeners; TrustedProxies are bounded only by
	// MaxConns. 0: 1,024 (devices behind one NAT each keep a connection open between
	// check-ins); negative: no bound.
	MaxConnsPerSource int
	// Logger receives the server's logs. nil: discard.
	Logger *slog.Logger
	// Ready, if set, is called once the listeners are bound, with their addresses
	// (tls is nil without TLSListen, http nil with ListenOff). Tests use it to find ":0" ports.
	Ready func(http, tls net.Addr)
}

// Run builds the server Config describes and serves until ctx ends. The repository
// records its events (publishes, refreshes, key changes) in the server's audit log; a
// failure to record fails the change.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Dir == "" {
		return fmt.Errorf("server: no repository directory")
	}
	listen := cfg.Listen
	if listen == "" {
		listen = "127.0.0.1:8440"
	}
	if listen == ListenOff && cfg.TLSListen == "" {
		return errors.New("server: --listen off needs --tls-listen: there would be nothing to serve on")
	}
	if cfg.ProxyProtocol && (cfg.TLSListen == "" || len(cfg.TrustedProxies) == 0) {
		return errors.New("server: --proxy-protocol needs --tls-listen (the listener it applies to) and --trusted-proxy (the only peers whose PROXY header is read)")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	rec := &lateRecorder{}
	repo, err := repository.Open(repository.Config{Dir: cfg.Dir, Actor: "server", Logger: log, Recorder: rec})
	if err != nil {
		return err
	}
	if _, err := repo.Load(ctx); err != nil {
		return fmt.Errorf("repository %s: %w", cfg.Dir, err)
	}
	srv, err := NewServer(ServerConfig{Repo: repo, Renew: cfg.Signing, RefreshInterval: cfg.RefreshInterval, Logger: log, Witnesses: cfg.Witnesses, CheckpointInterval: cfg.CheckpointInterval, DB: cfg.DB, TrustedProxies: cfg.TrustedProxies})
	if err != nil {
		return err
	}
	rec.s = srv
	if !cfg.NewDatabase {
		if err := guardLostDatabase(ctx, cfg.Dir, DBLocation(cfg.Dir, cfg.DB)); err != nil {
			return err
		}
	}
	store, err := fleet.Open(ctx, DBLocation(cfg.Dir, cfg.DB))
	if err != nil {
		return err
	}
	defer store.Close()
	log.Info("fleet store", "engine", store.Engine())
	if err := checkDatabase(ctx, cfg.Dir, store, DBLocation(cfg.Dir, cfg.DB), cfg.NewDatabase, log); err != nil {
		return err
	}
	if len(cfg.TrustedProxies) > 0 {
		log.Info("X-Forwarded-For is honoured from trusted proxies only", "trusted_proxies", fmt.Sprint(cfg.TrustedProxies))
	}

	attestDir := cfg.AttestDir
	if attestDir == "" {
		attestDir = filepath.Join(cfg.Dir, "attest")
	}
	caKey, caCert, err := loadOrCreateAttestCA(attestDir)
	if err != nil {
		return err
	}
	var allow *ekAllowlist
	if cfg.EKAllowlist != "" {
		allow = &ekAllowlist{path: cfg.EKAllowlist}
		ids, err := allow.load()
		if err != nil {
			return fmt.Errorf("EK allowlist: %w", err)
		}
		log.Info("EK allowlist: only the TPMs it lists enroll", "file", cfg.EKAllowlist, "eks", len(ids))
	}
	cacfg := attestca.Config{Signer: caKey, Certificate: caCert, Logger: log,
		// Pending challenges live in the fleet database: any replica can take the answer.
		Challenges: Challenges{Fleet: store},
		// Every enrollment decision (challenge, issued, rejected) goes to the audit log.
		Audit: srv.AuditAttestCA,
		// A decommissioned device enrolls no more (its ID is its EK's).
		Refuse: refuseEK(allow, refuseDecommissionedEK(store))}
	if cfg.EKRoots != "" {
		if cacfg.ManufacturerRoots, err = loadPool(cfg.EKRoots); err != nil {
			return fmt.Errorf("EK roots: %w", err)
		}
	} else {
		log.Warn("no EK roots (--ek-roots): no TPM can enroll")
	}
	if cfg.EKIntermediates != "" {
		if cacfg.ManufacturerIntermediates, err = loadPool(cfg.EKIntermediates); err != nil {
			return fmt.Errorf("EK intermediates: %w", err)
		}
	}
	ca, err := attestca.New(cacfg)
	if err != nil {
		return err
	}

	policyDir := cfg.PolicyDir
	if policyDir == "" {
		policyDir = filepath.Join(cfg.Dir, "policy")
		if err := ensurePolicyDir(policyDir); err != nil {
			return err
		}
	}
	var current func() *policy.Policy
	op := OperatorConfig{Fleet: store, Signing: cfg.Signing, KEK: cfg.KEK}
	if _, err := os.Stat(policyDir); err == nil {
		removeStaleStaged(ctx, srv, policyDir, log)
		w, err := policy.NewWatcher(policy.WatcherConfig{Dir: policyDir, Registerer: srv.Registry(), Logger: log,
			// Every policy put in force is audited with its digest and what changed
			// (attestation requirements, rollouts); one that cannot be audited is not
			// put in force.
			// Not again when the log's last policy is this one: at start (a record at
			// every start said nothing new, and on a full disk it kept the server from
			// starting at all), and at a change every replica's watcher sees (one record
			// per replica of one change): found from outside, 2 Dec.
			OnChange: func(old, new *policy.Policy) error {
				return srv.auditUnlessLast(ctx, "server", "policy.reload", new.Digest, policy.Changes(old, new))
			},
			// A copy of the policy in force, to start from when the directory does not
			// load (a typo in a hand-edited file took the whole fleet's server down at
			// its next restart: found from outside). The rejection is in the log, the
			// metrics, /v1/policy, rollout status and the dashboard, as at a reload.
			LastGood: filepath.Join(cfg.Dir, LastGoodPolicyFile)})
		if err != nil {
			return err
		}
		defer w.Close()
		go w.Run(ctx)
		current = w.Policy
		op.PolicyDir, op.Policy, op.PolicyStatus = policyDir, w.Policy, w.Status
		log.Info("policy", "dir", policyDir, "status", w.Status())
	} else {
		log.Warn("no policy directory: no rollouts", "dir", policyDir)
	}
	if err := srv.EnableOperatorAPI(op); err != nil {
		return err
	}
	dash, err := ui.New(ui.Config{Fleet: store, Policy: op.Policy, PolicyStatus: op.PolicyStatus, Logger: log, SecureCookie: cfg.SecureCookie,
		Audit: func(ctx context.Context) (*audit.Log, io.Closer, error) { return OpenAuditAt(ctx, repo, cfg.DB) }})
	if err != nil {
		return err
	}
	srv.Handle("/ui/", dash.Handler())

	limiter := connLimiter(cfg, srv, log)
	dcfg := DeviceConfig{Fleet: store, AttestCA: ca, Policy: current, CheckInInterval: cfg.CheckInInterval, CheckInBurst: cfg.CheckInBurst, CheckInEvery: cfg.CheckInEvery, Retention: cfg.Retention, MeasurementPCR: cfg.MeasurementPCR, KEK: cfg.KEK}
	var tlsLn net.Listener
	if cfg.TLSListen != "" {
		closeCA, err := deviceCA(ctx, cfg, caCert, &dcfg, store, srv.cfg.Replica, log)
		if err != nil {
			return err
		}
		defer closeCA()
		names := cfg.TLSNames
		if names == nil {
			names = []string{"localhost", "127.0.0.1"}
		}
		cert, err := loadOrCreateServerCert(filepath.Join(cfg.Dir, "tls"), names, log.Warn)
		if err != nil {
			return err
		}
		raw, err := net.Listen("tcp", cfg.TLSListen)
		if err != nil {
			return err
		}
		raw = limiter.Listen(raw)
		if cfg.ProxyProtocol {
			raw = clientip.New(cfg.TrustedProxies).ProxyListener(raw, proxyHeaderTimeout, func(peer net.Addr, err error) {
				log.Warn("closed a trusted proxy's connection without a valid PROXY protocol header", "peer", peer.String(), "err", err)
			})
			log.Info("the TLS listener reads the PROXY protocol from trusted proxies", "trusted_proxies", fmt.Sprint(cfg.TrustedProxies))
		}
		tlsLn = tls.NewListener(raw, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.VerifyClientCertIfGiven,
			ClientCAs: dcfg.ClientRoots, MinVersion: tls.VersionTLS12})
		log.Info("serving TLS (devices must use mTLS)", "addr", "https://"+raw.Addr().String(), "server_cert", filepath.Join(cfg.Dir, "tls", "server.pem"))
	}
	if err := srv.EnableDeviceAPI(dcfg); err != nil {
		return err
	}
	if listen == ListenOff { // tlsLn is set: checked at the start
		log.Info("no plain-HTTP listener (--listen off)", "dashboard", "https://"+tlsLn.Addr().String()+"/ui/")
		if cfg.Ready != nil {
			cfg.Ready(nil, tlsLn.Addr())
		}
		return srv.Serve(ctx, tlsLn)
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		if tlsLn != nil {
			tlsLn.Close()
		}
		return err
	}
	ln = limiter.Listen(ln)
	exp := Exposure{Operators: tlsLn == nil || cfg.PlainOperators, Devices: cfg.PlainDevices}
	// Without TLS the operators are served here: only devices can be refused.
	devicesWhy, operatorsWhy := ": start the server with --plain-devices to allow devices over plain HTTP", ""
	if tlsLn != nil {
		devicesWhy = fmt.Sprintf(": use https://%s (or start the server with --plain-devices)", tlsLn.Addr())
		operatorsWhy = fmt.Sprintf(": use https://%s (or start the server with --plain-operators)", tlsLn.Addr())
	}
	var tlsAddr net.Addr
	if tlsLn != nil {
		tlsAddr = tlsLn.Addr()
		go func() {
			if err := srv.ServeListener(ctx, tlsLn); err != nil {
				log.Error("TLS listener", "err", err)
			}
		}()
	}
	log.Info("serving", "addr", "http://"+ln.Addr().String(), "repo", cfg.Dir, "operators", exp.Operators, "devices", exp.Devices)
	if exp.Operators && !isLoopback(ln.Addr()) {
		log.Warn("the operator API and the dashboard are served over plain HTTP on a non-loopback address: tokens and sessions cross the network in clear (use --tls-listen)", "addr", ln.Addr().String())
	}
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr(), tlsAddr)
	}
	// Metadata GETs on the plain listener skip net/http (QuickListener).
	return srv.ServeWith(ctx, srv.QuickListener(ln), srv.Restrict(exp, devicesWhy, operatorsWhy))
}

// removeStaleStaged removes the rollout files a crash left staged in the policy
// directory (policy.RemoveStaleStaged: older than policy.StaleStagedAge, so that a
// replica creating a rollout right now keeps its file), each after an audit record
// of its removal ("policy.staged.removed"; a file whose record fails is kept). A
// failure is logged: it leaves only files no watcher loads.
func removeStaleStaged(ctx context.Context, srv *Server, dir string, log *slog.Logger) {
	removed, err := policy.RemoveStaleStaged(dir, time.Now().Add(-policy.StaleStagedAge), func(name string) error {
		return srv.AuditEvent(ctx, "server", "policy.staged.removed", name, map[string]string{
			"dir": dir, "reason": "staged rollout file older than " + policy.StaleStagedAge.String() + " (a creation interrupted before its rename)"})
	})
	if len(removed) > 0 {
		log.Warn("removed rollout files a crash left staged", "dir", dir, "files", removed)
	}
	if err != nil {
		log.Error("remove stale staged rollout files", "dir", dir, "err", err)
	}
}

// connLimiter is the bound on the listeners' connections (Config.MaxConns,
// MaxConnsPerSource), with its metrics registered on srv and its refusals logged at
// most once every 10 seconds (with how many there were).
func connLimiter(cfg Config, srv *Server, log *slog.Logger) *connlimit.Limiter {
	c := connlimit.Config{Max: cfg.MaxConns, PerSource: cfg.MaxConnsPerSource, Exempt: clientip.New(cfg.TrustedProxies).Trusted}
	switch {
	case c.Max == 0:
		c.Max = connlimit.FromDescriptors(512)
	case c.Max < 0:
		c.Max = 0
	}
	switch {
	case c.PerSource == 0:
		c.PerSource = 1024
	case c.PerSource < 0:
		c.PerSource = 0
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeward_connections_refused_total",
		Help: "Connections closed unserved because the listeners were at their bound (bound=total, --max-conns) or the source was (bound=source, --max-conns-per-source)."}, []string{"bound"})
	var mu sync.Mutex
	var last time.Time
	var since int
	c.Refused = func(bound string, peer net.Addr) {
		refused.WithLabelValues(bound).Inc()
		mu.Lock()
		defer mu.Unlock()
		since++
		if now := time.Now(); now.Sub(last) >= 10*time.Second {
			log.Warn("connections refused: at the bound", "bound", bound, "peer", peer.String(), "refused_since_last_warning", since, "max_conns", c.Max, "max_conns_per_source", c.PerSource)
			last, since = now, 0
		}
	}
	l := connlimit.NewLimiter(c)
	srv.Registry().MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgeward_connections_open",
		Help: "Connections the listeners hold open now."}, func() float64 { return float64(l.Open()) }))
	log.Info("connection bounds", "max_conns", c.Max, "max_conns_per_source", c.PerSource)
	return l
}

// proxyHeaderTimeout bounds how long a trusted proxy's connection may take to send its
// PROXY protocol header (nginx sends it as soon as it connected).
const proxyHeaderTimeout = 10 * time.Second

// ListenOff as Config.Listen (`--listen off`) disables the plain-HTTP listener.
const ListenOff = "off"

func isLoopback(a net.Addr) bool {
	t, ok := a.(*net.TCPAddr)
	return ok && t.IP.IsLoopback()
}

// deviceCA sets dcfg's device CA: the external step-ca cfg names, or an embedded one
// trusting the attestation CA. The returned function stops an embedded CA.
//
// On PostgreSQL, where replicas may share the directory, the CA's creation holds the
// LeaseStepCA lease (replicas starting together create one CA), and each replica keeps
// step-ca's configuration and database (which admits one process) in a directory of
// its own: DIR/stepca/replicas/<host>_<TLS port>, or a fresh one removed at exit when
// the TLS port is chosen by the system.
func deviceCA(ctx context.Context, cfg Config, attestRoot *x509.Certificate, dcfg *DeviceConfig, store *fleet.Store, replica string, log *slog.Logger) (func(), error) {
	if cfg.CAURL != "" {
		pemBytes, err := os.ReadFile(cfg.CARoot)
		if err != nil {
			return nil, fmt.Errorf("device CA root: %w", err)
		}
		pool, err := loadPool(cfg.CARoot)
		if err != nil {
			return nil, fmt.Errorf("device CA root: %w", err)
		}
		dcfg.ClientRoots, dcfg.DeviceCA = pool, &wire.DeviceCA{DirectoryURL: cfg.CAURL, RootPEM: string(pemBytes)}
		return func() {}, nil
	}
	sc := stepca.Config{Dir: filepath.Join(cfg.Dir, "stepca"), AttestationRoots: []*x509.Certificate{attestRoot},
		Refuse: refuseDecommissioned(store)}
	cleanup := func() {}
	if store.Engine() == "postgres" {
		sc.Lock = LeaseLock(store, LeaseStepCA, replica, 0, nil, log)
		state, ephemeral, err := stepCAStateDir(sc.Dir, cfg.TLSListen)
		if err != nil {
			return nil, fmt.Errorf("embedded step-ca: %w", err)
		}
		sc.StateDir = state
		if ephemeral {
			cleanup = func() { os.RemoveAll(state) }
		}
	}
	sca, err := stepca.Start(ctx, sc)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("embedded step-ca: %w", err)
	}
	dcfg.ClientRoots = x509.NewCertPool()
	dcfg.ClientRoots.AddCert(sca.Root)
	dcfg.DeviceCA = &wire.DeviceCA{DirectoryURL: sca.DirectoryURL, RootPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: sca.Root.Raw}))}
	log.Info("device CA (embedded step-ca)", "acme", sca.DirectoryURL, "state", sc.StateDir)
	go rotateStepCA(ctx, sca, stepCADBMax, time.Hour, log)
	return func() { sca.Close(); cleanup() }, nil
}

// stepCAStateDir is a replica's own directory for step-ca's configuration and database
// under dir: named after the host and the TLS listener's port, which no other replica
// on the host can share, so a restart finds it again; a fresh one (ephemeral) when the
// port is the system's choice.
func stepCAStateDir(dir, tlsListen string) (path string, ephemeral bool, err error) {
	base := filepath.Join(dir, "replicas")
	if err := os.MkdirAll(base, 0o700); err != nil {
		return "", false, err
	}
	host, _ := os.Hostname()
	_, port, _ := net.SplitHostPort(tlsListen)
	if host == "" || port == "" || port == "0" {
		p, err := os.MkdirTemp(base, "process-")
		return p, true, err
	}
	name := strings.Map(func(r rune) rune {
		if r == '.' || r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
			return r
		}
		return '_'
	}, host+"_"+port)
	p := filepath.Join(base, name)
	return p, false, os.MkdirAll(p, 0o700)
}

// lateRecorder records the repository's events in the server's audit log; the
// repository is opened before the server exists, so the server is set afterwards.
type lateRecorder struct{ s *Server }

func (r *lateRecorder) Record(ctx context.Context, actor, kind, subject string, data any) error {
	if r.s == nil {
		return fmt.Errorf("record %s: the server is not built yet", kind)
	}
	return r.s.Record(ctx, actor, kind, subject, data)
}

// Record appends a repository event to the server's audit log (the server is a
// repository.Recorder). An error means nothing was recorded.
func (s *Server) Record(ctx context.Context, actor, kind, subject string, data any) error {
	return s.auditLog(ctx, actor, kind, subject, data)
}

// refuseDecommissioned is the embedded step-ca's check before it signs a device
// certificate (stepca.Config.Refuse): a decommissioned device gets none, so its last
// one lapses within a day. A device the fleet does not know yet (it gets its first
// certificate before its first check-in) is not refused; one whose record cannot be
// read is, for now (it asks again at its next renewal).
func refuseDecommissioned(store *fleet.Store) func(ctx context.Context, ids []string) error {
	return func(ctx context.Context, ids []string) error {
		for _, id := range ids {
			d, err := store.Device(ctx, id)
			switch {
			case errors.Is(err, fleet.ErrNotFound):
				continue
			case err != nil:
				return fmt.Errorf("cannot check the device's record: %w", err)
			case d.Decommissioned():
				return fmt.Errorf("%w at %s: %s", fleet.ErrDecommissioned, d.DecommissionedAt.UTC().Format(time.RFC3339), d.DecommissionReason)
			}
		}
		return nil
	}
}

// refuseDecommissionedEK is the attestation CA's Refuse: a decommissioned device (its ID
// is its EK's) gets no challenge and no AK certificate (attestca.ErrRefused, for good:
// ErrRefusedForGood, so that it asks only hourly); a store
// that cannot say fails the enrollment, to be retried, rather than refusing it.
func refuseDecommissionedEK(store *fleet.Store) func(ctx context.Context, ekID string) error {
	refuse := refuseDecommissioned(store)
	return func(ctx context.Context, ekID string) error {
		err := refuse(ctx, []string{ekID})
		if errors.Is(err, fleet.ErrDecommissioned) {
			err = fmt.Errorf("%w (%w): %w", attestca.ErrRefused, attestca.ErrRefusedForGood, err)
		}
		return caUnavailable(err)
	}
}

// stepCADBMax is the size of the embedded step-ca's database past which it is rotated
// (stepca.Server.Rotate): about 25,000 device certificates at 10 KB each, a day of a
// 25,000-device fleet's renewals. Unrotated, a fleet of 10,000 devices renewing daily
// would grow it by about 36 GB a year.
const stepCADBMax = 256 << 20

// rotateStepCA checks sca's database every interval until ctx ends, and rotates it
// once it has grown past max.
func rotateStepCA(ctx context.Context, sca *stepca.Server, max int64, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		n, err := sca.DBBytes()
		if err != nil || n < max {
			continue
		}
		if err := sca.Rotate(ctx); err != nil {
			log.Error("device CA: rotate its database", "bytes", n, "err", err)
			continue
		}
		log.Info("device CA: database rotated (ACME accounts are registered again on demand)", "bytes", n)
	}
}
