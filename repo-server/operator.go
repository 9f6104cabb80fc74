package reposerver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// OperatorConfig enables the operator API on a Server.
type OperatorConfig struct {
	// Fleet authenticates operators (API tokens) and holds the fleet. Required.
	Fleet *fleet.Store
	// KEK, if set, lets POST /v1/publish?encrypt=1 publish a target encrypted, its
	// content key sealed under this key-encryption key (issue 18). nil: such a publish
	// is refused (400, saying why).
	KEK []byte
	// Signing holds the delegated-role keys the server may sign published targets
	// with. nil: the server publishes nothing itself (operators publish with the CLI
	// on the repository directory), and POST /v1/publish answers 503.
	Signing *repository.KeyRing
	// MaxPublishBytes bounds an uploaded target; 0: 16 GiB.
	MaxPublishBytes int64
	// PolicyDir is the fleet policy directory: POST /v1/rollouts writes a rollout file
	// there (policy.CreateRollout) for the policy watcher on it to load. "": the server
	// creates no rollouts (503).
	PolicyDir string
	// Policy returns the policy in force (policy.Watcher.Policy). nil, or a nil result:
	// no rollouts are known.
	Policy func() *policy.Policy
	// PolicyStatus returns the state of the last policy load (policy.Watcher.Status),
	// shown by GET /v1/policy. nil: not shown.
	PolicyStatus func() policy.ReloadStatus
	// VerdictWindow is how far back GET /v1/devices/{id} reads attestation verdicts, and
	// GET /v1/kpis computes the attestation pass rate, by default; 0: one hour. The
	// store keeps a verdict per check-in and reads them by time for the whole fleet, so
	// the window bounds the work (an hour of 30 s check-ins fills a device's history).
	VerdictWindow time.Duration
	// LoadWait bounds how long POST /v1/rollouts waits for the policy watcher to load the
	// new rollout before it answers; 0: 3 seconds.
	LoadWait time.Duration
	// NoFleetMetrics leaves the fleet collector (fleet.NewCollector) off the server's
	// registry.
	NoFleetMetrics bool
	// BearerFailures limits the bearer tokens refused per client address (the peer, or
	// the client a trusted proxy names): Burst at once, then one per Every. Past it,
	// every bearer-token request from that address is answered 429 with Retry-After
	// before its token is looked at. The counts are in the fleet database, shared by
	// the replicas (fleet.Store.TakeAttempt). Zero: 20, then one every 3 seconds.
	BearerFailures fleet.Limit
}

// operatorAPI serves /v1/ for operators: JSON, bearer tokens, roles checked by
// fleet.Authorize, every write attributed in the audit log as "operator:<name>".
//
// Operator tokens are accepted here only: the device API (/v1/devices/nonce,
// /v1/devices/checkin, /v1/attest/) never reads the Authorization header, a device is
// who its TPM quote says it is. A device has no operator credential at all (it holds
// no token and the server accepts no client certificate on the operator API).
type operatorAPI struct {
	s   *Server
	cfg OperatorConfig
	// createMu serialises policy.CreateRollout on the policy directory.
	createMu sync.Mutex
	// checking counts, per client address, the bearer tokens being checked now. The
	// rate limit reads the bucket before the check and takes from it after a refusal,
	// so concurrent guesses would all pass the read: a check is admitted only while
	// fewer are under way than the bucket holds attempts (the others get 429 at once),
	// so they cannot overdraw it. Guarded by checkingMu.
	checkingMu sync.Mutex
	checking   map[string]int
}

// EnableOperatorAPI mounts the operator API.
func (s *Server) EnableOperatorAPI(cfg OperatorConfig) error {
	if cfg.Fleet == nil {
		return errors.New("operator API: no fleet store")
	}
	if cfg.MaxPublishBytes <= 0 {
		cfg.MaxPublishBytes = 16 << 30
	}
	if cfg.VerdictWindow <= 0 {
		cfg.VerdictWindow = time.Hour
	}
	if cfg.BearerFailures.Burst <= 0 {
		cfg.BearerFailures.Burst = 20
	}
	if cfg.BearerFailures.Every <= 0 {
		cfg.BearerFailures.Every = 3 * time.Second
	}
	if cfg.LoadWait <= 0 {
		cfg.LoadWait = 3 * time.Second
	}
	audited, err := s.attachFleet(context.Background(), cfg.Fleet)
	if err != nil {
		return fmt.Errorf("operator API: %w", err)
	}
	cfg.Fleet = audited // every change appends its audit records in its transaction
	o := &operatorAPI{s: s, cfg: cfg}
	// A browser sends an operator's client certificate to any page's request, as it
	// would a cookie: a page of another site could make it publish, roll out, abort or
	// decommission (a fetch with no Content-Type needs no preflight; found from
	// outside, 2 Dec). A change asked for by a page of another origin is refused
	// (Sec-Fetch-Site, else Origin against Host); the CLI and scripts send neither.
	xorigin := http.NewCrossOriginProtection()
	xorigin.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "cross-origin request refused: the operator API takes no changes from a web page of another origin")
	}))
	for _, e := range o.endpoints() {
		s.mux.Handle(e.pattern, s.count("operator", xorigin.Handler(o.auth(e.action, e.h))))
	}
	if !cfg.NoFleetMetrics {
		if err := s.reg.Register(fleetMetrics(fleet.NewCollector(cfg.Fleet, 0, s.log))); err != nil {
			return fmt.Errorf("operator API: fleet metrics: %w", err)
		}
	}
	return nil
}

// endpoint is one route of the operator API and the action it needs.
type endpoint struct {
	pattern string
	action  fleet.Action
	h       http.HandlerFunc
}

// endpoints lists every route of the operator API (the authorization tests walk it).
func (o *operatorAPI) endpoints() []endpoint {
	return []endpoint{
		{"POST /v1/publish", fleet.ActionPublish, o.publish},
		{"GET /v1/repository", fleet.ActionFleetRead, o.status},
		{"GET /v1/staged/{role}", fleet.ActionFleetRead, o.stagedGet},
		{"POST /v1/staged/{role}/signatures", fleet.ActionKeys, o.stagedSign},
		{"POST /v1/staged/{role}/publish", fleet.ActionPublish, o.stagedPublish},
		{"GET /v1/audit/export", fleet.ActionAuditExport, o.s.stallGuard(http.HandlerFunc(o.auditExport)).ServeHTTP},
		{"GET /v1/audit/prove", fleet.ActionAuditExport, o.auditProve},
		{"GET /v1/policy", fleet.ActionFleetRead, o.policyStatus},
		{"GET /v1/kpis", fleet.ActionFleetRead, o.kpis},
		{"GET /v1/rollouts", fleet.ActionFleetRead, o.rolloutList},
		{"POST /v1/rollouts", fleet.ActionRolloutWrite, o.rolloutCreate},
		{"GET /v1/rollouts/{id}", fleet.ActionFleetRead, o.rolloutStatus},
		{"POST /v1/rollouts/{id}/pause", fleet.ActionRolloutWrite, o.rolloutAction(pauseRollout)},
		{"POST /v1/rollouts/{id}/resume", fleet.ActionRolloutWrite, o.rolloutAction(resumeRollout)},
		{"POST /v1/rollouts/{id}/abort", fleet.ActionRolloutWrite, o.rolloutAction(abortRollout)},
		{"POST /v1/rollouts/{id}/approve", fleet.ActionRolloutWrite, o.rolloutAction(approveRollout)},
		{"GET /v1/devices", fleet.ActionFleetRead, o.deviceList},
		{"GET /v1/devices/{id}", fleet.ActionFleetRead, o.deviceShow},
		{"POST /v1/devices/{id}/quarantine", fleet.ActionQuarantine, o.deviceQuarantine},
		{"POST /v1/devices/{id}/release", fleet.ActionQuarantine, o.deviceRelease},
		{"POST /v1/devices/{id}/decommission", fleet.ActionDecommission, o.deviceDecommission},
		{"PUT /v1/devices/{id}/labels", fleet.ActionDeviceLabel, o.deviceLabels},
		{"POST /v1/devices/{id}/clear-failed", fleet.ActionDeviceLabel, o.deviceClearFailed},
		{"GET /v1/tokens", fleet.ActionTokens, o.tokenList},
		{"POST /v1/tokens", fleet.ActionTokens, o.tokenCreate},
		{"DELETE /v1/tokens/{id}", fleet.ActionTokens, o.tokenRevoke},
	}
}

type principalKey struct{}

// auth authenticates the operator (a bearer token, else an operator client certificate)
// and authorizes action before calling h.
func (o *operatorAPI) auth(action fleet.Action, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var p fleet.Principal
		var err error
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			done, ok := o.bearerAllowed(w, r)
			if !ok {
				return
			}
			p, err = o.cfg.Fleet.Authenticate(r.Context(), strings.TrimSpace(tok), o.s.cfg.Repo.Now())
			if errors.Is(err, fleet.ErrUnauthenticated) {
				o.bearerRefused(r)
			}
			done()
		} else if id, ok := operatorCert(r); ok {
			p, err = o.cfg.Fleet.AuthenticateID(r.Context(), id, o.s.cfg.Repo.Now())
		} else {
			writeError(w, http.StatusUnauthorized, "missing bearer token or operator client certificate")
			return
		}
		if err != nil {
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		if err := fleet.Authorize(p, action); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

// bearerAllowed answers 429 (with Retry-After) and returns false when the request's
// client address has no refused bearer token left (OperatorConfig.BearerFailures), or
// as many checks under way as it has attempts left (operatorAPI.checking); it only
// reads, so a flood of guesses costs the database no writes. An error of the database
// fails closed (503). done ends an admitted check.
func (o *operatorAPI) bearerAllowed(w http.ResponseWriter, r *http.Request) (done func(), ok bool) {
	src := requestSource(r)
	left, wait, err := o.cfg.Fleet.CountAttemptsLeft(r.Context(), "bearer:"+src, o.cfg.BearerFailures, o.s.cfg.Repo.Now())
	if err != nil {
		if fleet.Unavailable(err) {
			// Says what is wrong (the database away, its disk full), as every other
			// answer of the API does: "cannot check the rate limit" was all an operator
			// was told during an outage, since this check comes first.
			o.fail(w, r, "check the bearer token", err)
			return nil, false
		}
		o.s.log.Error("bearer token rate limit", "err", err)
		writeError(w, http.StatusServiceUnavailable, "cannot check the bearer token's rate limit: try again later")
		return nil, false
	}
	o.checkingMu.Lock()
	defer o.checkingMu.Unlock()
	if left <= o.checking[src] {
		msg := "too many refused bearer tokens from your address: wait and try again"
		if left > 0 { // attempts left, all taken by the checks under way
			wait, msg = 0, "too many bearer tokens from your address checked at once: try again"
		}
		o.s.log.Warn("operator API: bearer tokens rate limited", "source", src, "attempts_left", left)
		w.Header().Set("Retry-After", strconv.Itoa(int(wait.Seconds())+1))
		writeError(w, http.StatusTooManyRequests, msg)
		return nil, false
	}
	if o.checking == nil {
		o.checking = map[string]int{}
	}
	o.checking[src]++
	return func() {
		o.checkingMu.Lock()
		defer o.checkingMu.Unlock()
		if o.checking[src]--; o.checking[src] <= 0 {
			delete(o.checking, src)
		}
	}, true
}

// bearerRefused counts a refused bearer token against the request's client address.
func (o *operatorAPI) bearerRefused(r *http.Request) {
	if _, _, err := o.cfg.Fleet.TakeAttempt(r.Context(), "bearer:"+requestSource(r), o.cfg.BearerFailures, o.s.cfg.Repo.Now()); err != nil {
		o.s.log.Error("bearer token rate limit", "err", err)
	}
}

// operatorCert returns the token ID of the request's operator client certificate: one
// the TLS listener verified (a chain to the device CA's root, clientAuth) that carries
// an operator URI SAN. A device certificate carries none, so it grants nothing here.
func operatorCert(r *http.Request) (string, bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 || len(r.TLS.PeerCertificates) == 0 {
		return "", false
	}
	return fleet.OperatorCertTokenID(r.TLS.PeerCertificates[0])
}

func principal(r *http.Request) fleet.Principal {
	p, _ := r.Context().Value(principalKey{}).(fleet.Principal)
	return p
}

// publish streams the request body into the repository as a target.
//
//	POST /v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx
//	X-Edgeward-Meta: {"gates":{"min_accuracy":"0.95"}, ...}   (optional artifact.Meta JSON)
//	body: the target's bytes
func (o *operatorAPI) publish(w http.ResponseWriter, r *http.Request) {
	if o.cfg.Signing == nil {
		writeError(w, http.StatusServiceUnavailable, `this server holds no signing keys for delegated roles (it was started without --sign-delegated): publish on the repository directory instead, where the keys are: 'edgeward publish --server "" --repo DIR …' (an empty --server overrides $EDGEWARD_SERVER)`)
		return
	}
	q := r.URL.Query()
	var meta artifact.Meta
	if h := r.Header.Get("X-Edgeward-Meta"); h != "" {
		if len(h) > 64<<10 {
			writeError(w, http.StatusBadRequest, "X-Edgeward-Meta too large")
			return
		}
		if err := json.Unmarshal([]byte(h), &meta); err != nil {
			writeError(w, http.StatusBadRequest, "X-Edgeward-Meta: "+err.Error())
			return
		}
	}
	kind, err := artifact.ParseKind(q.Get("kind"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	meta.Kind, meta.Name, meta.Version = kind, q.Get("name"), q.Get("version")
	ext := q.Get("ext")
	if ext != "" && (!strings.HasPrefix(ext, ".") || strings.ContainsAny(ext, "/\\") || len(ext) > 16) {
		writeError(w, http.StatusBadRequest, "ext: want a file extension such as .onnx")
		return
	}
	if meta.Format == "" {
		meta.Format = strings.TrimPrefix(ext, ".")
	}
	if err := meta.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	deltas := 0 // the repository's default
	if v := q.Get("deltas"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n > 16 {
			writeError(w, http.StatusBadRequest, "deltas: want a number of earlier versions, at most 16 (0: none)")
			return
		}
		deltas = n
		if n <= 0 {
			deltas = -1
		}
	}
	encrypt := q.Get("encrypt") == "1"
	// stage=1: a role whose threshold the keys this server holds do not meet (models 2
	// of 3 holders, say) gets the change staged for its key holders (202), as a publish
	// on the repository directory does, instead of 409.
	stage := q.Get("stage") == "1"
	if encrypt && o.cfg.KEK == nil {
		writeError(w, http.StatusBadRequest, "encrypt=1: this server holds no key-encryption key (start it with --kek FILE)")
		return
	}
	if r.ContentLength > o.cfg.MaxPublishBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("target larger than %d bytes", o.cfg.MaxPublishBytes))
		return
	}
	// What Publish would refuse whatever the bytes is refused before they are read (a
	// client that sent "Expect: 100-continue" then sends none of them).
	switch err := o.s.cfg.Repo.CheckPublish(r.Context(), repository.PublishRequest{Meta: meta, Ext: ext}); {
	case errors.Is(err, repository.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, repository.ErrTooLarge):
		writeError(w, http.StatusRequestEntityTooLarge, err.Error())
		return
	}
	// The upload may take long (GiBs): from here the body's deadline moves with it,
	// BodyTimeout for each read rather than for the whole body, so a stalled upload
	// still ends.
	body := http.MaxBytesReader(w, &progressBody{r: r.Body, rc: http.NewResponseController(w), d: o.s.bodyTimeout()}, o.cfg.MaxPublishBytes)
	p := principal(r)
	repo := o.s.cfg.Repo.WithActor(p.Actor())
	// One publisher at a time across replicas: the server's repository holds the
	// publish lease in the fleet database for the change (NewServer), not for the
	// upload. Each publication has its own copy of the key ring (its only state is the
	// passphrase it caches), so a slow or stalled upload holds up no other one: a
	// mutex around the whole publication, upload included, used to.
	preq := repository.PublishRequest{Meta: meta, Ext: ext, Content: body, Deltas: deltas}
	if encrypt {
		preq.KEK, preq.Deltas = o.cfg.KEK, -1 // an encrypted target's ciphertexts share nothing
	}
	signing := *o.cfg.Signing
	signing.Stage = stage
	res, err := repo.Publish(r.Context(), preq, &signing)
	if err != nil {
		code, msg := publishFailure(err, stage, o.cfg.MaxPublishBytes)
		if code == http.StatusInternalServerError {
			o.s.log.Error("publish through the operator API", "operator", p.Name, "err", err)
		}
		writeError(w, code, msg)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch {
	case res.Staged != nil:
		// Staged for the role's key holders ('edgeward role sign', then 'role
		// publish'): accepted, not yet published.
		w.WriteHeader(http.StatusAccepted)
	case !res.Unchanged:
		w.WriteHeader(http.StatusCreated)
	}
	json.NewEncoder(w).Encode(res)
}

// publishFailure is the status and message of a failed publish through the operator API
// (stage: the request asked for staging). Nothing was published in any of these cases.
func publishFailure(err error, stage bool, maxBytes int64) (int, string) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, fmt.Sprintf("target larger than %d bytes", maxBytes)
	case errors.Is(err, repository.ErrConflict), errors.Is(err, repository.ErrStagedPending):
		// Other bytes under a published name; or a change of the role already staged
		// for its key holders, to publish or discard first.
		return http.StatusConflict, err.Error()
	case errors.Is(err, repository.ErrOutsideDelegation), errors.Is(err, repository.ErrInvalid):
		return http.StatusBadRequest, err.Error()
	case errors.Is(err, repository.ErrNeedsSignatures) && !stage:
		// A threshold above the delegated keys this server holds: nothing was signed.
		return http.StatusConflict, err.Error() + "; through this server: publish with stage=1 ('edgeward publish --server' does) to stage it for the role's key holders"
	case errors.Is(err, repository.ErrRoleNotHeld), errors.Is(err, repository.ErrNeedsSignatures):
		// The role needs signatures this server does not hold (its root or targets
		// keys; a change that would touch a role never staged): nothing was signed.
		return http.StatusConflict, err.Error()
	case errors.Is(err, repository.ErrTooLarge):
		return http.StatusRequestEntityTooLarge, err.Error()
	case errors.Is(err, fleet.ErrLeaseLost):
		// This replica stalled, or lost the database, past its publish lease, and
		// another may have written since: the change was dropped, and a retry takes
		// the lease afresh (503: a proxy or the client tries again).
		return http.StatusServiceUnavailable, "publish not made: this server lost the publish lease to another writer while it published (" + err.Error() + "): publish again"
	case durable.NoSpace(err):
		return http.StatusInsufficientStorage, "publish failed: no space left on disk (" + err.Error() + "): nothing was published"
	case fleet.Unavailable(err):
		return http.StatusServiceUnavailable, "publish not made: the fleet database is not answering (" + err.Error() + "): try again later"
	}
	return http.StatusInternalServerError, "publish failed: " + err.Error()
}

// stagedRole is the {role} of a /v1/staged request when it names a role that may be
// staged; otherwise it answers 400 and returns "".
func stagedRole(w http.ResponseWriter, r *http.Request) string {
	role := r.PathValue("role")
	if role != metadata.TARGETS && role != repository.RoleModels && role != repository.RoleRuntimes {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("role %q: want targets, models or runtimes", role))
		return ""
	}
	return role
}

// stagedFailure answers an error of a staged change's read, signature or publication.
func (o *operatorAPI) stagedFailure(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, repository.ErrNoStaged):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, repository.ErrThreshold), errors.Is(err, repository.ErrStaleStaged):
		writeError(w, http.StatusConflict, err.Error())
	default:
		code, msg := publishFailure(err, true, repository.ClientMaxRoleBytes)
		if code == http.StatusInternalServerError {
			o.s.log.Error("staged change through the operator API", "operator", principal(r).Name, "err", err)
		}
		writeError(w, code, msg)
	}
}

// stagedGet answers the staged version of a role, as its key holders sign it: they
// review it ('edgeward role show --proposal'), sign the copy ('edgeward role sign
// --proposal') and send it back (stagedSign); 'edgeward role sign --server' does all.
func (o *operatorAPI) stagedGet(w http.ResponseWriter, r *http.Request) {
	role := stagedRole(w, r)
	if role == "" {
		return
	}
	f, _, err := o.s.cfg.Repo.Staged(r.Context(), role)
	if err != nil {
		o.stagedFailure(w, r, err)
		return
	}
	data, err := f.Staged.ToBytes(true)
	if err != nil {
		o.stagedFailure(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(data)
}

// stagedSign adds the valid signatures of a signed copy of a role's staged version
// (Repo.AddStagedSignatures) and says how far it is from its threshold. The signatures
// are checked against the role's keys, whoever sends them.
func (o *operatorAPI) stagedSign(w http.ResponseWriter, r *http.Request) {
	role := stagedRole(w, r)
	if role == "" {
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, repository.ClientMaxRoleBytes))
	if err != nil {
		o.stagedFailure(w, r, err)
		return
	}
	f, added, err := o.s.cfg.Repo.WithActor(principal(r).Actor()).AddStagedSignatures(r.Context(), role, body)
	if err != nil {
		o.stagedFailure(w, r, err)
		return
	}
	have, threshold := f.Progress(nil)
	writeJSON(w, http.StatusOK, map[string]any{"role": role, "version": f.Staged.Signed.Version, "added": added, "signatures": have, "threshold": threshold})
}

// stagedPublish publishes a role's staged change once its threshold is met.
func (o *operatorAPI) stagedPublish(w http.ResponseWriter, r *http.Request) {
	role := stagedRole(w, r)
	if role == "" {
		return
	}
	res, err := o.s.cfg.Repo.WithActor(principal(r).Actor()).PublishStaged(r.Context(), role, nil)
	if err != nil {
		o.stagedFailure(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (o *operatorAPI) status(w http.ResponseWriter, r *http.Request) {
	st, err := o.s.cfg.Repo.Load(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	// The changes staged for key holders (a publish with stage=1 among them), with how
	// far each is from its threshold: what a release manager waits for.
	type stagedView struct {
		Role       string `json:"role"`
		Version    int64  `json:"version,omitempty"`
		Path       string `json:"path,omitempty"`
		Signatures int    `json:"signatures"` // valid signatures by the role's keys
		Threshold  int    `json:"threshold"`
		Error      string `json:"error,omitempty"`
	}
	staged := []stagedView{}
	for _, role := range []string{metadata.TARGETS, repository.RoleModels, repository.RoleRuntimes} {
		f, _, err := o.s.cfg.Repo.Staged(r.Context(), role)
		if errors.Is(err, repository.ErrNoStaged) {
			continue
		}
		if err != nil {
			staged = append(staged, stagedView{Role: role, Error: err.Error()})
			continue
		}
		have, threshold := f.Progress(nil)
		staged = append(staged, stagedView{Role: role, Version: f.Staged.Signed.Version, Path: f.Path, Signatures: have, Threshold: threshold})
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"root": st.Root.Signed.Version, "timestamp": st.Timestamp.Signed.Version, "snapshot": st.Snapshot.Signed.Version,
		"targets": st.List(), "staged": staged,
	})
}

// auditExport streams the audit log from one open query (audit.Log.Export): it is
// mounted under stallGuard, so that a client that stops reading cannot hold the
// query's read transaction open.
func (o *operatorAPI) auditExport(w http.ResponseWriter, r *http.Request) {
	l, db, err := OpenAuditAt(r.Context(), o.s.cfg.Repo, o.s.cfg.DB)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer db.Close()
	export := l.Export
	if r.URL.Query().Get("cosigned") == "1" {
		// Up to the newest cosigned checkpoint, for an auditor requiring a witness quorum:
		// the checkpoint Export signs has had no time to be cosigned.
		c, err := l.CosignedCheckpoint(r.Context())
		if errors.Is(err, audit.ErrNoCheckpoint) {
			writeError(w, http.StatusNotFound, err.Error()+": no witness has cosigned a checkpoint yet")
			return
		}
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err.Error())
			return
		}
		export = func(ctx context.Context, w io.Writer) error { return l.ExportAt(ctx, w, c) }
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := export(r.Context(), w); err != nil {
		o.s.log.Error("audit export", "err", err)
	}
}
