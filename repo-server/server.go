package reposerver

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeward/edgeward/internal/clientip"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/edgeward/edgeward/repository"
)

// ServerConfig configures the repository server. Only Repo is required.
type ServerConfig struct {
	Repo *repository.Repo
	// Renew, if set, holds the keys of the delegated roles (models, runtimes: the
	// server's --sign-delegated key ring); the leader then renews those roles past half
	// their lifetime (repository.Repo.RenewDue) beside the timestamp and snapshot. Nil:
	// their holders renew them ('edgeward repo renew').
	Renew *repository.KeyRing
	// RefreshInterval is how often the server checks whether the timestamp and snapshot
	// need re-signing. 0: one minute, or a tenth of the timestamp lifetime if shorter.
	RefreshInterval time.Duration
	Logger          *slog.Logger         // nil: discard
	Registry        *prometheus.Registry // nil: a new one (served at /metrics)
	// CheckpointInterval is how often the audit log's checkpoint is signed while records
	// accumulate, and sent to the witnesses. 0: 10 seconds.
	CheckpointInterval time.Duration
	// CheckpointRefresh is how old the audit log's newest checkpoint may be in a
	// check-in's answer: the server keeps the newest one in memory, noting those it
	// signs at once, and reads the database again after this long, or at once when a
	// device echoes a newer one (signed at another replica). A database rolled back
	// under a running server is shown to devices at most this much later (their next
	// check-in after it refuses the answer). 0: one second; negative: read at every
	// check-in.
	CheckpointRefresh time.Duration
	// RefusalInterval is the window over which refused device requests from one source
	// are aggregated into one audit record. 0: one minute.
	RefusalInterval time.Duration
	// BodyTimeout bounds how long a request's body may take to arrive; a publication's
	// upload (it may be GiBs), once authenticated and checked, how long each read of
	// it may wait instead. 0: 30 seconds. With ReadHeaderTimeout and an
	// idle timeout of two minutes, a client that opens connections and trickles bytes
	// (or sends nothing more) cannot hold them, and what the server set aside for them,
	// for ever.
	BodyTimeout time.Duration
	// StallTimeout bounds how long a long response — a target download, the audit
	// export, the dashboard's pages, /metrics — may wait on a client that takes nothing:
	// each write of it gets this long (0: 2 minutes). A slow client that keeps reading
	// gets the whole response, however long it takes; one that stops is cut off, and
	// what it held (a goroutine, a socket, an open blob, the audit export's read
	// transaction) is freed.
	StallTimeout time.Duration
	// Witnesses are the base URLs of `edgeward audit witness` services (C2SP
	// tlog-witness) that cosign the audit log's checkpoints. nil: none.
	Witnesses []string
	// DB is the server's database, where the audit log lives (DBLocation): a
	// PostgreSQL URL or a sqlite file. "": DBPath(Repo.Dir()). The fleet store attached
	// with the device or operator API must be on the same database.
	DB string
	// Replica names this server among the replicas on one fleet database, as the
	// holder of leases. "": host name, process ID and a random suffix.
	Replica string
	// LeaseTTL is how long the leader lease lasts unrenewed (see LeaseLeader); its
	// holder renews it every third of that, and another replica takes over at most
	// LeaseTTL plus a third after the holder died (at once when it shuts down cleanly).
	// It bounds a dead publisher's hold on the publish lock too. 0: 6 seconds.
	LeaseTTL time.Duration
	// Now is the clock of the leases and of the newest audit checkpoint's refresh
	// (CheckpointRefresh). nil: the repository's clock (Repo.Now).
	Now func() time.Time
	// TrustedProxies are the reverse proxies (nginx, a load balancer) whose
	// X-Forwarded-For is honoured: a request whose peer is in one of them comes from the
	// rightmost address in that header that is not (clientip.Proxies.Client), so that
	// the per-source bounds (dashboard sign-in, pending enrollment challenges, refused
	// request aggregation) see the client, not the proxy. The header is ignored from
	// every other peer, so a client cannot choose its source. nil: trust nobody; the
	// source is the TCP peer. Applied by ServeWith and ServeListenerWith, not Handler.
	TrustedProxies []netip.Prefix
}

// Server serves a repository's metadata and targets over HTTP and keeps its online
// metadata fresh. Other subsystems mount their handlers with Handle. Safe for concurrent
// use.
type Server struct {
	cfg ServerConfig
	// pruned is when the leader last pruned old versioned metadata (RefreshOnce).
	pruned time.Time
	// publishing is the publish lease of the change under way (lockPublish), for the
	// repository's check that it is still held (publishHeld).
	publishing atomic.Pointer[LeaseHolder]
	// leaseNow is ServerConfig.Now when given: the fleet store judges leases by it
	// instead of the database's clock (fleet.Store.UseLeaseClock).
	leaseNow func() time.Time
	log      *slog.Logger
	mux      *http.ServeMux
	reg      *prometheus.Registry
	meta     *metaCache
	// metaCount counts metadata requests (served without the mux's count wrapper).
	metaCount *codeCounter
	// targetCount counts target requests, through the mux or not.
	targetCount *codeCounter

	requests  *prometheus.CounterVec
	versions  *prometheus.GaugeVec
	expiresIn *prometheus.GaugeVec
	refreshes *prometheus.CounterVec

	devices *deviceAPI // nil until EnableDeviceAPI

	refused refusals

	newest newestCheckpoint // the audit log's newest checkpoint, for check-ins

	auditMu sync.Mutex
	audit   *audit.Log
	auditDB *sql.DB      // the repository's audit database, when no fleet store is attached
	fleetDB *sql.DB      // the attached fleet store's database (holds the audit log)
	fleet   *fleet.Store // the attached fleet store, auditing into audit

	leaseMu sync.Mutex
	lease   fleet.Lease // the leader lease as last seen
}

// NewServer builds the server; it serves nothing until its Handler is used.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Repo == nil {
		return nil, errors.New("server: no repository")
	}
	s := &Server{cfg: cfg, log: cfg.Logger, reg: cfg.Registry, mux: http.NewServeMux(), meta: newMetaCache(cfg.Repo.MetadataDir())}
	s.refused.interval = cfg.RefusalInterval
	if s.refused.interval <= 0 {
		s.refused.interval = time.Minute
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.reg == nil {
		s.reg = prometheus.NewRegistry()
		s.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	if s.cfg.Replica == "" {
		s.cfg.Replica = replicaName()
	}
	// Every change the server makes to the repository (a publish through the operator
	// API, a re-signing) holds the publish lease once a fleet store is attached: one
	// writer at a time across replicas and CLI processes on the database.
	s.cfg.Repo = cfg.Repo.WithLease(s.lockPublish, s.publishHeld)
	if s.cfg.LeaseTTL <= 0 {
		s.cfg.LeaseTTL = DefaultLeaseTTL
	}
	if s.cfg.Now == nil {
		s.cfg.Now = cfg.Repo.Now
	} else {
		s.leaseNow = s.cfg.Now // given: leases follow it rather than the database's clock (tests)
	}
	if s.cfg.RefreshInterval <= 0 {
		s.cfg.RefreshInterval = min(time.Minute, cfg.Repo.Expiry().Timestamp/10)
	}
	s.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_repo_http_requests_total", Help: "Repository HTTP requests by route and status code.",
	}, []string{"route", "code"})
	s.versions = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeward_tuf_metadata_version", Help: "Current version of each TUF role's metadata.",
	}, []string{"role"})
	s.expiresIn = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "edgeward_tuf_metadata_expires_in_seconds", Help: "Seconds until each TUF role's metadata expires (negative: expired).",
	}, []string{"role"})
	s.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_tuf_refresh_total", Help: "Online metadata refreshes by result (renewed, unchanged, error).",
	}, []string{"result"})
	s.reg.MustRegister(s.requests, s.versions, s.expiresIn, s.refreshes)

	s.metaCount = newCodeCounter(s.requests, "metadata")
	s.mux.Handle("GET /metadata/{file}", http.HandlerFunc(s.serveMetadata)) // counts itself
	s.targetCount = newCodeCounter(s.requests, "targets")
	s.mux.Handle("GET /targets/{path...}", s.counted(s.targetCount, http.HandlerFunc(s.serveTarget)))
	s.mux.Handle("GET /healthz", s.count("healthz", http.HandlerFunc(s.serveHealth)))
	s.mux.Handle("GET /readyz", s.count("readyz", http.HandlerFunc(s.serveReady)))
	s.mux.Handle("GET /metrics", s.stallGuard(promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg})))
	s.mountAuditAPI()
	return s, nil
}

// Handler is the server's HTTP handler.
func (s *Server) Handler() http.Handler { return http.HandlerFunc(s.serve) }

// Handle mounts another subsystem's handler (attestation CA, dashboard), its responses
// under the stall timeout (stallGuard).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, s.stallGuard(h)) }

// Registry is where the server's metrics are registered; other subsystems may add theirs.
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Serve serves on ln and refreshes the online metadata (and plans rollouts, when the
// device API is enabled) until ctx ends.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	return s.ServeWith(ctx, ln, s.Handler())
}

// ServeWith is Serve with h (the server's Handler, or a Restrict of it) on ln.
func (s *Server) ServeWith(ctx context.Context, ln net.Listener, h http.Handler) error {
	if n, size, err := s.cfg.Repo.SweepIncoming(); err != nil {
		s.log.Warn("sweep abandoned incoming files", "err", err)
	} else if n > 0 {
		s.log.Info("removed incoming files that killed publishes left", "files", n, "bytes", size)
	}
	if n, err := s.cfg.Repo.SweepMetadataTemps(time.Now()); err != nil {
		s.log.Warn("sweep abandoned metadata temporaries", "err", err)
	} else if n > 0 {
		s.log.Info("removed temporary metadata files that killed writes left", "files", n)
	}
	if s.leases() != nil {
		// Know who leads before the jobs start, then keep the lease.
		if _, err := s.LeaseOnce(ctx); err != nil {
			s.log.Error("leader lease", "err", err)
		}
		go s.runLeases(ctx)
	}
	watched := make(chan struct{})
	go s.meta.watch(ctx, s.log, watched)
	<-watched
	go s.RunRefresher(ctx)
	// Waited for before the audit log closes: when ctx ends it records the summaries
	// of the refusal windows still open (before, nothing waited, and a shutdown lost
	// them in 3 of 4 tries: found from outside, 1 Dec).
	checkpointed := make(chan struct{})
	go func() {
		defer close(checkpointed)
		s.runCheckpointer(ctx)
	}()
	if s.devices != nil {
		go s.devices.runPlanner(ctx)
		if s.devices.cfg.Retention > 0 {
			go s.devices.runRetention(ctx)
		}
	}
	defer func() {
		<-checkpointed
		s.auditMu.Lock()
		if s.auditDB != nil {
			s.auditDB.Close()
			s.audit, s.auditDB = nil, nil
		}
		s.auditMu.Unlock()
	}()
	return s.ServeListenerWith(ctx, ln, h)
}

// ServeListener serves the same handler on another listener (for example a TLS
// listener for devices, made with tls.NewListener) until ctx ends; it runs no
// background jobs, so call Serve once as well.
func (s *Server) ServeListener(ctx context.Context, ln net.Listener) error {
	return s.ServeListenerWith(ctx, ln, s.Handler())
}

// ServeListenerWith is ServeListener with h (the server's Handler, or a Restrict of it).
func (s *Server) ServeListenerWith(ctx context.Context, ln net.Listener, h http.Handler) error {
	hs := &http.Server{Handler: clientip.New(s.cfg.TrustedProxies).Handler(s.bodyDeadline(h)), ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout: idleTimeout, ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelWarn)}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-ctx.Done():
		case <-done:
			return
		}
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		hs.Shutdown(shutdown)
	}()
	err := hs.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// bodyDeadline gives every request body BodyTimeout to arrive (a publication's upload,
// once its request is authenticated and checked, gets it per read: progressBody): a body that has not arrived by then fails its read, and the connection
// closes. A request without a body gets no deadline, and net/http lifts this one when
// the body has been read to its end, before it reads the connection in the background
// to see the client go (where a deadline passing would cancel the request's context and
// cut a long export or a slow download off; TestBodyDeadlineLiftedOnceRead).
func (s *Server) bodyDeadline(h http.Handler) http.Handler {
	d := s.bodyTimeout()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A publication's upload too: until its handler has authenticated and checked
		// it and moves to a deadline per read (operatorAPI.publish), a refused request
		// whose body never comes must not hold its connection (net/http tries to
		// drain an unread body before answering, without a deadline of its own).
		if r.Body != nil && r.Body != http.NoBody {
			// Not every ResponseWriter can (a test's recorder); then there is no socket
			// to guard.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(d))
		}
		h.ServeHTTP(w, r)
	})
}

// bodyTimeout is ServerConfig.BodyTimeout with its default.
func (s *Server) bodyTimeout() time.Duration {
	if s.cfg.BodyTimeout <= 0 {
		return 30 * time.Second
	}
	return s.cfg.BodyTimeout
}

// progressBody is a request body whose read deadline is d from each read: a body
// that keeps arriving, however slowly, is read to its end; one that stops for d fails.
type progressBody struct {
	r  io.ReadCloser
	rc *http.ResponseController
	d  time.Duration
}

func (b *progressBody) Read(p []byte) (int, error) {
	_ = b.rc.SetReadDeadline(time.Now().Add(b.d)) // a test's recorder has no socket
	return b.r.Read(p)
}

func (b *progressBody) Close() error { return b.r.Close() }

// RunRefresher re-signs timestamp and snapshot before they expire, until ctx ends.
func (s *Server) RunRefresher(ctx context.Context) {
	t := time.NewTicker(s.cfg.RefreshInterval)
	defer t.Stop()
	for {
		s.RefreshOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// splitNeedsSignatures separates, in RenewDue's error (one per role, joined), the roles
// that need more signatures than the server holds (short) from any other failure
// (rest, nil when there is none).
func splitNeedsSignatures(err error) (short []error, rest error) {
	if err == nil {
		return nil, nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var others []error
	for _, e := range errs {
		if errors.Is(e, repository.ErrNeedsSignatures) {
			short = append(short, e)
		} else {
			others = append(others, e)
		}
	}
	return short, errors.Join(others...)
}

// pruneEvery is how often the leader prunes old versioned metadata
// (repository.PruneMetadata).
const pruneEvery = time.Hour

// RefreshOnce performs one refresh check and updates the metadata gauges. With
// replicas, only the leader re-signs, under the publish lock.
func (s *Server) RefreshOnce(ctx context.Context) {
	if _, leader := s.Leader(ctx); !leader {
		if st, err := s.cfg.Repo.Load(ctx); err == nil {
			s.observe(st)
		}
		return
	}
	renewed, err := s.cfg.Repo.Refresh(ctx) // under the publish lease (NewServer)
	if s.cfg.Renew != nil && err == nil {
		var delegated []string
		delegated, err = s.cfg.Repo.RenewDue(ctx, s.cfg.Renew)
		renewed = append(renewed, delegated...)
		var short []error
		short, err = splitNeedsSignatures(err)
		if len(short) > 0 {
			// A delegated role whose threshold is above the keys this server holds is
			// its key holders' to renew; it is never signed by fewer. Any other failure
			// stays an error (it was folded into this warning, found in review, 2 Dec).
			s.log.Warn("a delegated role past half its lifetime needs more signatures than this server holds: its key holders renew it ('edgeward repo renew --role ROLE' stages it, 'edgeward role sign', 'edgeward role publish')", "err", errors.Join(short...))
		}
	}
	if now := time.Now(); now.Sub(s.pruned) >= pruneEvery {
		// Old versions of the snapshot and the targets roles (never root), hourly.
		s.pruned = now
		if n, size, perr := s.cfg.Repo.PruneMetadata(ctx, now); perr != nil {
			s.log.Warn("prune old metadata versions", "err", perr)
		} else if n > 0 {
			s.log.Info("removed old metadata versions", "files", n, "bytes", size)
		}
	}
	switch {
	case err != nil:
		s.refreshes.WithLabelValues("error").Inc()
		s.log.Error("refresh online metadata", "err", err)
	case len(renewed) > 0:
		s.refreshes.WithLabelValues("renewed").Inc()
		s.log.Info("re-signed online metadata", "roles", renewed)
	default:
		s.refreshes.WithLabelValues("unchanged").Inc()
	}
	if st, err := s.cfg.Repo.Load(ctx); err == nil {
		s.observe(st)
	}
}

func (s *Server) observe(st *repository.State) {
	now := s.cfg.Repo.Now()
	set := func(role string, v int64, exp time.Time) {
		s.versions.WithLabelValues(role).Set(float64(v))
		s.expiresIn.WithLabelValues(role).Set(exp.Sub(now).Seconds())
	}
	set(metadata.ROOT, st.Root.Signed.Version, st.Root.Signed.Expires)
	set(metadata.TIMESTAMP, st.Timestamp.Signed.Version, st.Timestamp.Signed.Expires)
	set(metadata.SNAPSHOT, st.Snapshot.Signed.Version, st.Snapshot.Signed.Expires)
	for role, t := range st.Targets {
		set(role, t.Signed.Version, t.Signed.Expires)
	}
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the connection (read and write deadlines,
// flushes) through the counting wrapper; without it every such call behind count
// failed with ErrNotSupported.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

func (s *Server) count(route string, h http.Handler) http.Handler {
	return s.counted(newCodeCounter(s.requests, route), h)
}

// counted is h counting its answers with c.
func (s *Server) counted(c *codeCounter, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		c.inc(sw.code)
	})
}

// writeError answers an error. It is never cached: a mirror or CDN in front of
// /metadata must not remember that the next root version does not exist yet (a
// device would then miss a root rotation), nor a target's 404 that a publish is about
// to fix.
func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Del("ETag")
	if (code == http.StatusServiceUnavailable || code == http.StatusTooManyRequests) && w.Header().Get("Retry-After") == "" {
		// Every "try again later" says when: clients and proxies (nginx's
		// proxy_next_upstream) act on it.
		w.Header().Set("Retry-After", "5")
	}
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// targetRequest returns the path a GET or HEAD /targets/PATH names, when the mux would
// route the request to serveTarget with that path unchanged (no escapes, a clean path:
// the mux redirects the others); anything else goes through the mux.
func targetRequest(r *http.Request) (string, bool) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return "", false
	}
	p, ok := strings.CutPrefix(r.URL.Path, "/targets/")
	if !ok || r.URL.RawPath != "" || p == "" || path.Clean(r.URL.Path) != r.URL.Path {
		return "", false
	}
	return p, true
}

// serveTargetCounted serves a target request that skipped the mux, counted as the mux
// route's are.
func (s *Server) serveTargetCounted(w http.ResponseWriter, r *http.Request, p string) {
	sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
	s.serveTargetPath(sw, r, p)
	s.targetCount.inc(sw.code)
}

// serveTarget is the mux's handler for GET /targets/{path...}.
func (s *Server) serveTarget(w http.ResponseWriter, r *http.Request) {
	s.serveTargetPath(w, r, r.PathValue("path"))
}

// Header values of every target answer (never modified in place).
var (
	octetStream = []string{"application/octet-stream"}
	immutable   = []string{"public, max-age=31536000, immutable"}
)

// serveTargetPath serves target content by its consistent-snapshot path
// <dir>/<sha256>.<name>, with Range and conditional requests.
func (s *Server) serveTargetPath(w http.ResponseWriter, r *http.Request, p string) {
	if p == "" || strings.Contains(p, "..") || path.Clean(p) != p {
		writeError(w, http.StatusNotFound, "no such target")
		return
	}
	base := path.Base(p)
	sum, _, ok := strings.Cut(base, ".")
	if !ok || !isSHA256Hex(sum) {
		writeError(w, http.StatusNotFound, "no such target (want <dir>/<sha256>.<name>)")
		return
	}
	f, err := os.Open(s.cfg.Repo.BlobPath(sum))
	if err != nil {
		writeError(w, http.StatusNotFound, "no such target")
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		writeError(w, http.StatusInternalServerError, "cannot read target")
		return
	}
	h := w.Header()
	h["Content-Type"] = octetStream
	h["Etag"] = []string{`"` + sum + `"`}
	h["Cache-Control"] = immutable
	s.stallGuard(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", fi.ModTime(), f)
	})).ServeHTTP(w, r)
}

// stallTimeout is Config.StallTimeout, or its default.
func (s *Server) stallTimeout() time.Duration {
	if s.cfg.StallTimeout > 0 {
		return s.cfg.StallTimeout
	}
	return idleTimeout
}

// stallGuard returns h with the writes of its responses under the stall timeout
// (stallWriter, Config.StallTimeout): a client that takes nothing for that long is cut
// off, and h's next write fails, which ends whatever h streams from. Every long
// response goes through it: target downloads, the audit export (which streams one open
// query: a client that stopped reading held a sqlite read transaction, and so kept the
// WAL from being checkpointed, for as long as it wished), the dashboard, /metrics.
// Once h returns, no deadline of the response's stays on the connection, which may
// serve more requests.
func (s *Server) stallGuard(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rc := http.NewResponseController(w)
		defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
		h.ServeHTTP(&stallWriter{ResponseWriter: w, rc: rc, d: s.stallTimeout()}, r)
	})
}

// stallWriter gives the writes of a response a deadline that moves with them: d from
// the latest, re-armed at most every d/8 (a system call per 32 KiB write would cost a
// GiB download thousands of them). net/http's own WriteTimeout would bound the whole
// response, which a large target on a slow link cannot meet.
type stallWriter struct {
	http.ResponseWriter
	rc      *http.ResponseController
	d       time.Duration
	armedAt time.Time
}

func (w *stallWriter) Write(p []byte) (int, error) {
	if now := time.Now(); now.Sub(w.armedAt) >= w.d/8 {
		// Not every ResponseWriter can (a test's recorder); then there is no socket.
		_ = w.rc.SetWriteDeadline(now.Add(w.d))
		w.armedAt = now
	}
	return w.ResponseWriter.Write(p)
}

func (w *stallWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// isSHA256Hex reports whether s is 64 lower-case hexadecimal digits.
func isSHA256Hex(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

func (s *Server) serveHealth(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Repo.Load(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, "repository: "+err.Error())
		return
	}
	s.observe(st)
	now := s.cfg.Repo.Now()
	if st.Timestamp.Signed.IsExpired(now) || st.Snapshot.Signed.IsExpired(now) {
		writeError(w, http.StatusServiceUnavailable, "online metadata expired")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"status": "ok", "root": st.Root.Signed.Version, "timestamp": st.Timestamp.Signed.Version,
		"timestamp_expires": st.Timestamp.Signed.Expires,
	})
}

// readyTimeout bounds /readyz's store transaction.
const readyTimeout = 3 * time.Second

// serveReady is /healthz and, when the server has a fleet store, a write transaction
// through it within readyTimeout: 503 when the database cannot take writes now (cut off,
// stopped, full, or behind a writer that does not let go; fleet.Store.Ready writes only
// after a write failed for its storage, and says so until a write commits again). /healthz said 200 throughout
// a database outage, and a load balancer kept sending devices to a replica whose every
// check-in waited (found from outside, 2 Dec).
func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	s.auditMu.Lock()
	st := s.fleet
	s.auditMu.Unlock()
	if st != nil {
		ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
		defer cancel()
		if err := st.Ready(ctx); err != nil {
			msg := "the fleet database cannot take writes now"
			if fleet.NoSpace(err) {
				msg += ": its disk is full"
			}
			writeError(w, http.StatusServiceUnavailable, msg)
			return
		}
	}
	s.serveHealth(w, r)
}
