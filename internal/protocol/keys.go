package protocol

import (
	"crypto/ecdh"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// KeyCertification is a TPM2_Certify of a key by the device's AK: proof, signed by the
// AK, that a key with this public area lives in the same TPM as the AK. For an ACME
// device-attest-01 statement these are its pubArea, certInfo and sig fields.
type KeyCertification struct {
	// Public is the marshalled TPMT_PUBLIC of the certified key.
	Public []byte `json:"public"`
	// CertifyInfo is the marshalled TPMS_ATTEST (type TPM_ST_ATTEST_CERTIFY)
	// whose extraData is the qualifying data given to TPM2_Certify.
	CertifyInfo []byte `json:"certify_info"`
	// Signature is the AK's marshalled TPMT_SIGNATURE over CertifyInfo.
	Signature []byte `json:"signature"`
}

// ECDHPublic returns the NIST P-256 public key of an ECC public area, as the device's
// TPM and the server that wraps keys to it must both read it.
func ECDHPublic(pub tpm2.TPMTPublic) (*ecdh.PublicKey, error) {
	if pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("protocol: public area of type %#x, not ECC", uint16(pub.Type))
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, fmt.Errorf("protocol: ECC parameters: %w", err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 {
		return nil, fmt.Errorf("protocol: curve %#x, not NIST P-256", uint16(parms.CurveID))
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, fmt.Errorf("protocol: ECC point: %w", err)
	}
	if len(pt.X.Buffer) > 32 || len(pt.Y.Buffer) > 32 {
		return nil, errors.New("protocol: ECC point coordinates longer than 32 bytes")
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[1+32-len(pt.X.Buffer):33], pt.X.Buffer)
	copy(raw[33+32-len(pt.Y.Buffer):], pt.Y.Buffer)
	k, err := ecdh.P256().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("protocol: ECC point: %w", err)
	}
	return k, nil
}
