package attesttest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"math/big"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/google/go-tpm/tpm2"
)

// TestSoftQuoteWireFormat: the hand-written TPMS_ATTEST and TPMT_SIGNATURE are
// byte for byte what go-tpm marshals for the same structures.
func TestSoftQuoteWireFormat(t *testing.T) {
	for _, nonce := range [][]byte{nil, []byte("n"), bytes.Repeat([]byte{7}, 32), bytes.Repeat([]byte{9}, 64)} {
		digest := sha256.Sum256(nonce)
		sel := make([]byte, 3)
		sel[eventlog.PCRDevelopment/8] |= 1 << (eventlog.PCRDevelopment % 8)
		want := tpm2.Marshal(tpm2.TPMSAttest{
			Magic:           tpm2.TPMGeneratedValue,
			Type:            tpm2.TPMSTAttestQuote,
			QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0}},
			ExtraData:       tpm2.TPM2BData{Buffer: nonce},
			ClockInfo:       tpm2.TPMSClockInfo{Clock: 0x0102030405060708, Safe: true},
			Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
				PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: sel}}},
				PCRDigest: tpm2.TPM2BDigest{Buffer: digest[:]},
			}),
		})
		if got := quoteBody(nonce, 0x0102030405060708, digest[:]); !bytes.Equal(got, want) {
			t.Errorf("quoteBody(nonce of %d bytes) =\n%x\nwant (tpm2.Marshal)\n%x", len(nonce), got, want)
		}
	}
	r, s := bytes.Repeat([]byte{1}, 31), bytes.Repeat([]byte{2}, 32)
	want := tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s},
	})})
	if got := ecdsaSignature(r, s); !bytes.Equal(got, want) {
		t.Errorf("ecdsaSignature =\n%x\nwant (tpm2.Marshal)\n%x", got, want)
	}
}

// TestSoftQuoteSignature: every quote's signature is an ECDSA P-256 signature by the
// AK of the quote's TPMS_ATTEST, which ecdsa.Verify accepts and refuses for any other
// message, and no two quotes share k (r differs).
func TestSoftQuoteSignature(t *testing.T) {
	key, cert, err := attestca.NewRoot("Test Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	d, err := NewSoftDevice(key, cert, "sig")
	if err != nil {
		t.Fatal(err)
	}
	ak, err := x509.ParseCertificate(d.AKCert)
	if err != nil {
		t.Fatal(err)
	}
	pub := ak.PublicKey.(*ecdsa.PublicKey)
	seen := map[string]bool{}
	for i := range 300 {
		nonce := sha256.Sum256([]byte{byte(i), byte(i >> 8)})
		q, _, err := d.Quote(nonce[:])
		if err != nil {
			t.Fatal(err)
		}
		sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](q.Signature)
		if err != nil {
			t.Fatalf("quote %d: signature: %v", i, err)
		}
		ecc, err := sig.Signature.ECDSA()
		if err != nil {
			t.Fatalf("quote %d: signature: %v", i, err)
		}
		r, s := new(big.Int).SetBytes(ecc.SignatureR.Buffer), new(big.Int).SetBytes(ecc.SignatureS.Buffer)
		h := sha256.Sum256(q.Attest)
		if !ecdsa.Verify(pub, h[:], r, s) {
			t.Fatalf("quote %d: ecdsa.Verify(AK, SHA-256(attest), r, s) = false; want true", i)
		}
		h[0] ^= 1
		if ecdsa.Verify(pub, h[:], r, s) {
			t.Fatalf("quote %d: the signature verifies for another digest", i)
		}
		if seen[r.String()] {
			t.Fatalf("quote %d: r repeats (k reused)", i)
		}
		seen[r.String()] = true
	}
}
