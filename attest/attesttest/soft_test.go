package attesttest

import (
	"bytes"
	"crypto/sha256"
	"testing"

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
