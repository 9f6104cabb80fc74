// Package wire holds what the device and the server exchange, defined once: check-in
// requests and answers, the attestation evidence, the server's decision per slot kind and
// install reports (with the probe's figures). Both sides import it; it has no I/O and no
// server, policy or CA code, so the agent binary stays small. The device API client is
// internal/deviceapi.
//
// A check-in is authenticated by the device's TPM: the agent asks for a nonce, builds its
// request (facts, slots, reports), and quotes its PCRs with qualifying data
// QuoteData(nonce, request) — a hash over the nonce and every field but the evidence. The
// server recomputes it, so the AK signature covers the whole check-in: a replayed,
// altered or forged request is rejected. The AK certificate names the device (its
// permanent identifier, derived from the EK).
//
// JSON field names are the wire format: new fields are optional (omitempty) and come
// after the old ones, so the JSON an older agent quotes is what this package re-encodes.
package wire

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/protocol"
)

// Paths of the device API.
const (
	PathNonce   = "/v1/devices/nonce"
	PathCheckIn = "/v1/devices/checkin"
	// PathDeviceCA describes the device CA (GET): DeviceCA.
	PathDeviceCA = "/v1/devices/ca"
	// PathAttest is where the attestation CA's enrollment protocol is mounted
	// (POST {PathAttest}/enroll, POST {PathAttest}/activate).
	PathAttest = "/v1/attest"
)

// MaxRequestBytes bounds a check-in request (evidence, logs and reports included; the
// boot and IMA logs, base64 in JSON, take up to 4 MiB of it).
const MaxRequestBytes = 8 << 20

// DeviceCA tells a device where to get its certificate: step-ca's ACME directory for
// device-attest-01 and the root of its TLS certificate and of device certificates.
type DeviceCA struct {
	DirectoryURL string `json:"acme_directory"`
	RootPEM      string `json:"root_pem"`
}

// NonceRequest asks for a quote nonce.
type NonceRequest struct {
	DeviceID string `json:"device_id"`
}

// NonceResponse carries a single-use, short-lived nonce.
type NonceResponse struct {
	Nonce []byte `json:"nonce"`
}

// Slot is what a device reports of one slot kind: the committed version.
type Slot struct {
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
}

// Outcome is the result of one install on a device.
type Outcome string

const (
	OutcomeCommitted            Outcome = "committed"
	OutcomeProbeFailed          Outcome = "probe_failed"
	OutcomeRolledBack           Outcome = "rolled_back"
	OutcomeInstallError         Outcome = "install_error"
	OutcomeAttestationUntrusted Outcome = "attestation_untrusted"
	// OutcomeInfrastructure: the install failed for a cause outside the version (no
	// space left, the network or the server, the local runtime down). The agent retries
	// it with backoff; the version is not marked Failed and the wave does not count it.
	OutcomeInfrastructure Outcome = "infrastructure"
)

// ParseOutcome checks s.
func ParseOutcome(s string) (Outcome, error) {
	switch o := Outcome(s); o {
	case OutcomeCommitted, OutcomeProbeFailed, OutcomeRolledBack, OutcomeInstallError, OutcomeAttestationUntrusted, OutcomeInfrastructure:
		return o, nil
	}
	return "", fmt.Errorf("unknown outcome %q: want committed, probe_failed, rolled_back, install_error, attestation_untrusted or infrastructure", s)
}

// Failed reports whether the install did not commit (every outcome but committed).
func (o Outcome) Failed() bool { return o != OutcomeCommitted }

// Final reports whether the outcome is the version's result on the device: it commits,
// or it fails in a way retrying cannot fix (probes, verification), which marks the
// version Failed for the device and counts against its wave. An infrastructure failure
// is not final: the device retries.
func (o Outcome) Final() bool { return o != OutcomeInfrastructure }

// Probe is what a trial's probe run measured of the version it judged. A zero field
// means "not measured" (no probe set, or the trial failed before the probe).
type Probe struct {
	Accuracy float64 `json:"accuracy,omitempty"`
	P99Ms    float64 `json:"p99_ms,omitempty"`
	// PeakRSSMB is the runtime process's peak resident memory during the probe.
	PeakRSSMB float64 `json:"peak_rss_mb,omitempty"`
}

// Measured reports whether the probe ran.
func (p Probe) Measured() bool { return p != Probe{} }

// Report is the result of one install. The agent queues it in its outbox and sends it
// in a check-in; the server stores it attributed to a rollout.
type Report struct {
	// ID is unique per report, so a retried check-in is idempotent.
	ID      string        `json:"id,omitempty"`
	Kind    artifact.Kind `json:"kind"`
	Name    string        `json:"name"`
	Version string        `json:"version"`
	Outcome Outcome       `json:"outcome"`
	// Cause is the detail of a failure, e.g. "accuracy 0.91 < 0.95".
	Cause string    `json:"cause,omitempty"`
	At    time.Time `json:"at"`
	// Bytes downloaded for this install, if known.
	Bytes int64 `json:"bytes,omitempty"`
	// Probe holds the trial's figures (accuracy, p99_ms, peak_rss_mb).
	Probe
	// DeviceID is the device that reported. The server sets it from the authenticated
	// check-in, whatever the device wrote.
	DeviceID string `json:"device_id,omitempty"`
	// RolloutID is the rollout whose decision caused the install. The server attributes
	// it itself.
	RolloutID string `json:"rollout_id,omitempty"`
	// Delta is the delta method the target was built with ("cdc-zstd"), "" for a full
	// download; BytesSaved is the full target's length minus Bytes (negative when a
	// delta failed and the full target followed it).
	Delta      string `json:"delta,omitempty"`
	BytesSaved int64  `json:"bytes_saved,omitempty"`
	// DeltaFallback says why a delta the device tried was not used and the full target
	// followed ("download delta …: hash mismatch", an interrupted apply); "" when no
	// delta was tried or one built the target.
	DeltaFallback string `json:"delta_fallback,omitempty"`
}

// Evidence is the TPM's proof at a check-in (what attest/verify checks): the AK
// certificate, a quote, the measurement log and the boot event log.
type Evidence struct {
	// AKCert is the DER AK certificate the attestation CA issued.
	AKCert []byte `json:"ak_cert"`
	// AKChain are DER intermediates between AKCert and the CA root.
	AKChain [][]byte       `json:"ak_chain,omitempty"`
	Quote   protocol.Quote `json:"quote"`
	// Log is the measurement log of this boot.
	Log eventlog.Log `json:"log"`
	// BootLog is the TCG boot event log of this boot, as the firmware wrote it
	// (/sys/kernel/security/tpm0/binary_bios_measurements on Linux); the quote then
	// covers the boot PCRs (0–7) too. Empty: the device sends no boot evidence, which a
	// boot policy rejects. Not covered by QuoteData: its integrity is proven by
	// replaying it to the quoted PCR values.
	BootLog []byte `json:"boot_log,omitempty"`
	// IMALog is the kernel's IMA measurement list (binary, SHA-256 template hashes,
	// ima-ng; see internal/ima), read after the quote, which then covers PCR 10 too.
	// Empty: no runtime-integrity evidence, which a runtime policy rejects.
	IMALog []byte `json:"ima_log,omitempty"`
	// DecryptionKey is the AK's TPM2_Certify of the device's TPM-resident decryption
	// key (attest.DecryptionKey), whose qualifying data is this request's QuoteData: the
	// key content keys of encrypted targets are wrapped to (issue 18). Absent: the
	// device receives no content keys.
	DecryptionKey *protocol.KeyCertification `json:"decryption_key,omitempty"`
}

// MaxBootLogBytes bounds a boot event log (real ones are 10–100 KiB).
const MaxBootLogBytes = 1 << 20

// UpdateErrorKind says what kind of cause stopped a device's last update round.
type UpdateErrorKind string

const (
	ErrorExpiredMetadata UpdateErrorKind = "expired_metadata" // the TUF metadata it was served is expired
	ErrorNoSpace         UpdateErrorKind = "no_space"         // no space left for the target
	ErrorDownload        UpdateErrorKind = "download"         // the network or the server failed
	ErrorRuntimeDown     UpdateErrorKind = "runtime_down"     // the local runtime refused or died
	// ErrorMetadataTooLarge: a TUF role is larger than the device accepts (the
	// catalogue outgrew it; retire old versions).
	ErrorMetadataTooLarge UpdateErrorKind = "metadata_too_large"
	// ErrorMetadataBehind: the device's metadata source (a mirror) serves an older root
	// than the server says it publishes (CheckInResponse.RootVersion): lagging, or
	// withholding the new root. The device installs nothing until it gets it.
	ErrorMetadataBehind UpdateErrorKind = "metadata_behind"
	ErrorOther          UpdateErrorKind = "other"
)

// UpdateError is the agent's last update error: why its last update round failed, and
// when. A device sends it at every check-in until a round succeeds, so that the fleet
// sees why a device is stuck while it keeps serving.
type UpdateError struct {
	Kind    UpdateErrorKind `json:"kind"`
	Message string          `json:"message"`
	At      time.Time       `json:"at"`
}

// CheckInRequest is what a device sends at a check-in.
type CheckInRequest struct {
	DeviceID     string                 `json:"device_id"`
	Labels       map[string]string      `json:"labels,omitempty"` // used when the device is first seen
	Hardware     string                 `json:"hardware,omitempty"`
	AgentVersion string                 `json:"agent_version,omitempty"`
	Slots        map[artifact.Kind]Slot `json:"slots,omitempty"`
	Attrs        map[string]any         `json:"attrs,omitempty"`
	Reports      []Report               `json:"reports,omitempty"`
	Nonce        []byte                 `json:"nonce"`
	// AuditCheckpoint is the newest audit-log checkpoint the device has verified (a
	// signed note), echoed so that the server must prove its new checkpoint consistent
	// with it: every device is a witness of the audit log. Empty: none yet.
	AuditCheckpoint string `json:"audit_checkpoint,omitempty"`
	// LastError is the agent's last update error; nil when its last round succeeded.
	LastError *UpdateError `json:"last_error,omitempty"`
	Evidence  Evidence     `json:"evidence"`
}

// QuoteData is the qualifying data the device's quote must carry for this request:
// SHA-256 over a domain tag, the nonce and the JSON of every field but the evidence.
func QuoteData(nonce []byte, r *CheckInRequest) ([]byte, error) {
	fields, err := QuoteFields(r)
	if err != nil {
		return nil, err
	}
	return QuoteDigest(nonce, fields), nil
}

// QuoteFields is the JSON QuoteData digests beside the nonce: the request without its
// nonce and evidence.
func QuoteFields(r *CheckInRequest) ([]byte, error) {
	body := *r
	body.Nonce = nil
	body.Evidence = Evidence{}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("check-in digest: %w", err)
	}
	return b, nil
}

// QuoteDigest is QuoteData(nonce, r) given fields = QuoteFields(r): a client that
// sends the same facts at every check-in marshals them once.
func QuoteDigest(nonce, fields []byte) []byte {
	h := sha256.New()
	h.Write([]byte("edgeward-checkin-v1\x00"))
	h.Write(nonce)
	h.Write([]byte{0})
	h.Write(fields)
	return h.Sum(nil)
}

// Actions of a SlotDecision.
const (
	// ActionInstall: install, trial and commit Target now.
	ActionInstall = "install"
	// ActionDownload: Target is wanted but outside the maintenance window.
	ActionDownload = "download"
	// ActionHold: keep what is committed.
	ActionHold = "hold"
)

// ReasonRekey is the Reason of an install decision for the version the device already
// runs, whose content key was rotated (policy.ReasonRekey): the device installs the
// target although its path is the one it runs, since the signed ciphertext changed.
const ReasonRekey = "rekey"

// ReasonRetry is the Reason of an install decision for a version that failed on the
// device and whose failure an operator cleared (policy.ReasonRetry): the device installs
// it although it remembers refusing it, once; an agent that knows nothing of it keeps
// refusing the version, as before.
const ReasonRetry = "failure_cleared"

// SlotDecision is the server's desired state for one slot kind: the whole decision the
// device acts on.
type SlotDecision struct {
	Kind   artifact.Kind `json:"kind"`
	Action string        `json:"action"` // ActionInstall, ActionDownload, ActionHold
	Reason string        `json:"reason"`
	// Target is the TUF target path to install or download ("" when the action is hold
	// and nothing is named). The agent installs it only if TUF verifies it.
	Target  string `json:"target,omitempty"`
	Name    string `json:"name,omitempty"`
	Version string `json:"version,omitempty"`
	// Revert is set when the rollout goes back to an older version (abort); the
	// device's anti-rollback floor may refuse it.
	Revert bool `json:"revert,omitempty"`
	// Rollout is the rollout that decided.
	Rollout string `json:"rollout,omitempty"`
	// Gates are the rollout's commit gates. The device commits against
	// artifact.Stricter(signed target gates, Gates): a rollout can tighten what the
	// publisher signed, never loosen it.
	Gates  *artifact.Gates `json:"gates,omitempty"`
	Detail string          `json:"detail,omitempty"`
	// ContentKey is the content key of an encrypted Target, wrapped to the device's
	// certified TPM decryption key (issue 18). The server releases it only at a
	// check-in whose quote it trusted, to a device not quarantined, for a target the
	// decision offers, and audits every release ("key.release").
	ContentKey *keywrap.Wrapped `json:"content_key,omitempty"`
	// ProbeKey is the content key of the Target's probe set when that is encrypted,
	// wrapped and released like ContentKey: the device decrypts the probe set in
	// memory for the trial's probes.
	ProbeKey *keywrap.Wrapped `json:"probe_key,omitempty"`
}

// RefusedReport names a report the server refused, by its ID, and says why.
type RefusedReport struct {
	ID     string `json:"id"`
	Reason string `json:"reason"`
}

// CheckInResponse is the server's answer.
type CheckInResponse struct {
	DeviceID    string         `json:"device_id"`
	Trusted     bool           `json:"trusted"`
	Reasons     []string       `json:"reasons,omitempty"`
	Quarantined bool           `json:"quarantined,omitempty"`
	Slots       []SlotDecision `json:"slots"`
	// ReportsAccepted counts the reports stored (duplicates of stored ones included).
	ReportsAccepted int `json:"reports_accepted"`
	// ReportsRefused names the reports the server refused for good (invalid as they
	// are; sending them again cannot help). The others were stored: one bad report
	// does not hold back the rest of its batch, nor the check-in. The device sets the
	// refused ones aside.
	ReportsRefused []RefusedReport `json:"reports_refused,omitempty"`
	// NextCheckIn is when the server would like to hear from the device again.
	NextCheckIn time.Duration `json:"next_check_in"`
	// Audit is the audit log's newest checkpoint with a consistency proof from the one
	// the device echoed (nil: the server keeps no audit log).
	Audit *AuditCheckpoint `json:"audit,omitempty"`
	// NextNonce is a quote nonce for the device's next check-in, issued by this one
	// (single use, and expiring, as one from PathNonce; it replaces any other). A
	// device holding one may quote over it instead of asking PathNonce, and asks
	// PathNonce when the server refuses it (401: expired, or replaced by a nonce asked
	// for since). Empty: the server issued none.
	NextNonce []byte `json:"next_nonce,omitempty"`
	// RootVersion is the version of the TUF root the repository publishes now (0: not
	// said; servers before 3 Dec). The device checks it against the root its own
	// metadata source gave it: a mirror that withholds a new root (one that rotated a
	// stolen key away) would otherwise keep the device trusting the old keys until that
	// root expired. The statement comes over the attested mTLS check-in, not from TUF:
	// it can only make the device wait, never trust anything TUF did not verify.
	RootVersion int64 `json:"root_version,omitempty"`
}

// AuditCheckpoint is a checkpoint of the audit log (C2SP tlog-checkpoint signed note)
// and the consistency proof (tlog.TreeProof, 32-byte hashes) from the tree size of the
// checkpoint the device echoed.
type AuditCheckpoint struct {
	Checkpoint string   `json:"checkpoint"`
	Proof      [][]byte `json:"proof,omitempty"`
}
