// Package verify is the server-side quote verifier. Verify is a pure function
// of the evidence a device sent, the nonce the server issued and the policy:
// it does no I/O and reads no clock. Nonces is the small stateful piece that
// makes nonces single-use and short-lived.
//
// Security contract: a Verdict is Trusted only when every check passed —
// the AK certificate chains to the attestation CA and has the AK profile, the
// quote is signed by that certificate's key, carries exactly the issued
// nonce, covers the PCR values sent, the measurement log replays to the
// measurement PCR's value, the artifacts measured last are exactly the
// expected ones, and a boot event log (required by Policy.Boot) replays to the
// quoted boot PCRs and shows a boot the policy allows. Anything not covered is a reason, never a pass.
//
// Quote signatures may be RSASSA, RSA-PSS or ECDSA (NIST P-256, P-384, P-521) with
// SHA-256, SHA-384 or SHA-512 (the agent's AK makes RSASSA/SHA-256; algorithms_test.go
// quotes with a TPM key of each other kind). RSA AKs need at least MinRSABits bits and
// ECDSA AKs a curve of at least 256 bits: a quote by a weaker key is signature_invalid. The PCR values must come from the SHA-256
// bank; the TPM digests them with the signature's hash.
package verify

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/subtle"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
)

// MinRSABits is the smallest RSA AK Verify accepts (NIST SP 800-131A: 2048 bits; a
// TPM 2.0 can still make RSA-1024 keys).
const MinRSABits = 2048

// Code classifies why evidence is not trusted.
type Code string

// Reason codes.
const (
	AKCertInvalid         Code = "ak_cert_invalid"
	IdentityMismatch      Code = "identity_mismatch"
	QuoteMalformed        Code = "quote_malformed"
	SignatureInvalid      Code = "signature_invalid"
	NonceMismatch         Code = "nonce_mismatch"
	PCRDigestMismatch     Code = "pcr_digest_mismatch"
	PCRNotQuoted          Code = "pcr_not_quoted"
	LogMalformed          Code = "log_malformed"
	LogReplayMismatch     Code = "log_replay_mismatch"
	ArtifactMismatch      Code = "artifact_mismatch"
	ArtifactNotMeasured   Code = "artifact_not_measured"
	ArtifactUnexpected    Code = "artifact_unexpected"
	NonceUnknownOrReused  Code = "nonce_unknown_or_reused"
	NonceExpired          Code = "nonce_expired"
	measurementPCRDefault      = eventlog.PCRDevelopment
)

// Reason is one failed check.
type Reason struct {
	Code   Code   `json:"code"`
	Detail string `json:"detail"`
}

func (r Reason) String() string { return string(r.Code) + ": " + r.Detail }

// Evidence is what a device sends at check-in.
type Evidence = wire.Evidence

// Policy is what the verifier expects.
type Policy struct {
	// Roots are the attestation CA roots. Required.
	Roots *x509.CertPool
	// MeasurementPCR is the PCR the log extends; zero means 16 (development);
	// production uses 23.
	MeasurementPCR int
	// PermanentIdentifier, if set, must be in the AK certificate: the
	// device the server thinks it is talking to.
	PermanentIdentifier string
	// Expected are the artifacts the server believes the device runs. The
	// last measured artifact of each (kind, name) must equal one of them (for an
	// encrypted artifact, its plaintext hash too: Artifact.PlainSHA256),
	// every expected one must be measured, and nothing else may be. Nil
	// skips the comparison (enrollment-time checks).
	Expected []eventlog.Artifact
	// Superseded are earlier encryptions of expected artifacts (their content key was
	// rotated: repository.Reencrypt): the same kind, name, version and plaintext hash
	// under another ciphertext. A device that still runs one measures it instead of
	// the expected artifact; that is trusted, and listed in Verdict.Superseded so that
	// the server offers it the current ciphertext.
	Superseded []eventlog.Artifact
	// Boot, if set, requires measured boot: the evidence carries the TCG boot event
	// log, the quote covers the boot PCRs (0–7), the log replays to them, and the boot
	// state it proves satisfies Boot (the entry of the policy for the device's
	// hardware class, reference.Select). Nil: a boot log the device sends is still
	// replayed and must verify, but none is required.
	Boot *reference.Boot
	// Runtime, if set, requires the IMA measurement list: the quote covers PCR 10,
	// the list replays to it, the agent and runtime binaries that ran are trusted
	// builds and, with Runtime.Enforce, nothing else ran that the policy does not
	// allow. Nil: a list the device sends must still replay, and is only reported.
	Runtime *reference.Runtime
	// RuntimeLibraries are the digests of the published runtime targets: an ONNX
	// Runtime library in the IMA list must be one of them (or allowed by Runtime).
	RuntimeLibraries []string
	// AKCache, if set, keeps AK certificates that verified against Roots, so that the
	// same certificate is not parsed and its chain not verified again while it is
	// valid (see AKCache). Nil: every certificate is verified in full.
	AKCache *AKCache
	// RuntimeSlot, if set, is the digest of the runtime target the device's runtime
	// slot holds: with Runtime set, the IMA list must show that library loaded (the
	// ONNX Runtime the device serves with is the slot's signed target).
	RuntimeSlot string
	// AgentBuilds are the digests of the published agent targets (artifact.KindAgent)
	// per binary (artifact.AgentBinary, artifact.RuntimeBinary): the builds of
	// edgeward-agent and edgeward-runtime the fleet trusts, from the same signed TUF
	// metadata as models and runtimes. With Runtime set, every measured file of either
	// name must be one of them (or listed in Runtime.Agent, Runtime.Runtime), and an
	// edgeward-agent must have run.
	AgentBuilds map[string][]string
}

// Verdict is the result of Verify.
type Verdict struct {
	Trusted bool     `json:"trusted"`
	Reasons []Reason `json:"reasons,omitempty"`
	// Measured is, per (kind, name), the artifact loaded last, sorted.
	Measured []eventlog.Artifact `json:"measured,omitempty"`
	// Superseded are the measured artifacts that matched Policy.Superseded instead of
	// the expected ones: encrypted artifacts whose content key has since been rotated.
	Superseded []eventlog.Artifact `json:"superseded,omitempty"`
	// PermanentIdentifiers are from the verified AK certificate.
	PermanentIdentifiers []string `json:"permanent_identifiers,omitempty"`
	// ResetCount and RestartCount are the TPM's boot counters from the
	// quote; a change in ResetCount means a reboot (a new log).
	ResetCount   uint32 `json:"reset_count"`
	RestartCount uint32 `json:"restart_count"`
	// Boot is what the boot event log proved (nil: no boot log, or it did not
	// replay).
	Boot *reference.BootState `json:"boot,omitempty"`
	// Runtime is what the IMA list proved (nil: no list, or it did not replay).
	Runtime *reference.RuntimeState `json:"runtime,omitempty"`

	omitted      map[Code]int // reasons past maxReasons, by code (add)
	omittedOrder []Code
}

func (v *Verdict) add(c Code, format string, args ...any) {
	r := Reason{Code: c, Detail: boundDetail(fmt.Sprintf(format, args...))}
	switch {
	case unauthenticated(c) || c == NonceUnknownOrReused || c == NonceExpired:
		// Always listed, before the summary if there is one: callers act on these codes
		// (a nonce refusal is a 401, not a verdict), and there are few of them.
		if v.omitted != nil {
			v.Reasons = slices.Insert(v.Reasons, len(v.Reasons)-1, r)
		} else {
			v.Reasons = append(v.Reasons, r)
		}
		return
	case len(v.Reasons) < maxReasons-1:
		v.Reasons = append(v.Reasons, r)
		return
	}
	// The last place says how many more there were, by code, in the order first seen;
	// it stays last (Verify sorts the others).
	if v.omitted == nil {
		v.Reasons = append(v.Reasons, Reason{Code: c})
		v.omitted = map[Code]int{}
	}
	if v.omitted[c] == 0 {
		v.omittedOrder = append(v.omittedOrder, c)
	}
	v.omitted[c]++
	last := &v.Reasons[len(v.Reasons)-1]
	last.Code = v.omittedOrder[0]
	var b strings.Builder
	n := 0
	for _, oc := range v.omittedOrder {
		n += v.omitted[oc]
	}
	fmt.Fprintf(&b, "%d more reasons not listed:", n)
	for _, oc := range v.omittedOrder {
		fmt.Fprintf(&b, " %s ×%d", oc, v.omitted[oc])
	}
	last.Detail = boundDetail(b.String())
}

// maxReasons bounds the reasons a verdict lists, its last one saying how many more
// there were: a device whose IMA log listed 20,900 files not allowed got as many
// reasons, a 2.6 MB answer and a 2.6 MB audit record at every check-in, and the audit
// page then served 40 MB per such record (found by an outside audit, 1 Dec).
const maxReasons = 64

// maxDetail bounds a reason's detail, in bytes: details quote what the evidence holds
// (a certificate's parse error repeats the name that failed to parse), and a refusal's
// reasons go into the server's answer and audit log. A 6 MB URI in an AK certificate
// made a 12 MB answer and a 25 MB audit record (found from outside, 1 Dec).
const maxDetail = 512

// boundDetail cuts s to maxDetail bytes, on a rune boundary, marking the cut.
func boundDetail(s string) string {
	if len(s) <= maxDetail {
		return s
	}
	cut := maxDetail
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + fmt.Sprintf("… (%d bytes)", len(s))
}

// Verify checks evidence against the nonce the server issued for it (already
// consumed from Nonces) and the policy, at time now (for certificate
// validity). It stops at the first failure of the AK certificate, signature
// or nonce, since nothing after them can be believed; later checks all run
// and all report.
func Verify(p Policy, ev Evidence, nonce []byte, now time.Time) (v Verdict) {
	defer func() { v.Trusted = len(v.Reasons) == 0 }()
	pcr := p.MeasurementPCR
	if pcr == 0 {
		pcr = measurementPCRDefault
	}

	// 1. The AK certificate: verified in full, or the same bytes already verified
	// against the same roots and still within their validity (Policy.AKCache).
	if p.Roots == nil {
		v.add(AKCertInvalid, "no attestation CA roots configured")
		return v
	}
	var akPub crypto.PublicKey
	var ids []string
	var key [32]byte
	if p.AKCache != nil {
		key = akKey(ev)
		if e := p.AKCache.lookup(key, p.Roots, now); e != nil {
			akPub, ids = e.pub, slices.Clone(e.ids)
		}
	}
	if akPub == nil {
		akCert, err := x509.ParseCertificate(ev.AKCert)
		if err != nil {
			v.add(AKCertInvalid, "parse: %v", err)
			return v
		}
		inter := x509.NewCertPool()
		for i, der := range ev.AKChain {
			c, err := x509.ParseCertificate(der)
			if err != nil {
				v.add(AKCertInvalid, "chain[%d]: %v", i, err)
				return v
			}
			inter.AddCert(c)
		}
		var chain []*x509.Certificate
		ids, chain, err = attestca.VerifyAKChain(akCert, p.Roots, inter, now)
		if err != nil {
			v.add(AKCertInvalid, "%v", err)
			return v
		}
		akPub = akCert.PublicKey
		p.AKCache.add(key, p.Roots, akPub, ids, chain)
	}
	v.PermanentIdentifiers = ids
	if p.PermanentIdentifier != "" && !slices.Contains(ids, p.PermanentIdentifier) {
		v.add(IdentityMismatch, "AK certificate is for %q, not %q", ids, p.PermanentIdentifier)
		return v
	}

	// 2. The quote's signature by the certified AK.
	sigHash, err := checkSignature(akPub, ev.Quote.Attest, ev.Quote.Signature)
	if err != nil {
		v.add(SignatureInvalid, "%v", err)
		return v
	}
	att, err := parseQuote(ev.Quote.Attest)
	if err != nil {
		v.add(QuoteMalformed, "%v", err)
		return v
	}
	if att.magic != tpm2.TPMGeneratedValue {
		v.add(QuoteMalformed, "not generated by a TPM (magic %#x)", uint32(att.magic))
		return v
	}
	v.ResetCount, v.RestartCount = att.resetCount, att.restartCount

	// 3. Freshness: exactly the issued nonce.
	if len(nonce) == 0 || subtle.ConstantTimeCompare(att.extraData, nonce) != 1 {
		v.add(NonceMismatch, "quote is not over the issued nonce")
		return v
	}

	// 4. The PCR values sent are the ones quoted.
	selected, err := selectedPCRs(att.pcrSelect)
	if err != nil {
		v.add(QuoteMalformed, "%v", err)
		return v
	}
	sent := make([]int, 0, len(ev.Quote.PCRs))
	for k := range ev.Quote.PCRs {
		sent = append(sent, k)
	}
	sort.Ints(sent)
	pcrsQuoted := false
	if sortedSel := slices.Sorted(slices.Values(selected)); !slices.Equal(sent, sortedSel) {
		v.add(PCRDigestMismatch, "PCRs sent %v, quoted %v", sent, sortedSel)
	} else {
		// The TPM digests the selected PCRs with the signing scheme's hash (TPM 2.0
		// part 3, TPM2_Quote), not with the bank's, in the order of the selection:
		// selection by selection, ascending within each. Hashed in any other order, a
		// device could quote [{16}, {7}] and send PCR 16's value as PCR 7's and PCR 7's
		// as PCR 16's (TestQuoteSelectionOrder).
		h := sigHash.New()
		for _, i := range selected {
			h.Write(ev.Quote.PCRs[i])
		}
		if !bytes.Equal(h.Sum(nil), att.pcrDigest) {
			v.add(PCRDigestMismatch, "PCR values do not match the quoted digest")
		} else {
			pcrsQuoted = true
		}
	}

	// 4b. Measured boot: the boot log replays to the quoted boot PCRs and satisfies
	// the boot policy.
	verifyBoot(&v, p, ev, selected, pcrsQuoted)
	// 4c. Runtime integrity: the IMA list replays to the quoted PCR 10 and shows only
	// trusted code.
	verifyIMA(&v, p, ev, selected, pcrsQuoted)

	// 5. The log replays to the measurement PCR.
	if !slices.Contains(selected, pcr) {
		v.add(PCRNotQuoted, "measurement PCR %d is not in the quote", pcr)
	}
	if err := ev.Log.Validate(); err != nil {
		v.add(LogMalformed, "%v", err)
	} else {
		for i, e := range ev.Log {
			if e.PCR != pcr {
				v.add(LogMalformed, "event %d extends PCR %d, not the measurement PCR %d", i, e.PCR, pcr)
			}
		}
		replay := ev.Log.Replay()[pcr]
		if got, quoted := ev.Quote.PCRs[pcr]; !quoted {
			v.add(LogReplayMismatch, "log replays PCR %d to %x; the quote does not cover PCR %d (the device measures into another PCR? edgeward server --measurement-pcr, the agent's --pcr)", pcr, replay, pcr)
		} else if !bytes.Equal(got, replay[:]) {
			v.add(LogReplayMismatch, "log replays PCR %d to %x, TPM has %x", pcr, replay, got)
		}
		latest := ev.Log.Latest()
		for _, a := range latest {
			v.Measured = append(v.Measured, a)
		}
		slices.SortFunc(v.Measured, func(a, b eventlog.Artifact) int {
			if c := cmpStr(a.Kind, b.Kind); c != 0 {
				return c
			}
			return cmpStr(a.Name, b.Name)
		})
		// 6. What runs is what the server expects.
		if p.Expected != nil {
			want := map[[2]string]eventlog.Artifact{}
			for _, a := range p.Expected {
				want[[2]string{a.Kind, a.Name}] = a
			}
			for _, a := range v.Measured {
				w, ok := want[[2]string{a.Kind, a.Name}]
				switch {
				case !ok:
					v.add(ArtifactUnexpected, "%s %s@%s is not expected", a.Kind, a.Name, a.Version)
				case a.PlainSHA256 != "" && a != w && w.PlainSHA256 == a.PlainSHA256 && w.Version == a.Version && slices.Contains(p.Superseded, a):
					v.Superseded = append(v.Superseded, a)
				case w.Version != a.Version || w.SHA256 != a.SHA256:
					v.add(ArtifactMismatch, "%s %s: runs %s (%s), expected %s (%s)", a.Kind, a.Name, a.Version, short(a.SHA256), w.Version, short(w.SHA256))
				case w.PlainSHA256 != a.PlainSHA256:
					// An encrypted artifact: the ciphertext is the expected one, so the
					// plaintext the runtime decrypted must be what its signed metadata says.
					v.add(ArtifactMismatch, "%s %s %s: decrypted plaintext %s, expected %s", a.Kind, a.Name, a.Version, orNone(short(a.PlainSHA256)), orNone(short(w.PlainSHA256)))
				}
			}
			for k, w := range want {
				if _, ok := latest[k]; !ok {
					v.add(ArtifactNotMeasured, "%s %s@%s was not measured this boot", w.Kind, w.Name, w.Version)
				}
			}
		}
	}
	v.sortReasons()
	return v
}

// sortReasons sorts the reasons by code, the summary of those past maxReasons staying
// last (add).
func (v *Verdict) sortReasons() {
	listed := v.Reasons
	if v.omitted != nil {
		listed = listed[:len(listed)-1]
	}
	slices.SortStableFunc(listed, func(a, b Reason) int { return cmpStr(string(a.Code), string(b.Code)) })
}

func cmpStr(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func short(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

// selectedPCRs lists the PCRs a quote selects in the order the TPM digests them:
// selection by selection, ascending within each (TPM 2.0 part 1, PCR selection; part 3,
// TPM2_Quote). A PCR selected twice is refused: no honest quoter asks for that.
func selectedPCRs(sel tpm2.TPMLPCRSelection) ([]int, error) {
	var out []int
	for _, s := range sel.PCRSelections {
		if s.Hash != tpm2.TPMAlgSHA256 {
			return nil, fmt.Errorf("quote selects bank %v; only SHA-256 is verified", s.Hash)
		}
		for i, b := range s.PCRSelect {
			for bit := 0; bit < 8; bit++ {
				if b&(1<<bit) != 0 {
					out = append(out, i*8+bit)
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("quote selects no PCR")
	}
	if len(sel.PCRSelections) > 1 {
		if sorted := slices.Sorted(slices.Values(out)); len(slices.Compact(sorted)) != len(out) {
			return nil, fmt.Errorf("quote selects a PCR twice")
		}
	}
	return out, nil
}

// checkSignature verifies a TPMT_SIGNATURE over data with pub and returns the
// signature's hash.
func checkSignature(pub crypto.PublicKey, data, sigBytes []byte) (crypto.Hash, error) {
	sig, err := parseSignature(sigBytes)
	if err != nil {
		return 0, err
	}
	var h crypto.Hash
	switch sig.hash {
	case tpm2.TPMAlgSHA256:
		h = crypto.SHA256
	case tpm2.TPMAlgSHA384:
		h = crypto.SHA384
	case tpm2.TPMAlgSHA512:
		h = crypto.SHA512
	default:
		return 0, fmt.Errorf("signature hash %v not accepted", sig.hash)
	}
	dh := h.New()
	dh.Write(data)
	d := dh.Sum(nil)
	switch sig.alg {
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		rpub, ok := pub.(*rsa.PublicKey)
		if !ok {
			return 0, fmt.Errorf("RSA signature but the AK certificate has a %T", pub)
		}
		if n := rpub.N.BitLen(); n < MinRSABits {
			return 0, fmt.Errorf("the AK is an RSA-%d key; at least RSA-%d is required", n, MinRSABits)
		}
		if sig.alg == tpm2.TPMAlgRSASSA {
			err = rsa.VerifyPKCS1v15(rpub, h, d, sig.sig)
		} else {
			err = rsa.VerifyPSS(rpub, h, d, sig.sig, nil)
		}
		if err != nil {
			return 0, fmt.Errorf("signature does not verify with the AK certificate's key: %w", err)
		}
		return h, nil
	default: // ECDSA: parseSignature accepts nothing else
		epub, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return 0, fmt.Errorf("ECDSA signature but the AK certificate has a %T", pub)
		}
		if n := epub.Curve.Params().BitSize; n < 256 {
			return 0, fmt.Errorf("the AK is an ECDSA key on %s; P-256 or larger is required", epub.Curve.Params().Name)
		}
		r, ss := new(big.Int).SetBytes(sig.r), new(big.Int).SetBytes(sig.s)
		if !ecdsa.Verify(epub, d, r, ss) {
			return 0, fmt.Errorf("signature does not verify with the AK certificate's key")
		}
		return h, nil
	}
}

// NonceConsumer consumes a device's outstanding nonce (Nonces in memory, or a store
// shared by server replicas). Consume fails with ErrNonceExpired for a nonce issued
// more than its TTL ago, with another error for one unknown or already used; either
// way the nonce cannot be used again.
type NonceConsumer interface {
	Consume(device string, nonce []byte) error
}

// Check is Verify plus nonce freshness: the quote's qualifying data must be
// qualifying, and nonce must be outstanding for device in n, which Check then
// consumes. qualifying is what the device quoted for this nonce: the nonce itself
// (nil qualifying) or a digest binding it to more (the device API quotes
// wire.QuoteData(nonce, request)).
//
// The AK certificate, the identity, the signature and the qualifying data are checked
// before the nonce is consumed, so forged or altered evidence cannot burn a device's
// nonce; a replayed genuine quote fails with NonceUnknownOrReused.
func Check(n NonceConsumer, device string, nonce, qualifying []byte, p Policy, ev Evidence, now time.Time) Verdict {
	if qualifying == nil {
		qualifying = nonce
	}
	v := Verify(p, ev, qualifying, now)
	if len(v.Reasons) > 0 && unauthenticated(v.Reasons[0].Code) {
		return v
	}
	switch err := n.Consume(device, nonce); {
	case errors.Is(err, ErrNonceExpired):
		v.add(NonceExpired, "nonce was issued more than the TTL ago")
	case err != nil:
		v.add(NonceUnknownOrReused, "nonce was not issued to %q or was already used", device)
	}
	v.Trusted = len(v.Reasons) == 0
	return v
}

// unauthenticated reports whether Verify stopped at c: the evidence is not the
// device's own (or not over this nonce), so it must not consume the device's nonce.
func unauthenticated(c Code) bool {
	switch c {
	case AKCertInvalid, SignatureInvalid, IdentityMismatch, QuoteMalformed, NonceMismatch:
		return true
	}
	return false
}
