package reposerver

import (
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/jsonstrict"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/logging"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	jsonv2 "github.com/go-json-experiment/json"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeward/edgeward/repository"
)

// DeviceConfig enables the device API on a Server.
type DeviceConfig struct {
	// Fleet stores devices, verdicts, reports and rollouts. Required.
	Fleet *fleet.Store
	// AttestRoots are the attestation CA roots AK certificates must chain to. Required
	// unless AttestCA is set.
	AttestRoots *x509.CertPool
	// AttestCA, if set, is mounted at wire.PathAttest (enrollment: EK → AK
	// certificate), and its roots are used when AttestRoots is nil.
	AttestCA *attestca.CA
	// Policy returns the policy in force (e.g. policy.Watcher.Policy). nil, or a nil
	// result: no rollouts, devices are only attested.
	Policy func() *policy.Policy
	// MeasurementPCR is the PCR of the measurement log; 0: 16 (development).
	MeasurementPCR int
	// CheckInInterval is the interval suggested to devices; 0: 30 seconds.
	CheckInInterval time.Duration
	// CheckInBurst and CheckInEvery bound each device's check-ins (fleet.CheckInLimit):
	// CheckInBurst at once (0: 20; negative: no bound), then one per CheckInEvery (0:
	// CheckInInterval / 5, at most 2 seconds). Beyond it a check-in is refused with 429
	// and Retry-After, and changes nothing.
	CheckInBurst int
	CheckInEvery time.Duration
	// PlanInterval is how often rollouts are re-planned (soak times, approvals);
	// 0: 5 seconds. Reports also trigger a plan at once.
	PlanInterval time.Duration
	// Retention, when positive, is how long the fleet's history is kept: the leader
	// deletes verdicts, decisions and install reports older than that
	// (fleet.Store.Prune) at start and every RetentionInterval (0: one hour). 0 keeps
	// them forever. The audit log is never pruned.
	Retention, RetentionInterval time.Duration
	// DontQuarantine disables quarantining a device whose evidence does not verify
	// (by default it stays quarantined until an operator releases it).
	DontQuarantine bool
	// ClientRoots, when set, makes the device API require mTLS: nonce and check-in
	// requests must come over TLS with a client certificate chaining to these roots
	// (step-ca's device certificates, for TPM-resident keys), whose permanent
	// identifier is the device ID the request names. The TLS listener verifies the
	// chain (tls.VerifyClientCertIfGiven with ClientCAs = ClientRoots); the handler
	// checks that one was given and binds it to the device.
	ClientRoots *x509.CertPool
	// DeviceCA describes where devices get their certificates (served at
	// GET /v1/devices/ca); nil when the deployment has no device CA.
	DeviceCA *wire.DeviceCA
	// AKCacheSize bounds the AK certificates kept verified between check-ins
	// (verify.AKCache: the same certificate bytes, the same roots, within the chain's
	// validity); 0: verify.DefaultAKCacheSize; negative: none, every check-in verifies
	// its AK certificate's chain.
	AKCacheSize int
	// KEK is the key-encryption key the content keys of encrypted targets are sealed
	// under (issue 18; Config.KEK). nil: no content key is ever released, and devices
	// cannot install encrypted targets.
	KEK []byte
}

// deviceAPI serves the device side of the server: nonces and check-ins. Every check-in
// is authenticated by the device's TPM (see package deviceapi): the AK certificate
// names the device, the quote covers the nonce and the whole request.
type deviceAPI struct {
	s      *Server
	cfg    DeviceConfig
	fleet  *fleet.Store // cfg.Fleet, auditing into the server's audit log
	nonces dbNonces
	akc    *verify.AKCache // nil: none (cfg.AKCacheSize < 0)

	// outage logs check-ins refused because the fleet database is unavailable once a
	// minute with a count, and once when they stop (a line per refusal flooded the log
	// at fleet scale).
	outage logging.Throttle

	catMu  sync.Mutex
	catKey *metaFile // the timestamp the catalog was loaded at
	cat    map[policy.Target]repository.TargetInfo
	// root is the version of the root the catalog was loaded under: check-ins announce
	// it (wire.CheckInResponse.RootVersion).
	root int64
	// retired are the contents of retired targets, oldest first: a device still
	// running one is measured against it, though it is never offered again. A listed
	// encrypted target may have some too: its ciphertexts before a content-key
	// rotation (repository.Reencrypt).
	retired map[policy.Target][]retiredContent

	checkins *prometheus.CounterVec
	verdicts *prometheus.CounterVec
	refusals *prometheus.CounterVec
	pruned   *prometheus.CounterVec // rows deleted by retention, by table
}

// isDeviceID is the fleet store's check of a device ID (fleet.IsDeviceID): the device
// API accepts exactly the IDs the store can keep. (It used to accept up to 256
// characters and '@', which the store refused: such a device got a 503 for its nonce
// and a 400 for its check-in, for good.)
func isDeviceID(id string) bool { return fleet.IsDeviceID(id) }

// EnableDeviceAPI mounts the device API and starts nothing; Serve runs its planner.
func (s *Server) EnableDeviceAPI(cfg DeviceConfig) error {
	if cfg.AttestRoots == nil && cfg.AttestCA != nil {
		cfg.AttestRoots = cfg.AttestCA.Roots()
	}
	if cfg.Fleet == nil || cfg.AttestRoots == nil {
		return errors.New("device API: a fleet store and attestation roots are needed")
	}
	if cfg.MeasurementPCR == 0 {
		cfg.MeasurementPCR = eventlog.PCRDevelopment
	}
	if cfg.CheckInInterval <= 0 {
		cfg.CheckInInterval = 30 * time.Second
	}
	if cfg.CheckInBurst == 0 {
		cfg.CheckInBurst = 20
	}
	if cfg.CheckInEvery <= 0 {
		cfg.CheckInEvery = min(2*time.Second, cfg.CheckInInterval/5)
	}
	if cfg.PlanInterval <= 0 {
		cfg.PlanInterval = 5 * time.Second
	}
	audited, err := s.attachFleet(context.Background(), cfg.Fleet)
	if err != nil {
		return fmt.Errorf("device API: %w", err)
	}
	d := &deviceAPI{s: s, cfg: cfg, fleet: audited}
	d.outage.Logger = s.log
	if cfg.AKCacheSize >= 0 {
		d.akc = verify.NewAKCache(cfg.AKCacheSize)
	}
	d.nonces = dbNonces{st: audited, ttl: 2 * time.Minute, now: s.cfg.Repo.Now}
	d.checkins = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_device_checkins_total", Help: "Device check-ins by result (ok, rejected, bad_request, error).",
	}, []string{"result"})
	d.verdicts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_attestation_verdicts_total", Help: "Attestation verdicts by outcome (trusted, untrusted, rejected).",
	}, []string{"verdict"})
	d.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_device_refusals_total", Help: "Refused device check-ins by HTTP status (every one, though the audit log aggregates them per source and interval).",
	}, []string{"code"})
	d.pruned = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "edgeward_fleet_pruned_rows_total", Help: "Rows of the fleet's history deleted by the retention policy (--retain), by table.",
	}, []string{"table"})
	s.reg.MustRegister(d.checkins, d.verdicts, d.refusals, d.pruned)
	s.mux.Handle("GET "+wire.PathDeviceCA, s.count("device", http.HandlerFunc(d.deviceCA)))
	s.mux.Handle("POST "+wire.PathNonce, s.count("device", http.HandlerFunc(d.nonce)))
	s.mux.Handle("POST "+wire.PathCheckIn, s.count("device", http.HandlerFunc(d.checkIn)))
	if cfg.AttestCA != nil {
		s.mux.Handle(wire.PathAttest+"/", s.count("attest", withSource(http.StripPrefix(wire.PathAttest, cfg.AttestCA.Handler()))))
	}
	s.devices = d
	return nil
}

func (d *deviceAPI) policy() *policy.Policy {
	if d.cfg.Policy != nil {
		if p := d.cfg.Policy(); p != nil {
			return p
		}
	}
	return &policy.Policy{}
}

// jsonContentType reports whether ct, a request's Content-Type, admits a JSON body:
// none given, or application/json (the media type in any case) with optional
// parameters, of which a charset must be UTF-8, the only encoding decoded. Not a mere
// prefix: "application/jsonp" or "application/json-seq" is another type.
func jsonContentType(ct string) bool {
	if ct == "" {
		return true
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}

// decodeJSON decodes the request's body, one JSON value of at most max bytes with no
// unknown field and no key named twice (jsonstrict.DecodeUnique), into v. On failure it has written the error response:
// 415 for another Content-Type (jsonContentType), 413 for a larger body, 400 else.
func decodeJSON(w http.ResponseWriter, r *http.Request, max int64, v any) bool {
	if !jsonContentType(r.Header.Get("Content-Type")) {
		writeError(w, http.StatusUnsupportedMediaType, "want application/json")
		return false
	}
	if err := jsonstrict.DecodeUnique(http.MaxBytesReader(w, r.Body, max), v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request larger than %d bytes", max))
		} else {
			writeError(w, http.StatusBadRequest, "malformed request: "+err.Error())
		}
		return false
	}
	return true
}

func (d *deviceAPI) deviceCA(w http.ResponseWriter, r *http.Request) {
	if d.cfg.DeviceCA == nil {
		writeError(w, http.StatusNotFound, "this server has no device CA")
		return
	}
	writeJSON(w, http.StatusOK, d.cfg.DeviceCA)
}

// peerIdentity checks the request's device certificate when mTLS is required and
// returns "" if device may act, or why not.
func (d *deviceAPI) peerIdentity(r *http.Request, device string) string {
	if d.cfg.ClientRoots == nil {
		return ""
	}
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return "a device certificate (mTLS) is required"
	}
	leaf := r.TLS.PeerCertificates[0]
	inter := x509.NewCertPool()
	for _, c := range r.TLS.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	cc := *leaf
	cc.UnhandledCriticalExtensions = nil // the permanent-identifier SAN; checked below
	if _, err := cc.Verify(x509.VerifyOptions{Roots: d.cfg.ClientRoots, Intermediates: inter, CurrentTime: d.s.cfg.Repo.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return "device certificate: " + err.Error()
	}
	for _, id := range attestca.PermanentIdentifiers(leaf) {
		if id == device {
			return ""
		}
	}
	return fmt.Sprintf("identity_mismatch: the device certificate is for %v, not %s", attestca.PermanentIdentifiers(leaf), device)
}

func (d *deviceAPI) nonce(w http.ResponseWriter, r *http.Request) {
	var req wire.NonceRequest
	if !decodeJSON(w, r, 4<<10, &req) {
		return
	}
	if !isDeviceID(req.DeviceID) {
		writeError(w, http.StatusBadRequest, "bad device_id")
		return
	}
	if why := d.peerIdentity(r, req.DeviceID); why != "" {
		writeError(w, http.StatusForbidden, why)
		return
	}
	// The store's writes run to their end even if the device hangs up (see checkIn).
	n, err := d.nonces.Issue(context.WithoutCancel(r.Context()), req.DeviceID)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, wire.NonceResponse{Nonce: n})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header()["Content-Type"] = jsonType // shared, never modified in place
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

// authCodes are the verifier's reasons that mean the request itself is not
// authenticated: nothing in it can be attributed to the device, so nothing is stored
// but the rejection in the audit log.
var authCodes = map[verify.Code]bool{
	verify.AKCertInvalid: true, verify.IdentityMismatch: true, verify.QuoteMalformed: true,
	verify.SignatureInvalid: true, verify.NonceMismatch: true,
}

// decodeCheckIn reads a check-in request: one JSON value of at most
// wire.MaxRequestBytes with no unknown field, a well-formed device ID, and each
// collection within its bound (checkInBounds: attrs of at most fleet.MaxAttrsBytes, at
// most maxReports reports, …), checked while decoding, so that no body costs more than
// a small multiple of its size. Nothing in it is authenticated yet. On failure it has
// written the error response: 413 for a body or a part of it over its bound, 400 for
// anything else malformed.
//
// It decodes with unmarshalStrict, not jsonstrict.Decode: the check-in is the request
// every device sends every interval, and encoding/json's decoder scanned each body
// twice (once to find the value's end, once to decode it) through reflection.
func decodeCheckIn(w http.ResponseWriter, r *http.Request) (wire.CheckInRequest, bool) {
	var req wire.CheckInRequest
	if !jsonContentType(r.Header.Get("Content-Type")) {
		writeError(w, http.StatusUnsupportedMediaType, "want application/json")
		return req, false
	}
	body, err := readBody(w, r, wire.MaxRequestBytes)
	if err == nil {
		err = unmarshalStrict(body, &req, checkInDecodeOptions)
	}
	if err != nil {
		var mbe *http.MaxBytesError
		var be *boundError
		switch {
		case errors.As(err, &mbe):
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request larger than %d bytes", wire.MaxRequestBytes))
		case errors.As(err, &be):
			writeError(w, http.StatusRequestEntityTooLarge, "request too large: "+be.Error())
		default:
			writeError(w, http.StatusBadRequest, "malformed request: "+err.Error())
		}
		return req, false
	}
	if !isDeviceID(req.DeviceID) { // (the reports were bounded while decoding)
		writeError(w, http.StatusBadRequest, "bad device_id")
		return req, false
	}
	return req, true
}

// readBody reads r's body whole, at most max bytes (an *http.MaxBytesError beyond), into
// a buffer sized from its Content-Length when it gives one (plus the byte the read that
// sees the end needs, so an honest length costs one allocation and no copy), up to
// readBodyPrealloc: a length is only a claim, and a body larger than that grows as its
// bytes actually arrive (check-ins are read before their sender is authenticated, and a
// bare header claiming max bytes must not pin max bytes per connection).
//
// A full buffer doubles (append grows a large slice by only a quarter, which cost an
// 8 MiB body about 40 MiB of copies), capped at the claimed length when the body has
// not exceeded it yet and at max+1: the buffers of a body of n bytes total at most
// about 4n, and each is filled by bytes that arrived before it was allocated.
const readBodyPrealloc = 64 << 10

func readBody(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	n := int64(512)
	if r.ContentLength > 0 {
		n = min(r.ContentLength, max, readBodyPrealloc) + 1
	}
	body := http.MaxBytesReader(w, r.Body, max)
	buf := make([]byte, 0, n)
	for {
		if len(buf) == cap(buf) {
			n := min(2*int64(cap(buf)), max+1)
			if r.ContentLength > int64(len(buf)) {
				n = min(n, r.ContentLength+1)
			}
			if n <= int64(cap(buf)) { // over max: the next read fails
				n = int64(cap(buf)) + 1
			}
			buf = append(make([]byte, 0, n), buf...)
		}
		m, err := body.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+m]
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return buf, err
		}
	}
}

// unmarshalStrict decodes data, exactly one JSON value (white space around it), into v,
// refusing what jsonstrict.Decode refuses — unknown fields at any depth, trailing data —
// and more: duplicate member names, member names that match a field only when case is
// ignored, invalid UTF-8. It decodes in one pass (encoding/json/v2's semantics, from
// github.com/go-json-experiment/json), so every JSON value jsonstrict accepts from a
// well-behaved encoder (encoding/json.Marshal, which the agent uses) decodes to the same
// Go value.
//
// opts are added to those (checkInDecodeOptions for a check-in).
func unmarshalStrict(data []byte, v any, opts ...jsonv2.Options) error {
	return jsonv2.Unmarshal(data, v, append([]jsonv2.Options{jsonv2.RejectUnknownMembers(true)}, opts...)...)
}

func (d *deviceAPI) checkIn(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	now := d.s.cfg.Repo.Now()
	req, ok := decodeCheckIn(w, r)
	if !ok {
		d.checkins.WithLabelValues("bad_request").Inc()
		return
	}
	// reject refuses the check-in. authenticated says whether the device's TPM signed it
	// over a nonce the server issued and had not seen used (only then is the device the
	// actor of its record, "device:ID"; before, the ID is a stranger's claim, recorded as
	// claimed by actor "unauthenticated"), and keeps the refusal out of the overflow
	// window a flood of strangers fills (refusals.go).
	reject := func(code int, msg string, detail any, authenticated bool) {
		msg = boundText(msg, maxRefusalText)
		// The first refusal per source, device and reason in an interval is recorded;
		// the rest are counted into one summary record (refusals.go).
		key := refusalKey{source: requestSource(r), device: req.DeviceID, reason: msg}
		first, closed, used := d.s.refused.note(key, now, authenticated)
		err := d.s.recordRefusals(ctx, closed)
		if first {
			if err == nil {
				actor, data := "unauthenticated", map[string]any{"reason": msg, "detail": detail, "source": requestSource(r), "claimed_device": req.DeviceID}
				if authenticated {
					actor = "device:" + req.DeviceID
					delete(data, "claimed_device")
				}
				// Not ended by the request's context: see recordRefusals.
				actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
				err = d.s.auditLog(actx, actor, "attestation.rejected", req.DeviceID, data)
				cancel()
			}
			if err != nil {
				d.s.refused.forget(used, now)
			}
		}
		d.refusals.WithLabelValues(strconv.Itoa(code)).Inc()
		if err != nil {
			d.checkins.WithLabelValues("error").Inc()
			writeError(w, http.StatusServiceUnavailable, "cannot record the rejection: try again")
			return
		}
		d.checkins.WithLabelValues("rejected").Inc()
		d.verdicts.WithLabelValues("rejected").Inc()
		writeError(w, code, msg)
	}
	if why := d.peerIdentity(r, req.DeviceID); why != "" {
		reject(http.StatusForbidden, why, nil, false)
		return
	}
	// A nonce not issued to the device, or expired, is refused before anything costly
	// (the quote's signature, the AK's chain): its seal says so without the database.
	// Whether it was used before is the admission's to say.
	if err := d.fleet.CheckNonce(req.DeviceID, req.Nonce, now); err != nil {
		reason := nonceReason(req.DeviceID, err)
		reject(http.StatusUnauthorized, "nonce: "+reason.String(), []verify.Reason{reason}, false)
		return
	}
	bound, err := wire.QuoteData(req.Nonce, &req)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	cat, retired, err := d.catalog(ctx)
	if err != nil {
		d.checkins.WithLabelValues("error").Inc()
		writeError(w, http.StatusServiceUnavailable, "repository: "+err.Error())
		return
	}
	expected := []eventlog.Artifact{}
	var superseded []eventlog.Artifact
	var unknown []string
	for kind, sl := range req.Slots {
		if sl.Version == "" {
			continue
		}
		t := policy.Target{Kind: kind, Name: sl.Name, Version: sl.Version}
		var rc retiredContent
		earlier := retired[t]
		if ti, listed := cat[t]; listed {
			rc = retiredContent{sha256: ti.SHA256}
			if ti.Meta != nil && ti.Meta.Encryption != nil {
				rc.plainSHA256 = ti.Meta.Encryption.PlainSHA256
			}
		} else if len(earlier) > 0 {
			// A retired version the device still runs.
			rc, earlier = earlier[len(earlier)-1], earlier[:len(earlier)-1]
		}
		if rc.sha256 == "" {
			unknown = append(unknown, fmt.Sprintf("%s %s %s", kind, sl.Name, sl.Version))
			continue
		}
		// An encrypted target: the device measures the plaintext it decrypted beside
		// the ciphertext, and it must be the one the target's signed metadata names.
		expected = append(expected, eventlog.Artifact{Kind: string(kind), Name: sl.Name, Version: sl.Version, SHA256: rc.sha256, PlainSHA256: rc.plainSHA256})
		for _, e := range earlier {
			// Its ciphertexts before a content-key rotation, of the same plaintext.
			if rc.plainSHA256 != "" && e.plainSHA256 == rc.plainSHA256 && e.sha256 != rc.sha256 {
				superseded = append(superseded, eventlog.Artifact{Kind: string(kind), Name: sl.Name, Version: sl.Version, SHA256: e.sha256, PlainSHA256: e.plainSHA256})
			}
		}
	}
	// The boot policy for the device's hardware class (the class is in the quoted
	// request). A policy with boot entries, none of which applies, trusts no boot.
	pol := d.policy()
	var boot *reference.Boot
	noBoot := ""
	if pol != nil && len(pol.Attestation.Boot) > 0 {
		if boot = reference.Select(pol.Attestation.Boot, req.Hardware); boot == nil {
			noBoot = fmt.Sprintf("boot_policy: no boot policy entry for hardware %q", req.Hardware)
			boot = &reference.Boot{} // still require and replay the boot log
		}
	}
	// The runtime-integrity (IMA) policy: the agent and runtime binaries that ran must
	// be published agent targets, an ONNX Runtime library that ran a published runtime
	// target, and the runtime slot's library must have run. Retired versions count
	// (a device may still run one, as for models).
	var rt *reference.Runtime
	var slotLib string
	var libList []string
	builds := map[string][]string{}
	if pol != nil && pol.Attestation.Runtime != nil {
		rt = pol.Attestation.Runtime
		add := func(t policy.Target, sum string) {
			switch t.Kind {
			case artifact.KindRuntime:
				libList = append(libList, sum)
			case artifact.KindAgent:
				if b := artifact.AgentBinaryOf(t.Name); b != "" {
					builds[b] = append(builds[b], sum)
				}
			}
		}
		for t, ti := range cat {
			add(t, ti.SHA256)
		}
		for t, list := range retired {
			for _, rc := range list {
				add(t, rc.sha256)
			}
		}
		for _, a := range expected {
			if a.Kind == string(artifact.KindRuntime) {
				slotLib = a.SHA256
			}
		}
	}
	// Check verifies the quote's signature over bound before it consumes the nonce, so
	// a forged or altered check-in does not burn the device's nonce.
	//
	// The store's writes (the nonce, the admission) run to their end even if the device
	// hangs up: a statement interrupted by a cancelled context makes sqlite roll back
	// the whole transaction, which under group commit is shared with other devices'
	// check-ins (fleet.committer fails them all, unanswered, rather than lose one).
	// The device retries; its report IDs make the retry count once.
	//
	// Nonces in the fleet database are consumed by the admission's own transaction
	// (fleet.Admission.Nonce), after Check verified the signature: Check's Consume
	// only notes that it got that far (nonceClaim).
	storeCtx := context.WithoutCancel(ctx)
	if d.cfg.CheckInBurst > 0 {
		// Before the evidence is verified: a device past its bound (by its stored state;
		// the ID is still only claimed, so nothing is charged or recorded as its act).
		limit := fleet.CheckInLimit{Burst: d.cfg.CheckInBurst, Every: d.cfg.CheckInEvery}
		if soon := (*fleet.TooSoonError)(nil); errors.As(d.fleet.TooSoon(ctx, req.DeviceID, limit, now), &soon) {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(soon.Wait.Seconds()))))
			reject(http.StatusTooManyRequests, "checking in too often", map[string]any{"burst": d.cfg.CheckInBurst, "every": d.cfg.CheckInEvery.String()}, false)
			return
		}
	}
	consumer := &nonceClaim{}
	v := verify.Check(consumer, req.DeviceID, req.Nonce, bound, verify.Policy{
		Roots: d.cfg.AttestRoots, MeasurementPCR: d.cfg.MeasurementPCR, PermanentIdentifier: req.DeviceID, Expected: expected, Superseded: superseded,
		Boot: boot, Runtime: rt, RuntimeLibraries: libList, RuntimeSlot: slotLib, AgentBuilds: builds, AKCache: d.akc,
	}, req.Evidence, now)
	for _, reason := range v.Reasons {
		switch {
		case authCodes[reason.Code]:
			reject(http.StatusForbidden, "evidence rejected: "+reason.String(), v.Reasons, false)
			return
		case reason.Code == verify.NonceUnknownOrReused || reason.Code == verify.NonceExpired:
			reject(http.StatusUnauthorized, "nonce: "+reason.String(), v.Reasons, false)
			return
		}
	}
	// From here on the request is the device's own: its TPM signed it.
	var reasons []string
	for _, reason := range v.Reasons {
		reasons = append(reasons, reason.String())
	}
	for _, u := range unknown {
		reasons = append(reasons, "runs an artifact the repository does not hold: "+u)
	}
	if noBoot != "" {
		reasons = append(reasons, noBoot)
	}
	verdict := policy.VerdictTrusted
	if !v.Trusted || len(unknown) > 0 || noBoot != "" {
		verdict = policy.VerdictUntrusted
	}
	if consumer.nonce == nil || consumer.device != req.DeviceID {
		// Check answered without reaching its nonce step, yet named no authentication
		// failure: admit nothing rather than an unconsumed nonce.
		d.checkins.WithLabelValues("error").Inc()
		writeError(w, http.StatusInternalServerError, "check-in failed")
		return
	}
	// The encrypted artifacts measured, for the verdict's record: at most
	// maxDecrypted (a device's 4,096 measured loads put 2.9 MB into the audit log at
	// every check-in, found from outside, 2 Dec).
	var decrypted []eventlog.Artifact
	for _, a := range v.Measured {
		if a.PlainSHA256 != "" && len(decrypted) < maxDecrypted {
			decrypted = append(decrypted, a)
		}
	}
	resp, err := d.admit(storeCtx, &req, consumer.nonce, verdict, reasons, v.Boot, v.Runtime, decrypted, v.Superseded, cat, now)
	if errors.Is(err, fleet.ErrNonceExpired) || errors.Is(err, fleet.ErrNonceUnknown) {
		// Signed by the device's TPM, but over a nonce used or unknown: a replay is
		// not the device's act. verify.Check's reasons, had it consumed the nonce itself.
		reason := nonceReason(req.DeviceID, err)
		reject(http.StatusUnauthorized, "nonce: "+reason.String(), append(v.Reasons, reason), false)
		return
	}
	if soon := (*fleet.TooSoonError)(nil); errors.As(err, &soon) {
		// Authenticated by its TPM over a fresh nonce, and refused before anything was
		// stored: the refusal's record is once a minute (reject), not per request.
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(soon.Wait.Seconds()))))
		reject(http.StatusTooManyRequests, "checking in too often", map[string]any{"burst": d.cfg.CheckInBurst, "every": d.cfg.CheckInEvery.String()}, true)
		return
	}
	if errors.Is(err, fleet.ErrDecommissioned) {
		// Authenticated by its TPM, and refused before anything was stored: no verdict,
		// no decision, no version, no key (fleet.Store.Decommission).
		reject(http.StatusForbidden, "device decommissioned", nil, true)
		return
	}
	if err != nil {
		d.checkins.WithLabelValues("error").Inc()
		var inv *fleet.InvalidError
		if errors.As(err, &inv) {
			d.s.log.Error("check-in", "device", req.DeviceID, "err", err)
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		if fleet.Unavailable(err) {
			// Not the device's fault, nor for good: 503 with Retry-After, which a proxy
			// in front of replicas takes as "try another" (a 500 it passed on).
			d.outage.Failed("check-ins refused: the fleet database is unavailable", "device", req.DeviceID, "err", err)
			writeError(w, http.StatusServiceUnavailable, unavailableMessage(err))
			return
		}
		d.s.log.Error("check-in", "device", req.DeviceID, "err", err)
		writeError(w, http.StatusInternalServerError, "check-in failed")
		return
	}
	d.outage.Recovered("the fleet database takes check-ins again")
	if err := d.releaseKeys(storeCtx, &req, bound, resp, cat); err != nil {
		d.checkins.WithLabelValues("error").Inc()
		writeError(w, http.StatusInternalServerError, "check-in failed")
		return
	}
	resp.Audit = d.s.auditWitness(ctx, req.DeviceID, req.AuditCheckpoint)
	d.checkins.WithLabelValues("ok").Inc()
	d.verdicts.WithLabelValues(string(verdict)).Inc()
	writeJSON(w, http.StatusOK, resp)
}

// unavailableMessage is what a device is told when the fleet database could not take
// its check-in for now (fleet.Unavailable): that its disk is full, when it is (an
// operator reading the agent's log then knows where to look), else that it is not
// answering.
func unavailableMessage(err error) string {
	if fleet.NoSpace(err) {
		return "the fleet database cannot take writes (its disk is full): try again later"
	}
	return "the fleet database is not answering: try again later"
}

// admit records an authenticated check-in in one transaction (fleet.Store.Admit, around
// the pure fleet.Admit): the nonce's consumption when nonce is set (fleet.Admission.Nonce)
// and the next one's issue when next is, enrollment on first sight, the facts, the reports, the verdict,
// the quarantine, the rollouts' plan and the decision, each with its audit records. It
// commits whole or not at all.
func (d *deviceAPI) admit(ctx context.Context, req *wire.CheckInRequest, nonce []byte, verdict policy.Verdict, reasons []string, boot *reference.BootState, runtime *reference.RuntimeState, decrypted, superseded []eventlog.Artifact, cat map[policy.Target]repository.TargetInfo, now time.Time) (*wire.CheckInResponse, error) {
	slots := map[artifact.Kind]policy.Slot{}
	for k, sl := range req.Slots {
		s := policy.Slot{Name: sl.Name, Version: sl.Version}
		// The quote shows the slot's version from a ciphertext superseded by a
		// content-key rotation: a rollout to it offers the current one.
		s.Rekey = slices.ContainsFunc(superseded, func(a eventlog.Artifact) bool {
			return a.Kind == string(k) && a.Name == sl.Name && a.Version == sl.Version
		})
		slots[k] = s
	}
	a := fleet.Admission{
		CheckIn: fleet.CheckIn{ID: req.DeviceID, Hardware: req.Hardware, AgentVersion: req.AgentVersion, Slots: slots, Attrs: req.Attrs, LastError: req.LastError, At: now},
		Labels:  req.Labels, Verdict: verdict, Reasons: reasons, Boot: boot, Runtime: runtime, Decrypted: decrypted, Policy: d.policy(), Quarantine: !d.cfg.DontQuarantine, Now: now,
	}
	a.Reports = req.Reports // the authenticated request names the device; Admit attributes the rollout
	a.Nonce = nonce
	if d.cfg.CheckInBurst > 0 {
		a.Limit = fleet.CheckInLimit{Burst: d.cfg.CheckInBurst, Every: d.cfg.CheckInEvery}
	}
	res, err := d.fleet.Admit(ctx, a, catalogFunc(cat))
	if err != nil {
		return nil, err
	}
	// The next check-in's nonce, for the device its TPM just authenticated: it then
	// needs no nonce request (one round trip) before its next check-in.
	next, err := d.nonces.Issue(ctx, req.DeviceID)
	if err != nil {
		return nil, err
	}
	resp := &wire.CheckInResponse{DeviceID: req.DeviceID, Trusted: verdict == policy.VerdictTrusted, Reasons: reasons,
		Quarantined: res.Device.Quarantined, ReportsAccepted: res.Accepted, ReportsRefused: res.Refused, NextCheckIn: d.cfg.CheckInInterval, NextNonce: next,
		RootVersion: d.publishedRoot()}
	for _, r := range res.Refused {
		d.s.log.Warn("install report refused", "device", req.DeviceID, "report", r.ID, "reason", r.Reason)
	}
	for _, sd := range res.Decision.Slots {
		out := wire.SlotDecision{Kind: sd.Kind, Action: string(sd.Action), Reason: string(sd.Reason), Revert: sd.Revert,
			Rollout: sd.Rollout, Gates: sd.Gates, Detail: sd.Detail}
		if sd.Target != nil {
			out.Name, out.Version = sd.Target.Name, sd.Target.Version
			if ti, ok := cat[*sd.Target]; ok {
				out.Target = ti.Path
			}
		}
		resp.Slots = append(resp.Slots, out)
	}
	return resp, nil
}

// releaseKeys gives each slot decision that offers an encrypted target its content key,
// and one whose target names an encrypted probe set that probe set's key (ProbeKey),
// each wrapped to the device's TPM decryption key (issue 18), when all of these hold:
//   - the check-in's quote was trusted and the device is not quarantined (resp);
//   - the decision offers the target (install, or download outside a window);
//   - the device certified its decryption key in this very check-in: the AK that
//     signed the quote signed a TPM2_Certify of a fixed, TPM-generated decrypt-only
//     key, with this request's quote data as qualifying data.
//
// Each release is audited ("key.release": device, target, ciphertext sha256, key
// fingerprint) before the key leaves; when the record cannot be written, nothing is
// released and the check-in fails (the device retries). A withheld key is said in the
// decision's Detail; the device then does not install the target.
func (d *deviceAPI) releaseKeys(ctx context.Context, req *wire.CheckInRequest, bound []byte, resp *wire.CheckInResponse, cat map[policy.Target]repository.TargetInfo) error {
	var devKey *ecdh.PublicKey
	var keyErr error
	for i := range resp.Slots {
		sd := &resp.Slots[i]
		if sd.Target == "" || (sd.Action != wire.ActionInstall && sd.Action != wire.ActionDownload) {
			continue
		}
		ti, ok := cat[policy.Target{Kind: sd.Kind, Name: sd.Name, Version: sd.Version}]
		if !ok || ti.Meta == nil {
			continue
		}
		// The target's own key, and its probe set's when that is encrypted too: the
		// device decrypts the probe set in memory for the trial.
		type release struct {
			ti  repository.TargetInfo
			dst **keywrap.Wrapped
		}
		var todo []release
		if ti.Meta.Encryption != nil {
			todo = append(todo, release{ti, &sd.ContentKey})
		}
		if ti.Meta.Probe != "" {
			if k, n, v, err := artifact.ParseTargetPath(ti.Meta.Probe); err == nil {
				if pi, ok := cat[policy.Target{Kind: k, Name: n, Version: v}]; ok && pi.Path == ti.Meta.Probe && pi.Meta != nil && pi.Meta.Encryption != nil {
					todo = append(todo, release{pi, &sd.ProbeKey})
				}
			}
		}
		if len(todo) == 0 {
			continue
		}
		withhold := func(why string) {
			sd.Detail = strings.TrimSpace(sd.Detail + " content key withheld: " + why)
		}
		switch {
		case !resp.Trusted:
			withhold("the quote was not trusted")
			continue
		case resp.Quarantined:
			withhold("the device is quarantined")
			continue
		case d.cfg.KEK == nil:
			withhold("the server holds no key-encryption key (edgeward server --kek)")
			continue
		case req.Evidence.DecryptionKey == nil:
			withhold("the device certified no TPM decryption key")
			continue
		}
		if devKey == nil && keyErr == nil {
			devKey, keyErr = certifiedDecryptionKey(req.Evidence, bound)
		}
		if keyErr != nil {
			withhold(keyErr.Error())
			continue
		}
		for _, rel := range todo {
			w, ok, err := d.wrapFor(ctx, req, sd, rel.ti, devKey)
			if err != nil {
				return err
			}
			if !ok {
				withhold("the server cannot open its content key")
				*rel.dst = nil
				break
			}
			*rel.dst = &w
		}
		if sd.ContentKey == nil && ti.Meta.Encryption != nil {
			sd.ProbeKey = nil
		}
	}
	return nil
}

// wrapFor wraps the content key of the encrypted target ti to the device's key devKey,
// after auditing the release ("key.release"). ok is false when the server cannot open
// the stored content key (logged); an error means the release could not be audited.
func (d *deviceAPI) wrapFor(ctx context.Context, req *wire.CheckInRequest, sd *wire.SlotDecision, ti repository.TargetInfo, devKey *ecdh.PublicKey) (keywrap.Wrapped, bool, error) {
	ck, err := d.s.cfg.Repo.ContentKey(d.cfg.KEK, ti.Path, ti.SHA256)
	if err != nil {
		d.s.log.Error("content key", "target", ti.Path, "err", err)
		return keywrap.Wrapped{}, false, nil
	}
	w, err := keywrap.ToDevice(nil, devKey, ck[:], keywrap.TargetContext(ti.Path, ti.SHA256))
	clear(ck[:])
	if err != nil {
		return keywrap.Wrapped{}, false, fmt.Errorf("wrap content key of %s: %w", ti.Path, err)
	}
	fp := sha256.Sum256(devKey.Bytes())
	if err := d.s.auditLog(ctx, "device:"+req.DeviceID, "key.release", ti.Path, map[string]any{
		"device": req.DeviceID, "target": ti.Path, "sha256": ti.SHA256, "plain_sha256": ti.Meta.Encryption.PlainSHA256, "rollout": sd.Rollout,
		"device_key": hex.EncodeToString(fp[:]),
	}); err != nil {
		return keywrap.Wrapped{}, false, err
	}
	return w, true, nil
}

// certifiedDecryptionKey returns the device's decryption key from its certification in
// ev, checked against the AK certificate of the same evidence (which verify.Check has
// already trusted) and the request's quote data.
func certifiedDecryptionKey(ev wire.Evidence, bound []byte) (*ecdh.PublicKey, error) {
	ak, err := x509.ParseCertificate(ev.AKCert)
	if err != nil {
		return nil, fmt.Errorf("AK certificate: %w", err)
	}
	return verify.DecryptionKey(ak.PublicKey, *ev.DecryptionKey, bound)
}

// plan advances the rollouts; the store saves each change with its audit records.
func (d *deviceAPI) plan(ctx context.Context, p *policy.Policy, now time.Time) {
	if _, err := d.fleet.PlanRollouts(ctx, p, now); err != nil {
		d.s.log.Error("plan rollouts", "err", err)
	}
}

// runRetention applies the retention policy (DeviceConfig.Retention) at once and then
// every RetentionInterval, on the leader only, until ctx ends.
func (d *deviceAPI) runRetention(ctx context.Context) {
	every := d.cfg.RetentionInterval
	if every <= 0 {
		every = time.Hour
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		d.pruneOnce(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// pruneOnce deletes the fleet's history older than the retention, when this replica
// leads (two replicas pruning at once would only repeat each other's deletes).
func (d *deviceAPI) pruneOnce(ctx context.Context) {
	if _, leader := d.s.Leader(ctx); !leader {
		return
	}
	before := d.s.cfg.Repo.Now().Add(-d.cfg.Retention)
	p, err := d.fleet.Prune(ctx, before)
	d.pruned.WithLabelValues("verdicts").Add(float64(p.Verdicts))
	d.pruned.WithLabelValues("decisions").Add(float64(p.Decisions))
	d.pruned.WithLabelValues("reports").Add(float64(p.Reports))
	d.pruned.WithLabelValues("report_marks").Add(float64(p.ReportMarks))
	d.pruned.WithLabelValues("rollout_offers").Add(float64(p.RolloutOffers))
	if err != nil {
		if ctx.Err() == nil {
			d.s.log.Error("retention: prune the fleet's history", "before", before, "err", err)
		}
		return
	}
	if p != (fleet.Pruned{}) {
		d.s.log.Info("retention: pruned the fleet's history", "before", before, "verdicts", p.Verdicts, "decisions", p.Decisions, "reports", p.Reports, "report_marks", p.ReportMarks, "rollout_offers", p.RolloutOffers)
	}
}

// runPlanner re-plans rollouts periodically, on the leader only, until ctx ends.
func (d *deviceAPI) runPlanner(ctx context.Context) {
	t := time.NewTicker(d.cfg.PlanInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			// Only the leader plans on the ticker, through a store fenced with its
			// lease: once another replica took over, its writes are refused.
			// (Check-ins plan too, in their own transactions, on every replica.)
			l, leader := d.s.Leader(ctx)
			if !leader {
				continue
			}
			st := d.fleet
			if l.Token != 0 {
				st = st.Fenced(l)
			}
			if _, err := st.PlanRollouts(ctx, d.policy(), d.s.cfg.Repo.Now()); err != nil {
				d.s.log.Error("plan rollouts", "err", err)
			}
		}
	}
}

// catalog maps (kind, name, version) to the published target, and to the content of
// the retired ones, reloaded when the timestamp changes (a retire writes its list
// before the timestamp).
// retiredContent is what a retired target's content was: its SHA-256 and, for an
// encrypted one, its plaintext's.
type retiredContent struct{ sha256, plainSHA256 string }

func (d *deviceAPI) catalog(ctx context.Context) (map[policy.Target]repository.TargetInfo, map[policy.Target][]retiredContent, error) {
	// The timestamp as the metadata cache holds it: a new entry exactly when the file
	// changed (inode, size, mtime), found without a system call while the cache is
	// watched, with one stat(2) otherwise (metaCache.get).
	ts, err := d.s.meta.get("timestamp.json")
	if err != nil {
		return nil, nil, err
	}
	d.catMu.Lock()
	defer d.catMu.Unlock()
	if d.cat != nil && d.catKey == ts {
		return d.cat, d.retired, nil
	}
	state, err := d.s.cfg.Repo.Load(ctx)
	if err != nil {
		return nil, nil, err
	}
	list, err := d.s.cfg.Repo.Retired()
	if err != nil {
		return nil, nil, err
	}
	retired := map[policy.Target][]retiredContent{}
	for _, rt := range list {
		if m := rt.Meta(); m != nil {
			rc := retiredContent{sha256: rt.SHA256}
			if m.Encryption != nil {
				rc.plainSHA256 = m.Encryption.PlainSHA256
			}
			t := policy.Target{Kind: m.Kind, Name: m.Name, Version: m.Version}
			retired[t] = append(retired[t], rc)
		}
	}
	cat := map[policy.Target]repository.TargetInfo{}
	for _, ti := range state.List() {
		if ti.Meta == nil {
			continue
		}
		cat[policy.Target{Kind: ti.Meta.Kind, Name: ti.Meta.Name, Version: ti.Meta.Version}] = ti
	}
	d.cat, d.retired, d.catKey, d.root = cat, retired, ts, state.Root.Signed.Version
	return cat, retired, nil
}

// publishedRoot is the version of the root the repository published when the catalog
// was last loaded (every check-in loads it first).
func (d *deviceAPI) publishedRoot() int64 {
	d.catMu.Lock()
	defer d.catMu.Unlock()
	return d.root
}

func catalogFunc(cat map[policy.Target]repository.TargetInfo) policy.Catalog {
	return func(t policy.Target) (artifact.Meta, bool) {
		ti, ok := cat[t]
		if !ok || ti.Meta == nil {
			return artifact.Meta{}, false
		}
		return *ti.Meta, true
	}
}

// AuditEvent appends an event to the server's audit log (for subsystems the server
// mounts, such as the attestation CA's decisions), in its own transaction, and returns
// the error if it could not be recorded.
func (s *Server) AuditEvent(ctx context.Context, actor, kind, subject string, data any) error {
	return s.auditLog(ctx, actor, kind, subject, data)
}

// maxDecrypted bounds the decrypted artifacts a verdict's audit record lists.
const maxDecrypted = 64

// nonceReason is the verifier's reason for a nonce the fleet store refused (err:
// fleet.ErrNonceUnknown or fleet.ErrNonceExpired).
func nonceReason(device string, err error) verify.Reason {
	if errors.Is(err, fleet.ErrNonceExpired) {
		return verify.Reason{Code: verify.NonceExpired, Detail: "nonce was issued more than the TTL ago"}
	}
	return verify.Reason{Code: verify.NonceUnknownOrReused, Detail: fmt.Sprintf("nonce was not issued to %q or was already used", device)}
}

// nonceClaim is the NonceConsumer of nonces that the check-in's own transaction
// consumes: verify.Check calls Consume once it has verified the quote's signature over
// the nonce, and the claim notes which nonce that was. Consuming it is the admission's
// first write (fleet.Store.Admit), so a nonce is used up exactly when its check-in
// commits, and a wrong, used or expired one fails the check-in with nothing changed.
type nonceClaim struct {
	device string
	nonce  []byte
}

func (c *nonceClaim) Consume(device string, nonce []byte) error {
	c.device, c.nonce = device, nonce
	return nil
}

// dbNonces keeps nonces in the fleet database, shared by every replica.
type dbNonces struct {
	st  *fleet.Store
	ttl time.Duration
	now func() time.Time
}

func (d dbNonces) Issue(ctx context.Context, device string) ([]byte, error) {
	return d.st.IssueNonce(ctx, device, d.now().Add(d.ttl))
}
