// Package attestca is the attestation CA: it checks a device's endorsement
// key (EK) against the manufacturer roots, proves with a MakeCredential /
// ActivateCredential round trip that the device's attestation key (AK) lives
// in the same TPM, and then issues an AK certificate in the profile step-ca's
// ACME device-attest-01 (format "tpm") verifies.
//
// Security contract: an AK certificate is issued only when
//
//  1. the EK certificate chains to a configured manufacturer root (or, for a
//     TPM without one, the EK is on the allowlist), and the EK is on the
//     allowlist when one is configured;
//  2. the EK public area sent by the device holds the certified key;
//  3. the AK public area describes a restricted, TPM-bound, TPM-generated
//     RSA-2048+ signing key;
//  4. the device returned, once and before the challenge expired, the secret
//     that only the TPM holding the EK can release, and only for a loaded key
//     whose name equals the AK's name.
//
// The package is server-side only; the agent never links it.
package attestca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"time"
	"unicode/utf8"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeward/edgeward/internal/protocol"
)

// Errors a caller (and the HTTP layer) decides on.
var (
	// ErrBadRequest: the request is malformed (HTTP 400).
	ErrBadRequest = errors.New("attestca: bad request")
	// ErrRejected: the request is well formed but fails a check (HTTP 403).
	ErrRejected = errors.New("attestca: rejected")
	// ErrUnknownChallenge: no pending challenge with this ID — never issued,
	// expired, or already answered (HTTP 404).
	ErrUnknownChallenge = errors.New("attestca: unknown or expired challenge")
	// ErrBusy: too many pending challenges (HTTP 503).
	ErrBusy = errors.New("attestca: too many pending challenges")
	// ErrUnavailable is what a ChallengeStore or Config.Refuse wraps when its store
	// cannot do the work for now (its database away or out of space), beside
	// syscall.ENOSPC when the disk is full: HTTP 503 with Retry-After, which the device
	// retries and a proxy passes to another replica, not 500.
	ErrUnavailable = errors.New("attestca: enrollment cannot be stored now: try again later")
	// ErrRefused is what Config.Refuse wraps to refuse an EK (then ErrRejected, 403);
	// its other errors fail the request as the CA's own (500: it may be retried).
	ErrRefused = errors.New("refused")
	// ErrRefusedForGood is what Config.Refuse wraps, beside ErrRefused, when the refusal
	// will not change by asking again (the device was decommissioned): the answer says
	// so (protocol.CodeRefused) and the device asks rarely. An EK not on an allowlist yet,
	// or an allowlist that cannot be read now, is refused without it: an operator may
	// add the EK in a minute (found in review, 2 Dec: such a device waited an hour).
	ErrRefusedForGood = errors.New("for good")
)

// Event is reported to Config.Audit for every decision.
type Event struct {
	// Kind is "challenge", "issued" or "rejected".
	Kind string
	// EKID is the device's EK-derived identifier, when known.
	EKID   string
	Reason string
	// Serial is the issued AK certificate's serial (hex), for "issued".
	Serial string
}

// Config configures a CA. The zero value of each optional field is useful.
type Config struct {
	// Signer and Certificate sign AK certificates. Required.
	Signer      crypto.Signer
	Certificate *x509.Certificate
	// Chain are the certificates above Certificate, up to and including the
	// root, sent to devices with their AK certificate. Nil when Certificate
	// is the root.
	Chain []*x509.Certificate

	// ManufacturerRoots are the TPM manufacturer roots EK certificates must
	// chain to. Nil: no EK certificate is accepted, only allowlisted EKs.
	ManufacturerRoots *x509.CertPool
	// ManufacturerIntermediates complete EK chains (devices may also send
	// intermediates).
	ManufacturerIntermediates *x509.CertPool
	// AllowedEKs, when non-nil, is the EK allowlist (keys are protocol.EKID
	// values): an EK must be on it in addition to chaining to a root. A TPM
	// without an EK certificate is accepted only through it.
	AllowedEKs map[string]bool
	// Refuse, when set, is asked about an EK (its protocol.EKID, the device ID) that
	// passed the checks above, before a challenge is issued and again before its AK
	// certificate is: an error wrapping ErrRefused refuses it (e.g. the device was
	// decommissioned: before
	// 2 Dec one got AK certificates for ever, found from outside).
	Refuse func(ctx context.Context, ekID string) error

	// AKCertValidity is the AK certificate lifetime; zero means 365 days.
	AKCertValidity time.Duration
	// ChallengeTTL is how long a challenge can be answered; zero means 5m.
	ChallengeTTL time.Duration
	// MaxPending bounds outstanding challenges; zero means 10000. Each EK has at
	// most one per source (a new challenge from the same source replaces the old), each source at most
	// MaxPendingPerSource, and when the cap is reached a new challenge evicts the
	// oldest of the source holding the most, if it holds more than the requester:
	// no one certificate and no one source can lock others out.
	MaxPending int
	// MaxPendingPerSource bounds outstanding challenges per source (the remote
	// address the HTTP handler passes to ChallengeFrom); zero means 64. A source
	// past it loses its own oldest challenge.
	MaxPendingPerSource int
	// Challenges keeps the pending challenges and enforces the bounds above. nil: this
	// process's memory (one server only). A store in a database shared by several
	// replicas lets a device answer at any replica the challenge another issued.
	Challenges ChallengeStore

	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand is the randomness source; nil means crypto/rand.Reader.
	Rand io.Reader
	// Logger receives decisions (never secrets); nil means slog.Default().
	Logger *slog.Logger
	// Audit, if set, is called for every decision (for the audit log).
	Audit func(context.Context, Event)
}

// CA is an attestation CA. Safe for concurrent use. The config must not be
// modified after New.
type CA struct {
	cfg Config
}

// Challenge is a pending enrollment challenge, as a ChallengeStore keeps it: what
// Activate needs to check the answer and issue the AK certificate. Secret is the
// credential's secret: a store must keep it from everyone but the CA.
type Challenge struct {
	ID     string
	EKID   string // the device's EK-derived identifier
	Source string // the requester, for the per-source bound
	Secret []byte
	// AKPublic is the AK's TPMT_PUBLIC as the device sent it.
	AKPublic []byte
	TPM      protocol.TPMInfo
	Expires  time.Time
}

// Bounds are the limits a ChallengeStore enforces as it adds a challenge (see
// Config.MaxPending and Config.MaxPendingPerSource).
type Bounds struct {
	MaxPending, MaxPendingPerSource int
}

// ChallengeStore keeps pending challenges. Implementations are safe for concurrent
// use, also across processes when shared.
type ChallengeStore interface {
	// AddChallenge makes room for c and stores it, in one step: it drops expired
	// challenges (expired before now) and the one pending for c.EKID from c.Source
	// (others' stay: anyone may know a device's public EK), keeps c.Source under
	// b.MaxPendingPerSource by dropping its own oldest, and when b.MaxPending are
	// pending evicts the oldest challenge of the source holding the most (ties: the
	// smallest source), provided it holds more than c.Source. Otherwise ErrBusy, and
	// nothing is stored.
	AddChallenge(ctx context.Context, c Challenge, b Bounds, now time.Time) error
	// TakeChallenge removes challenge id and returns it; nil and no error when no
	// challenge has that ID. A challenge can be taken once.
	TakeChallenge(ctx context.Context, id string) (*Challenge, error)
}

// New returns a CA.
func New(cfg Config) (*CA, error) {
	if cfg.Signer == nil || cfg.Certificate == nil {
		return nil, errors.New("attestca: Signer and Certificate are required")
	}
	if !cfg.Certificate.IsCA {
		return nil, errors.New("attestca: Certificate is not a CA certificate")
	}
	if !protocolKeyEqual(cfg.Signer.Public(), cfg.Certificate.PublicKey) {
		return nil, errors.New("attestca: Signer does not match Certificate")
	}
	if cfg.AKCertValidity == 0 {
		cfg.AKCertValidity = 365 * 24 * time.Hour
	}
	if cfg.ChallengeTTL == 0 {
		cfg.ChallengeTTL = 5 * time.Minute
	}
	if cfg.MaxPendingPerSource == 0 {
		cfg.MaxPendingPerSource = 64
	}
	if cfg.MaxPending == 0 {
		cfg.MaxPending = 10000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Challenges == nil {
		cfg.Challenges = NewMemoryChallenges()
	}
	return &CA{cfg: cfg}, nil
}

// Roots returns a pool with the CA's root: what verifiers and step-ca's
// attestationRoots must trust.
func (ca *CA) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	if n := len(ca.cfg.Chain); n > 0 {
		p.AddCert(ca.cfg.Chain[n-1])
	} else {
		p.AddCert(ca.cfg.Certificate)
	}
	return p
}

func protocolKeyEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

func (ca *CA) reject(ctx context.Context, ekID, format string, args ...any) error {
	reason := fmt.Sprintf(format, args...)
	if len(reason) > maxReason {
		// It quotes what the request held (a certificate's parse error repeats the
		// name that failed to parse): bounded in the log, the audit and the answer.
		cut := maxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = fmt.Sprintf("%s… (%d bytes)", reason[:cut], len(reason))
	}
	ca.cfg.Logger.InfoContext(ctx, "attestation CA rejected a device", "ek", ekID, "reason", reason)
	if ca.cfg.Audit != nil {
		ca.cfg.Audit(ctx, Event{Kind: "rejected", EKID: ekID, Reason: reason})
	}
	return fmt.Errorf("%w: %s", ErrRejected, reason)
}

// refused is reject for an error of Config.Refuse: a refusal for good
// (ErrRefusedForGood) stays one, which the answer says (protocol.CodeRefused) so that
// the device stops asking often.
func (ca *CA) refused(ctx context.Context, ekID string, err error) error {
	rej := ca.reject(ctx, ekID, "%v", err)
	if errors.Is(err, ErrRefusedForGood) {
		return refusedError{rej}
	}
	return rej
}

// refusedError is a rejection (ErrRejected) that is also ErrRefusedForGood.
type refusedError struct{ error }

func (e refusedError) Unwrap() []error { return []error{e.error, ErrRefusedForGood} }

// maxReason bounds a rejection's reason, in bytes.
const maxReason = 512

// Challenge is ChallengeFrom with no source: all such callers share one
// per-source bound.
func (ca *CA) Challenge(ctx context.Context, req *protocol.EnrollRequest) (*protocol.EnrollChallenge, error) {
	return ca.ChallengeFrom(ctx, "", req)
}

// ChallengeFrom checks the EK and AK of an enrollment request and returns a
// credential challenge only the EK's TPM can answer, for the AK's name. source
// names the requester (the HTTP handler passes the remote IP address) for the
// per-source bound. A new challenge for an EK replaces its pending one: EK
// certificates are public, so a replayed one holds at most one slot.
func (ca *CA) ChallengeFrom(ctx context.Context, source string, req *protocol.EnrollRequest) (*protocol.EnrollChallenge, error) {
	ekT, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.EKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %w", ErrBadRequest, err)
	}
	ekPub, err := tpm2.Pub(*ekT)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %w", ErrBadRequest, err)
	}
	ekID, err := protocol.EKID(ekPub)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	akT, err := tpm2.Unmarshal[tpm2.TPMTPublic](req.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_public: %w", ErrBadRequest, err)
	}
	if req.EKAlg != "rsa" && req.EKAlg != "ecc" {
		return nil, fmt.Errorf("%w: ek_alg %q (want rsa or ecc)", ErrBadRequest, req.EKAlg)
	}
	if !ekT.ObjectAttributes.Restricted || !ekT.ObjectAttributes.Decrypt || !ekT.ObjectAttributes.FixedTPM {
		return nil, ca.reject(ctx, ekID, "EK public area is not a restricted, TPM-bound decryption key")
	}

	// 1. EK certificate chain and allowlist.
	info := req.TPM
	if len(req.EKCert) > 0 {
		cert, err := x509.ParseCertificate(req.EKCert)
		if err != nil {
			return nil, fmt.Errorf("%w: ek_cert: %w", ErrBadRequest, err)
		}
		if ca.cfg.ManufacturerRoots == nil {
			return nil, ca.reject(ctx, ekID, "EK certificates are not accepted (no manufacturer roots configured)")
		}
		inter := x509.NewCertPool()
		if ca.cfg.ManufacturerIntermediates != nil {
			inter = ca.cfg.ManufacturerIntermediates.Clone()
		}
		for i, der := range req.EKChain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				return nil, fmt.Errorf("%w: ek_chain[%d]: %w", ErrBadRequest, i, err)
			}
			inter.AddCert(c)
		}
		if err := VerifyEKCert(cert, ca.cfg.ManufacturerRoots, inter, ca.cfg.Now()); err != nil {
			return nil, ca.reject(ctx, ekID, "EK certificate: %v", err)
		}
		// 2. The EK public area the credential is encrypted to must hold
		// the certified key.
		if !protocolKeyEqual(cert.PublicKey, ekPub) {
			return nil, ca.reject(ctx, ekID, "EK public area does not match the EK certificate")
		}
		if d, ok := TPMDetails(cert); ok {
			info = d // the manufacturer's word beats the device's
		}
	} else if ca.cfg.AllowedEKs == nil {
		return nil, ca.reject(ctx, ekID, "TPM has no EK certificate and no EK allowlist is configured")
	}
	if ca.cfg.AllowedEKs != nil && !ca.cfg.AllowedEKs[ekID] {
		return nil, ca.reject(ctx, ekID, "EK is not on the allowlist")
	}
	if info.Manufacturer == "" || info.Model == "" || info.Version == "" {
		return nil, fmt.Errorf("%w: tpm manufacturer, model and version are required", ErrBadRequest)
	}
	if ca.cfg.Refuse != nil {
		if err := ca.cfg.Refuse(ctx, ekID); errors.Is(err, ErrRefused) {
			return nil, ca.refused(ctx, ekID, err)
		} else if err != nil {
			return nil, fmt.Errorf("attestca: can the EK enroll: %w", err)
		}
	}

	// 3. The AK must be a restricted signing key fixed to the TPM.
	if err := checkAK(akT); err != nil {
		return nil, ca.reject(ctx, ekID, "AK: %v", err)
	}
	if _, err := tpm2.Pub(*akT); err != nil {
		return nil, fmt.Errorf("%w: ak_public: %w", ErrBadRequest, err)
	}
	akName, err := tpm2.ObjectName(akT)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_public: %w", ErrBadRequest, err)
	}

	// 4. MakeCredential to the EK for the AK's name.
	key, err := tpm2.ImportEncapsulationKey(ekT)
	if err != nil {
		return nil, fmt.Errorf("%w: ek_public: %w", ErrBadRequest, err)
	}
	secret := make([]byte, 32)
	if _, err := io.ReadFull(ca.cfg.Rand, secret); err != nil {
		return nil, fmt.Errorf("attestca: random: %w", err)
	}
	blob, encSecret, err := tpm2.CreateCredential(ca.cfg.Rand, key, akName.Buffer, secret)
	if err != nil {
		return nil, fmt.Errorf("attestca: MakeCredential: %w", err)
	}
	idb := make([]byte, 16)
	if _, err := io.ReadFull(ca.cfg.Rand, idb); err != nil {
		return nil, fmt.Errorf("attestca: random: %w", err)
	}
	id := hex.EncodeToString(idb)
	now := ca.cfg.Now()
	c := Challenge{ID: id, EKID: ekID, Source: source, Secret: secret, AKPublic: req.AKPublic, TPM: info, Expires: now.Add(ca.cfg.ChallengeTTL)}
	if err := ca.cfg.Challenges.AddChallenge(ctx, c, Bounds{MaxPending: ca.cfg.MaxPending, MaxPendingPerSource: ca.cfg.MaxPendingPerSource}, now); err != nil {
		if errors.Is(err, ErrBusy) {
			return nil, err
		}
		return nil, fmt.Errorf("attestca: store challenge: %w", err)
	}
	if ca.cfg.Audit != nil {
		ca.cfg.Audit(ctx, Event{Kind: "challenge", EKID: ekID})
	}
	return &protocol.EnrollChallenge{ID: id, CredentialBlob: blob, EncryptedSecret: encSecret}, nil
}

func checkAK(p *tpm2.TPMTPublic) error {
	a := p.ObjectAttributes
	switch {
	case p.Type != tpm2.TPMAlgRSA:
		return errors.New("not an RSA key (step-ca verifies RSA AKs only)")
	case !a.Restricted || !a.SignEncrypt || a.Decrypt:
		return errors.New("not a restricted signing key")
	case !a.FixedTPM || !a.FixedParent:
		return errors.New("not fixed to the TPM")
	case !a.SensitiveDataOrigin:
		return errors.New("not generated by the TPM")
	case p.NameAlg != tpm2.TPMAlgSHA256:
		return errors.New("name algorithm is not SHA-256")
	}
	rp, err := p.Parameters.RSADetail()
	if err != nil {
		return err
	}
	if rp.KeyBits < 2048 {
		return fmt.Errorf("RSA key of %d bits; want at least 2048", rp.KeyBits)
	}
	return nil
}

// Activate checks the secret the device's TPM released and issues the AK
// certificate. A challenge can be answered once, right or wrong.
func (ca *CA) Activate(ctx context.Context, req *protocol.ActivateRequest) (*protocol.EnrollResponse, error) {
	p, err := ca.cfg.Challenges.TakeChallenge(ctx, req.ID)
	if err != nil {
		return nil, fmt.Errorf("attestca: take challenge: %w", err)
	}
	if p == nil || ca.cfg.Now().After(p.Expires) {
		return nil, ErrUnknownChallenge
	}
	if subtle.ConstantTimeCompare(p.Secret, req.Secret) != 1 {
		return nil, ca.reject(ctx, p.EKID, "wrong credential secret: the AK is not in the EK's TPM")
	}
	if ca.cfg.Refuse != nil {
		if err := ca.cfg.Refuse(ctx, p.EKID); errors.Is(err, ErrRefused) {
			return nil, ca.refused(ctx, p.EKID, err)
		} else if err != nil {
			return nil, fmt.Errorf("attestca: can the EK enroll: %w", err)
		}
	}
	der, err := ca.issue(p)
	if err != nil {
		return nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	serial := cert.SerialNumber.Text(16)
	ca.cfg.Logger.InfoContext(ctx, "attestation CA issued an AK certificate", "ek", p.EKID, "serial", serial)
	if ca.cfg.Audit != nil {
		ca.cfg.Audit(ctx, Event{Kind: "issued", EKID: p.EKID, Serial: serial})
	}
	resp := &protocol.EnrollResponse{AKCert: der, PermanentIdentifier: p.EKID}
	resp.Chain = append(resp.Chain, ca.cfg.Certificate.Raw)
	for _, c := range ca.cfg.Chain {
		resp.Chain = append(resp.Chain, c.Raw)
	}
	return resp, nil
}

// issue builds the AK certificate: X.509 v3, empty subject, not a CA, EKU
// tcg-kp-AIKCertificate only, critical SAN with the TPM manufacturer, model
// and version (directoryName) and the EK-derived PermanentIdentifier
// (otherName, RFC 4043).
func (ca *CA) issue(p *Challenge) ([]byte, error) {
	san, err := MarshalSAN(p.TPM, p.EKID)
	if err != nil {
		return nil, err
	}
	akT, err := tpm2.Unmarshal[tpm2.TPMTPublic](p.AKPublic)
	if err != nil {
		return nil, fmt.Errorf("attestca: stored AK: %w", err)
	}
	akPub, err := tpm2.Pub(*akT)
	if err != nil {
		return nil, fmt.Errorf("attestca: stored AK: %w", err)
	}
	serial, err := rand.Int(ca.cfg.Rand, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("attestca: serial: %w", err)
	}
	now := ca.cfg.Now()
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(ca.cfg.AKCertValidity),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{protocol.OIDAIKCertificate()},
		BasicConstraintsValid: true,
		IsCA:                  false,
		ExtraExtensions:       []pkix.Extension{{Id: protocol.OIDSubjectAltName(), Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(ca.cfg.Rand, t, ca.cfg.Certificate, akPub, ca.cfg.Signer)
	if err != nil {
		return nil, fmt.Errorf("attestca: sign AK certificate: %w", err)
	}
	return der, nil
}

// MarshalSAN encodes the AK certificate's subject alternative names.
func MarshalSAN(info protocol.TPMInfo, permanentID string) ([]byte, error) {
	dir, err := asn1.Marshal(pkix.RDNSequence{
		{{Type: protocol.OIDTPMManufacturer(), Value: info.Manufacturer}},
		{{Type: protocol.OIDTPMModel(), Value: info.Model}},
		{{Type: protocol.OIDTPMVersion(), Value: info.Version}},
	})
	if err != nil {
		return nil, err
	}
	pid, err := asn1.Marshal(struct {
		IdentifierValue string `asn1:"utf8"`
	}{permanentID})
	if err != nil {
		return nil, err
	}
	other, err := asn1.Marshal(struct {
		TypeID asn1.ObjectIdentifier
		Value  asn1.RawValue
	}{protocol.OIDPermanentIdentifier(), asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 0, IsCompound: true, Bytes: pid}})
	if err != nil {
		return nil, err
	}
	return asn1.Marshal([]asn1.RawValue{
		{FullBytes: append([]byte{0xa0}, other[1:]...)}, // otherName: [0] IMPLICIT SEQUENCE
		{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dir},
	})
}

// TPMDetails extracts the TPM manufacturer, model and version from a
// certificate's SAN directoryName (EK and AK certificate profile).
func TPMDetails(c *x509.Certificate) (protocol.TPMInfo, bool) { return protocol.TPMDetails(c) }

// PermanentIdentifiers returns the RFC 4043 permanent identifiers in a
// certificate's SAN: an AK certificate's or a device certificate's.
func PermanentIdentifiers(c *x509.Certificate) []string { return protocol.PermanentIdentifiers(c) }

// VerifyEKCert checks an EK certificate chains to roots at time now. EK and
// AK certificates carry a critical SAN of TPM-specific names that crypto/x509
// reports as unhandled; it is handled here (as step-ca does), any other
// unhandled critical extension still fails.
func VerifyEKCert(c *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) error {
	return verifyTPMCert(c, roots, intermediates, now)
}

func verifyTPMCert(c *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) error {
	_, err := verifyTPMChain(c, roots, intermediates, now)
	return err
}

// verifyTPMChain is verifyTPMCert returning the chain it verified, leaf first.
func verifyTPMChain(c *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) ([]*x509.Certificate, error) {
	cc := *c
	cc.UnhandledCriticalExtensions = nil
	for _, oid := range c.UnhandledCriticalExtensions {
		if !oid.Equal(protocol.OIDSubjectAltName()) {
			cc.UnhandledCriticalExtensions = append(cc.UnhandledCriticalExtensions, oid)
		}
	}
	chains, err := cc.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		return nil, err
	}
	return chains[0], nil
}

// VerifyAKCert checks an AK certificate chains to the attestation CA roots
// and has the AK profile (EKU tcg-kp-AIKCertificate, not a CA). It returns
// the certificate's permanent identifiers.
func VerifyAKCert(c *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) ([]string, error) {
	ids, _, err := VerifyAKChain(c, roots, intermediates, now)
	return ids, err
}

// VerifyAKChain is VerifyAKCert, also returning the chain it verified (the AK
// certificate first, the root last): every check but the certificates' validity
// periods depends only on the certificates and the roots, so the chain stays verified
// at any time within all of its certificates' validity periods.
func VerifyAKChain(c *x509.Certificate, roots, intermediates *x509.CertPool, now time.Time) ([]string, []*x509.Certificate, error) {
	chain, err := verifyTPMChain(c, roots, intermediates, now)
	if err != nil {
		return nil, nil, err
	}
	if c.IsCA {
		return nil, nil, errors.New("AK certificate is a CA certificate")
	}
	ok := false
	for _, u := range c.UnknownExtKeyUsage {
		ok = ok || u.Equal(protocol.OIDAIKCertificate())
	}
	if !ok {
		return nil, nil, errors.New("AK certificate lacks EKU tcg-kp-AIKCertificate")
	}
	return PermanentIdentifiers(c), chain, nil
}

// NewRoot creates a self-signed ECDSA P-256 CA certificate and key, for an
// attestation CA that is its own root (development, tests, `edgeward demo`).
// Production deployments should keep the root offline and give the CA an
// intermediate.
func NewRoot(name string, validity time.Duration) (crypto.Signer, *x509.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	t := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-5 * time.Minute),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, t, t, key.Public(), key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	return key, cert, err
}
