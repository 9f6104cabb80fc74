package verify_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/protocol"
)

// This file checks every signature scheme and hash Verify accepts with a real key of that
// kind, created in the TPM simulator and certified with the AK certificate profile, and
// the quotes Verify must refuse although the key signed them. The agent only ever makes
// RSASSA/SHA-256 quotes (and the attestation CA certifies only RSA AKs), but Verify
// accepts what a TPM can produce, so each path must be proven here.

// restrictedKey is the template of a restricted signing key (what an AK is) with scheme
// alg/hash: RSA 2048 for RSASSA and RSAPSS, NIST P-256, P-384 or P-521 for ECDSA.
func restrictedKey(alg tpm2.TPMAlgID, hash tpm2.TPMIAlgHash, curve tpm2.TPMECCCurve) tpm2.TPMTPublic {
	attrs := tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
		NoDA: true, Restricted: true, SignEncrypt: true,
	}
	if alg == tpm2.TPMAlgECDSA {
		return tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{
					Scheme:  tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: hash}),
				},
				CurveID: curve,
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
		}
	}
	scheme := tpm2.TPMTRSAScheme{
		Scheme:  tpm2.TPMAlgRSASSA,
		Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: hash}),
	}
	if alg == tpm2.TPMAlgRSAPSS {
		scheme = tpm2.TPMTRSAScheme{
			Scheme:  tpm2.TPMAlgRSAPSS,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSAPSS, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: hash}),
		}
	}
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    scheme,
			KeyBits:   2048,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{}),
	}
}

// tpmKey is a key loaded in the simulator.
type tpmKey struct {
	handle tpm2.TPMHandle
	name   tpm2.TPM2BName
	pub    crypto.PublicKey
}

func (k tpmKey) auth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: k.handle, Name: k.name, Auth: tpm2.PasswordAuth(nil)}
}

// createKey creates a primary key from tmpl in the owner hierarchy; it is flushed at the
// end of the test, or earlier by flushKey (the simulator holds 3 objects).
func createKey(t *testing.T, tpm *attest.TPM, tmpl tpm2.TPMTPublic) tpmKey {
	t.Helper()
	var k tpmKey
	err := tpm.Exec(context.Background(), func(tp transport.TPM) error {
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
		if err != nil {
			return err
		}
		k.handle, k.name = rsp.ObjectHandle, rsp.Name
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		k.pub, err = tpm2.Pub(*pub)
		return err
	})
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	t.Cleanup(func() { flushKey(tpm, k) })
	return k
}

func flushKey(tpm *attest.TPM, k tpmKey) {
	tpm.Exec(context.Background(), func(tp transport.TPM) error {
		_, err := tpm2.FlushContext{FlushHandle: k.handle}.Execute(tp)
		return err // already flushed: nothing to do
	})
}

// akCert certifies pub with the AK certificate profile (what attestca issues), signed by
// the root.
func akCert(t *testing.T, signer crypto.Signer, root *x509.Certificate, pub crypto.PublicKey, id string) []byte {
	t.Helper()
	san, err := attestca.MarshalSAN(protocol.TPMInfo{Manufacturer: "id:53494D00", Model: "sim", Version: "id:00000001"}, id)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{protocol.OIDAIKCertificate()},
		BasicConstraintsValid: true,
		ExtraExtensions:       []pkix.Extension{{Id: protocol.OIDSubjectAltName(), Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// quoteWith quotes sel with key k over nonce; pcrs are the SHA-256 values sent with it.
func quoteWith(t *testing.T, tpm *attest.TPM, k tpmKey, nonce []byte, sel tpm2.TPMLPCRSelection, pcrs map[int][]byte) attest.Quote {
	t.Helper()
	var q attest.Quote
	err := tpm.Exec(context.Background(), func(tp transport.TPM) error {
		rsp, err := tpm2.Quote{
			SignHandle:     k.auth(),
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(tp)
		if err != nil {
			return err
		}
		q = attest.Quote{Attest: rsp.Quoted.Bytes(), Signature: tpm2.Marshal(rsp.Signature), PCRs: pcrs}
		return nil
	})
	if err != nil {
		t.Fatalf("Quote: %v", err)
	}
	return q
}

// selection selects pcrs in the bank hash.
func selection(hash tpm2.TPMIAlgHash, pcrs ...int) tpm2.TPMSPCRSelection {
	s := tpm2.TPMSPCRSelection{Hash: hash, PCRSelect: make([]byte, 3)}
	for _, p := range pcrs {
		s.PCRSelect[p/8] |= 1 << (p % 8)
	}
	return s
}

// simLab is the simulator with a measurement log on pcr and a CA root for AK certificates.
type simLab struct {
	tpm    *attest.TPM
	signer crypto.Signer
	root   *x509.Certificate
	log    eventlog.Log
	pcrs   map[int][]byte // SHA-256 values of 0 and pcr
	pcr    int
	policy verify.Policy
}

func newSimLab(t *testing.T, pcr int) *simLab {
	t.Helper()
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := tpm.ResetPCR(ctx, pcr); err != nil {
		t.Fatal(err)
	}
	l := &simLab{tpm: tpm, signer: signer, root: root, pcr: pcr}
	for _, e := range []eventlog.Event{runtimeV1, modelV3} {
		e.PCR = pcr
		if _, err := tpm.Measure(ctx, e); err != nil {
			t.Fatal(err)
		}
		l.log = append(l.log, e)
	}
	if l.pcrs, err = tpm.ReadPCRs(ctx, 0, pcr); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	l.policy = verify.Policy{Roots: roots, MeasurementPCR: pcr, PermanentIdentifier: "device-alg",
		Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)}}
	return l
}

// evidence is a quote by k of PCR 0 and the measurement PCR (SHA-256 bank) over nonce,
// with k's AK certificate and the log.
func (l *simLab) evidence(t *testing.T, k tpmKey, nonce []byte) verify.Evidence {
	t.Helper()
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{selection(tpm2.TPMAlgSHA256, 0, l.pcr)}}
	return verify.Evidence{
		AKCert: akCert(t, l.signer, l.root, k.pub, "device-alg"),
		Quote:  quoteWith(t, l.tpm, k, nonce, sel, l.pcrs),
		Log:    slices.Clone(l.log),
	}
}

func TestVerifyEachSignatureAlgorithm(t *testing.T) {
	l := newSimLab(t, 16)
	nonce := bytes.Repeat([]byte{0x42}, 32)
	now := time.Now()
	keys := []struct {
		name  string
		alg   tpm2.TPMAlgID
		hash  tpm2.TPMIAlgHash
		curve tpm2.TPMECCCurve
	}{
		{"RSASSA SHA-256", tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, 0},
		{"RSASSA SHA-384", tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA384, 0},
		{"RSASSA SHA-512", tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA512, 0},
		{"RSA-PSS SHA-256", tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA256, 0},
		{"RSA-PSS SHA-384", tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA384, 0},
		{"RSA-PSS SHA-512", tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA512, 0},
		{"ECDSA P-256 SHA-256", tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA256, tpm2.TPMECCNistP256},
		{"ECDSA P-384 SHA-384", tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA384, tpm2.TPMECCNistP384},
		{"ECDSA P-256 SHA-512", tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA512, tpm2.TPMECCNistP256},
		// Verify takes any curve crypto/ecdsa knows; a TPM can make P-521 keys too.
		{"ECDSA P-521 SHA-512", tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA512, tpm2.TPMECCNistP521},
	}
	var rsaEv, ecEv verify.Evidence
	for _, kc := range keys {
		k := createKey(t, l.tpm, restrictedKey(kc.alg, kc.hash, kc.curve))
		ev := l.evidence(t, k, nonce)
		// The signature really is of the kind under test.
		sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](ev.Quote.Signature)
		if err != nil || sig.SigAlg != kc.alg {
			t.Fatalf("%s: quote signature %v, %v; want %v", kc.name, sig, err, kc.alg)
		}
		if v := verify.Verify(l.policy, ev, nonce, now); !v.Trusted {
			t.Errorf("%s: Verify(genuine) = %v; want trusted", kc.name, v.Reasons)
		}
		// The signature is checked, not just parsed: one bit changed in the quote.
		bad := ev
		bad.Quote.Attest = slices.Clone(ev.Quote.Attest)
		bad.Quote.Attest[len(bad.Quote.Attest)-1] ^= 1
		if v := verify.Verify(l.policy, bad, nonce, now); !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) {
			t.Errorf("%s: Verify(attest changed) = %v; want signature_invalid", kc.name, v.Reasons)
		}
		// The hash in the signature is the one the digest is computed with.
		if kc.alg != tpm2.TPMAlgECDSA && kc.hash != tpm2.TPMAlgSHA256 {
			forged := ev
			forged.Quote.Signature = withHash(t, ev.Quote.Signature, tpm2.TPMAlgSHA256)
			if v := verify.Verify(l.policy, forged, nonce, now); !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) {
				t.Errorf("%s: Verify(hash relabelled SHA-256) = %v; want signature_invalid", kc.name, v.Reasons)
			}
		}
		switch {
		case kc.alg == tpm2.TPMAlgRSAPSS && kc.hash == tpm2.TPMAlgSHA256:
			rsaEv = ev
			// A PSS signature presented as PKCS #1 v1.5 does not verify.
			relabelled := ev
			relabelled.Quote.Signature = withAlg(t, ev.Quote.Signature, tpm2.TPMAlgRSASSA)
			if v := verify.Verify(l.policy, relabelled, nonce, now); !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) {
				t.Errorf("%s: Verify(relabelled RSASSA) = %v; want signature_invalid", kc.name, v.Reasons)
			}
		case kc.alg == tpm2.TPMAlgECDSA && kc.curve == tpm2.TPMECCNistP256:
			ecEv = ev
		}
		flushKey(l.tpm, k)
	}

	// A signature of one kind with a certificate for a key of the other kind.
	crossed := []verify.Evidence{ecEv, rsaEv}
	crossed[0].AKCert, crossed[1].AKCert = rsaEv.AKCert, ecEv.AKCert
	for i, ev := range crossed {
		v := verify.Verify(l.policy, ev, nonce, now)
		if !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) || !strings.Contains(v.Reasons[0].Detail, "AK certificate has a") {
			t.Errorf("crossed %d: Verify(signature and certificate of different key types) = %v; want signature_invalid naming the key type", i, v.Reasons)
		}
	}
}

// withHash returns a marshalled RSA signature with its hash algorithm replaced.
func withHash(t *testing.T, b []byte, h tpm2.TPMIAlgHash) []byte {
	t.Helper()
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](b)
	if err != nil {
		t.Fatal(err)
	}
	var s *tpm2.TPMSSignatureRSA
	if sig.SigAlg == tpm2.TPMAlgRSAPSS {
		s, err = sig.Signature.RSAPSS()
	} else {
		s, err = sig.Signature.RSASSA()
	}
	if err != nil {
		t.Fatal(err)
	}
	s.Hash = h
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: sig.SigAlg, Signature: tpm2.NewTPMUSignature(sig.SigAlg, s)})
}

// withAlg returns a marshalled RSA signature relabelled as alg.
func withAlg(t *testing.T, b []byte, alg tpm2.TPMAlgID) []byte {
	t.Helper()
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](b)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sig.Signature.RSAPSS()
	if err != nil {
		s, err = sig.Signature.RSASSA()
	}
	if err != nil {
		t.Fatal(err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: alg, Signature: tpm2.NewTPMUSignature(alg, s)})
}

// TestVerifyRefusesSignedButUnverifiable checks quotes and signatures the key really made
// but Verify must refuse: a bank other than SHA-256, a PCR selected twice, data that is
// not a TPM quote (the AK signs any external data that does not start with the TPM's
// magic), a quote of no PCR, and signature schemes it does not accept.
func TestVerifyRefusesSignedButUnverifiable(t *testing.T) {
	l := newSimLab(t, 16)
	ctx := context.Background()
	nonce := bytes.Repeat([]byte{0x43}, 32)
	now := time.Now()
	k := createKey(t, l.tpm, restrictedKey(tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, 0))
	good := l.evidence(t, k, nonce)
	if v := verify.Verify(l.policy, good, nonce, now); !v.Trusted {
		t.Fatalf("Verify(genuine) = %v", v.Reasons)
	}

	quoted := func(sels ...tpm2.TPMSPCRSelection) verify.Evidence {
		ev := good
		ev.Quote = quoteWith(t, l.tpm, k, nonce, tpm2.TPMLPCRSelection{PCRSelections: sels}, l.pcrs)
		return ev
	}
	refused := func(name string, ev verify.Evidence, want verify.Code, detail string) {
		t.Helper()
		v := verify.Verify(l.policy, ev, nonce, now)
		if v.Trusted || !slices.Equal(codes(v), []verify.Code{want}) || !strings.Contains(v.Reasons[0].Detail, detail) {
			t.Errorf("%s: Verify() = %v; want only %s (%q)", name, v.Reasons, want, detail)
		}
	}
	refused("SHA-1 bank", quoted(selection(tpm2.TPMAlgSHA1, 0, 16)), verify.QuoteMalformed, "only SHA-256")
	refused("SHA-256 and SHA-1 banks", quoted(selection(tpm2.TPMAlgSHA256, 0, 16), selection(tpm2.TPMAlgSHA1, 0)), verify.QuoteMalformed, "only SHA-256")
	refused("PCR selected twice", quoted(selection(tpm2.TPMAlgSHA256, 0, 16), selection(tpm2.TPMAlgSHA256, 16)), verify.QuoteMalformed, "twice")
	refused("no PCR", quoted(selection(tpm2.TPMAlgSHA256)), verify.QuoteMalformed, "no PCR")
	// Two selections of distinct PCRs are one quote of both, in either order.
	if v := verify.Verify(l.policy, quoted(selection(tpm2.TPMAlgSHA256, 0), selection(tpm2.TPMAlgSHA256, 16)), nonce, now); !v.Trusted {
		t.Errorf("Verify(PCR 0 and PCR 16 in two selections) = %v; want trusted", v.Reasons)
	}
	if v := verify.Verify(l.policy, quoted(selection(tpm2.TPMAlgSHA256, 16), selection(tpm2.TPMAlgSHA256, 0)), nonce, now); !v.Trusted {
		t.Errorf("Verify(PCR 16, then PCR 0, in two selections) = %v; want trusted (the TPM digests them in selection order)", v.Reasons)
	}
	// TestQuoteSelectionOrder: the TPM digested PCR 16 then PCR 0; a device that sends
	// PCR 16's value as PCR 0's and PCR 0's as PCR 16's must not pass for quoting them.
	// (When the digest was computed in ascending PCR order, this matched it.)
	swapped := quoted(selection(tpm2.TPMAlgSHA256, 16), selection(tpm2.TPMAlgSHA256, 0))
	swapped.Quote.PCRs = map[int][]byte{0: swapped.Quote.PCRs[16], 16: swapped.Quote.PCRs[0]}
	if v := verify.Verify(l.policy, swapped, nonce, now); v.Trusted || !slices.Contains(codes(v), verify.PCRDigestMismatch) {
		t.Errorf("Verify(PCR 0 and 16 values swapped under a [{16},{0}] quote) = %v; want a PCR digest mismatch", v.Reasons)
	}

	// Not generated by the TPM: the genuine quote with its magic changed, hashed by the
	// TPM (which issues a ticket for data without the magic) and signed by the same key.
	fake := slices.Clone(good.Quote.Attest)
	fake[0] ^= 0x01
	var sig []byte
	err := l.tpm.Exec(ctx, func(tp transport.TPM) error {
		h, err := tpm2.Hash{Data: tpm2.TPM2BMaxBuffer{Buffer: fake}, HashAlg: tpm2.TPMAlgSHA256, Hierarchy: tpm2.TPMRHOwner}.Execute(tp)
		if err != nil {
			return err
		}
		rsp, err := tpm2.Sign{KeyHandle: k.auth(), Digest: h.OutHash, InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull}, Validation: h.Validation}.Execute(tp)
		if err != nil {
			return err
		}
		sig = tpm2.Marshal(rsp.Signature)
		return nil
	})
	if err != nil {
		t.Fatalf("signing external data with the AK: %v", err)
	}
	ev := good
	ev.Quote.Attest, ev.Quote.Signature = fake, sig
	refused("signed by the AK, not generated by the TPM", ev, verify.QuoteMalformed, "not generated by a TPM")

	// Signature schemes Verify does not accept, whatever the key.
	ecc := &tpm2.TPMSSignatureECC{Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: []byte{1}}, SignatureS: tpm2.TPM2BECCParameter{Buffer: []byte{1}}}
	for _, sig := range []tpm2.TPMTSignature{
		{SigAlg: tpm2.TPMAlgHMAC, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgHMAC, &tpm2.TPMTHA{HashAlg: tpm2.TPMAlgSHA256, Digest: make([]byte, 32)})},
		{SigAlg: tpm2.TPMAlgECDAA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDAA, ecc)},
	} {
		ev := good
		ev.Quote.Signature = tpm2.Marshal(sig)
		refused(fmt.Sprintf("signature algorithm %v", sig.SigAlg), ev, verify.SignatureInvalid, "not accepted")
	}
	// A hash Verify does not accept (SHA-1), on an otherwise genuine signature.
	ev = good
	ev.Quote.Signature = withHash(t, good.Quote.Signature, tpm2.TPMAlgSHA1)
	refused("SHA-1 signature", ev, verify.SignatureInvalid, "not accepted")
}

// TestVerifyProductionPCR quotes PCRs 0 and 23 (the production measurement PCR) with the
// log on PCR 23: the PCR numbers decoded from the quote's bitmap must be the ones sent.
func TestVerifyProductionPCR(t *testing.T) {
	l := newSimLab(t, 23)
	nonce := bytes.Repeat([]byte{0x44}, 32)
	now := time.Now()
	k := createKey(t, l.tpm, restrictedKey(tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, 0))
	ev := l.evidence(t, k, nonce)
	if v := verify.Verify(l.policy, ev, nonce, now); !v.Trusted {
		t.Fatalf("Verify(PCR 23) = %v; want trusted", v.Reasons)
	}
	// The same values sent as PCR 16: not what was quoted.
	moved := ev
	moved.Quote.PCRs = map[int][]byte{0: ev.Quote.PCRs[0], 16: ev.Quote.PCRs[23]}
	if v := verify.Verify(l.policy, moved, nonce, now); v.Trusted || !slices.Contains(codes(v), verify.PCRDigestMismatch) {
		t.Errorf("Verify(PCR 23 sent as 16) = %v; want pcr_digest_mismatch", v.Reasons)
	}
	// The development policy (PCR 16) finds its PCR unquoted.
	dev := l.policy
	dev.MeasurementPCR = 0
	if v := verify.Verify(dev, ev, nonce, now); v.Trusted || !slices.Contains(codes(v), verify.PCRNotQuoted) {
		t.Errorf("Verify(development policy, PCR 23 quote) = %v; want pcr_not_quoted", v.Reasons)
	}
}

// TestVerifyRefusesWeakRSAAK checks that a quote the TPM really signed with an RSA-1024
// key, under an AK certificate the CA issued for it, is refused as signature_invalid
// naming the key's size: a TPM 2.0 can still make such keys, and a weak AK is a forgeable
// identity. The same quote by an RSA-2048 key of the same TPM is trusted.
func TestVerifyRefusesWeakRSAAK(t *testing.T) {
	l := newSimLab(t, 16)
	nonce := bytes.Repeat([]byte{0x24}, 32)
	now := time.Now()
	for _, c := range []struct {
		bits    tpm2.TPMKeyBits
		trusted bool
	}{{1024, false}, {2048, true}} {
		tmpl := restrictedKey(tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256, 0)
		parms, err := tmpl.Parameters.RSADetail()
		if err != nil {
			t.Fatal(err)
		}
		parms.KeyBits = c.bits
		k := createKey(t, l.tpm, tmpl)
		ev := l.evidence(t, k, nonce)
		v := verify.Verify(l.policy, ev, nonce, now)
		if c.trusted {
			if !v.Trusted {
				t.Errorf("RSA-%d: Verify = %v; want trusted", c.bits, v.Reasons)
			}
		} else if !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) || !strings.Contains(v.Reasons[0].Detail, fmt.Sprintf("RSA-%d key", c.bits)) {
			t.Errorf("RSA-%d: Verify = %v; want signature_invalid naming the key size", c.bits, v.Reasons)
		}
		flushKey(l.tpm, k)
	}
}

// TestVerifyRefusesWeakECDSAAK checks the other half of the weak-AK check: an ECDSA AK
// on a curve below 256 bits is refused as signature_invalid naming the curve. The
// simulator makes no P-224 key, so the quote is one the TPM really made (PCRs, nonce,
// magic) signed again by a software key, under an AK certificate the CA issued for that
// key: whoever holds the key can forge such a quote, which is what the check is for. The
// same forgery by a P-256 software key is trusted, so the curve alone is refused.
func TestVerifyRefusesWeakECDSAAK(t *testing.T) {
	l := newSimLab(t, 16)
	nonce := bytes.Repeat([]byte{0x25}, 32)
	now := time.Now()
	k := createKey(t, l.tpm, restrictedKey(tpm2.TPMAlgECDSA, tpm2.TPMAlgSHA256, tpm2.TPMECCNistP256))
	genuine := l.evidence(t, k, nonce)
	if v := verify.Verify(l.policy, genuine, nonce, now); !v.Trusted {
		t.Fatalf("Verify(genuine P-256 quote) = %v; want trusted", v.Reasons)
	}
	for _, c := range []struct {
		curve   elliptic.Curve
		trusted bool
	}{{elliptic.P224(), false}, {elliptic.P256(), true}} {
		name := c.curve.Params().Name
		key, err := ecdsa.GenerateKey(c.curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256(genuine.Quote.Attest)
		r, s, err := ecdsa.Sign(rand.Reader, key, d[:])
		if err != nil {
			t.Fatal(err)
		}
		ev := genuine
		ev.AKCert = akCert(t, l.signer, l.root, key.Public(), "device-alg")
		ev.Quote.Signature = tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA,
			Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
				Hash:       tpm2.TPMAlgSHA256,
				SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()},
				SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
			})})
		v := verify.Verify(l.policy, ev, nonce, now)
		if c.trusted {
			if !v.Trusted {
				t.Errorf("%s: Verify = %v; want trusted", name, v.Reasons)
			}
		} else if !slices.Equal(codes(v), []verify.Code{verify.SignatureInvalid}) || !strings.Contains(v.Reasons[0].Detail, "ECDSA key on "+name) {
			t.Errorf("%s: Verify = %v; want signature_invalid naming the curve", name, v.Reasons)
		}
	}
}
