package verify

import (
	"bytes"
	"crypto/rand"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/google/go-tpm/tpm2"
)

// sameAsGoTPM checks that what parseSignature and parseQuote accept, tpm2.Unmarshal
// reads with the same values: the hand-written readers are never more permissive.
func sameAsGoTPM(t *testing.T, sigBytes, attBytes []byte) {
	t.Helper()
	if sig, err := parseSignature(sigBytes); err == nil {
		ref, err := tpm2.Unmarshal[tpm2.TPMTSignature](sigBytes)
		if err != nil {
			t.Fatalf("parseSignature(%x) accepted what tpm2.Unmarshal refuses: %v", sigBytes, err)
		}
		if ref.SigAlg != sig.alg {
			t.Fatalf("parseSignature(%x): algorithm %v; go-tpm reads %v", sigBytes, sig.alg, ref.SigAlg)
		}
		switch sig.alg {
		case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
			rs, err := ref.Signature.RSASSA()
			if sig.alg == tpm2.TPMAlgRSAPSS {
				rs, err = ref.Signature.RSAPSS()
			}
			if err != nil || rs.Hash != sig.hash || !bytes.Equal(rs.Sig.Buffer, sig.sig) {
				t.Fatalf("parseSignature(%x) = %+v; go-tpm reads %+v (%v)", sigBytes, sig, rs, err)
			}
		case tpm2.TPMAlgECDSA:
			es, err := ref.Signature.ECDSA()
			if err != nil || es.Hash != sig.hash || !bytes.Equal(es.SignatureR.Buffer, sig.r) || !bytes.Equal(es.SignatureS.Buffer, sig.s) {
				t.Fatalf("parseSignature(%x) = %+v; go-tpm reads %+v (%v)", sigBytes, sig, es, err)
			}
		default:
			t.Fatalf("parseSignature(%x) accepted algorithm %v", sigBytes, sig.alg)
		}
	}
	if q, err := parseQuote(attBytes); err == nil {
		ref, err := tpm2.Unmarshal[tpm2.TPMSAttest](attBytes)
		if err != nil {
			t.Fatalf("parseQuote(%x) accepted what tpm2.Unmarshal refuses: %v", attBytes, err)
		}
		qi, err := ref.Attested.Quote()
		if err != nil {
			t.Fatalf("parseQuote(%x) accepted what go-tpm reads as no quote: %v", attBytes, err)
		}
		if ref.Magic != q.magic || ref.Type != q.typ || !bytes.Equal(ref.ExtraData.Buffer, q.extraData) ||
			ref.ClockInfo.ResetCount != q.resetCount || ref.ClockInfo.RestartCount != q.restartCount ||
			!bytes.Equal(qi.PCRDigest.Buffer, q.pcrDigest) || len(qi.PCRSelect.PCRSelections) != len(q.pcrSelect.PCRSelections) {
			t.Fatalf("parseQuote(%x) = %+v; go-tpm reads %+v, %+v", attBytes, q, ref, qi)
		}
		for i, s := range qi.PCRSelect.PCRSelections {
			h := q.pcrSelect.PCRSelections[i]
			if s.Hash != h.Hash || !bytes.Equal(s.PCRSelect, h.PCRSelect) {
				t.Fatalf("parseQuote(%x): selection %d = %+v; go-tpm reads %+v", attBytes, i, h, s)
			}
		}
	}
}

// genuine returns a soft TPM's signature and quote, and RSA signatures in the TPM's
// format.
func genuine(t testing.TB) (sigs, atts [][]byte) {
	key, cert, err := attestca.NewRoot("wire test", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d, err := attesttest.NewSoftDevice(key, cert, "wire")
	if err != nil {
		t.Fatal(err)
	}
	for _, nonce := range [][]byte{nil, []byte("n"), bytes.Repeat([]byte{5}, 32)} {
		q, _, err := d.Quote(nonce)
		if err != nil {
			t.Fatal(err)
		}
		sigs, atts = append(sigs, q.Signature), append(atts, q.Attest)
	}
	for _, alg := range []tpm2.TPMAlgID{tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS} {
		buf := make([]byte, 256)
		rand.Read(buf)
		sigs = append(sigs, tpm2.Marshal(tpm2.TPMTSignature{SigAlg: alg, Signature: tpm2.NewTPMUSignature(alg, &tpm2.TPMSSignatureRSA{Hash: tpm2.TPMAlgSHA384, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: buf}})}))
	}
	// A quote over two banks.
	atts = append(atts, tpm2.Marshal(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0x0b, 1, 2}}, ExtraData: tpm2.TPM2BData{Buffer: []byte("nonce")},
		ClockInfo: tpm2.TPMSClockInfo{Clock: 7, ResetCount: 3, RestartCount: 4, Safe: true}, FirmwareVersion: 9,
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 1}}, {Hash: tpm2.TPMAlgSHA1, PCRSelect: []byte{0, 0, 0, 8}}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{3}, 48)},
		})}))
	return sigs, atts
}

// TestTPMWire: genuine structures read as go-tpm reads them; truncated, extended and
// non-quote ones are refused.
func TestTPMWire(t *testing.T) {
	sigs, atts := genuine(t)
	for _, b := range sigs {
		if _, err := parseSignature(b); err != nil {
			t.Errorf("parseSignature(genuine %x) = %v", b, err)
		}
		for n := range len(b) {
			if _, err := parseSignature(b[:n]); err == nil {
				t.Errorf("parseSignature(first %d of %d bytes) accepted", n, len(b))
			}
		}
		if _, err := parseSignature(append(slices.Clone(b), 0)); err == nil {
			t.Errorf("parseSignature(with a trailing byte) accepted")
		}
		sameAsGoTPM(t, b, nil)
	}
	for _, b := range atts {
		if _, err := parseQuote(b); err != nil {
			t.Errorf("parseQuote(genuine %x) = %v", b, err)
		}
		for n := range len(b) {
			if _, err := parseQuote(b[:n]); err == nil {
				t.Errorf("parseQuote(first %d of %d bytes) accepted", n, len(b))
			}
		}
		if _, err := parseQuote(append(slices.Clone(b), 0)); err == nil {
			t.Errorf("parseQuote(with a trailing byte) accepted")
		}
		sameAsGoTPM(t, nil, b)
	}
	certify := slices.Clone(atts[0])
	certify[5] = 0x17 // TPM_ST_ATTEST_CERTIFY
	if _, err := parseQuote(certify); err == nil {
		t.Errorf("parseQuote(a certify attestation) accepted")
	}
	hmac := slices.Clone(sigs[0])
	hmac[1] = byte(tpm2.TPMAlgHMAC)
	if _, err := parseSignature(hmac); err == nil {
		t.Errorf("parseSignature(HMAC) accepted")
	}
}

// FuzzTPMWire: whatever the readers accept, go-tpm reads the same way.
func FuzzTPMWire(f *testing.F) {
	sigs, atts := genuine(f)
	for i := range max(len(sigs), len(atts)) {
		f.Add(sigs[i%len(sigs)], atts[i%len(atts)])
	}
	f.Fuzz(func(t *testing.T, sig, att []byte) { sameAsGoTPM(t, sig, att) })
}

// TestTPMWireSelectionCap: a quote may select PCRs of at most maxPCRSelections banks
// (HASH_COUNT, what a TPM can have): a well-formed attestation with that many is read,
// one with a selection more is refused before its selections are read, however
// well-formed they are.
func TestTPMWireSelectionCap(t *testing.T) {
	quote := func(n int) []byte {
		sels := make([]tpm2.TPMSPCRSelection, n)
		for i := range sels {
			sels[i] = tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0, 0, 1}}
		}
		return tpm2.Marshal(tpm2.TPMSAttest{Magic: tpm2.TPMGeneratedValue, Type: tpm2.TPMSTAttestQuote,
			ExtraData: tpm2.TPM2BData{Buffer: []byte("nonce")},
			Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
				PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: sels},
				PCRDigest: tpm2.TPM2BDigest{Buffer: bytes.Repeat([]byte{3}, 32)},
			})})
	}
	at := quote(maxPCRSelections)
	if q, err := parseQuote(at); err != nil || len(q.pcrSelect.PCRSelections) != maxPCRSelections {
		t.Errorf("parseQuote(%d selections) = %d selections, %v; want all read", maxPCRSelections, len(q.pcrSelect.PCRSelections), err)
	}
	sameAsGoTPM(t, nil, at)
	if _, err := parseQuote(quote(maxPCRSelections + 1)); err == nil || !strings.Contains(err.Error(), "PCR selections") {
		t.Errorf("parseQuote(%d selections) = %v; want refused for its count", maxPCRSelections+1, err)
	}
}
