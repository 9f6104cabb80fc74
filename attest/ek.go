package attest

import (
	"context"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// NV indices where TPM manufacturers store EK certificates (TCG EK Credential
// Profile 2.0, section 2.2.1.4, low range).
const (
	EKCertIndexRSA tpm2.TPMHandle = 0x01c00002
	EKCertIndexECC tpm2.TPMHandle = 0x01c0000a
)

// KeyAlg selects the EK algorithm.
type KeyAlg int

// EK algorithms. The zero value is RSA-2048, the one every TPM ships.
const (
	RSA KeyAlg = iota
	ECC
)

func (a KeyAlg) String() string {
	if a == ECC {
		return "ecc"
	}
	return "rsa"
}

func (a KeyAlg) template() tpm2.TPMTPublic {
	if a == ECC {
		return tpm2.ECCEKTemplate
	}
	return tpm2.RSAEKTemplate
}

// CertIndex is the NV index of the EK certificate for the algorithm.
func (a KeyAlg) CertIndex() tpm2.TPMHandle {
	if a == ECC {
		return EKCertIndexECC
	}
	return EKCertIndexRSA
}

// ErrNoEKCert is returned when the TPM has no EK certificate at the index.
var ErrNoEKCert = errors.New("attest: no EK certificate in NV")

// maxNVChunk is below every TPM's MAX_NV_BUFFER_SIZE (1024 on most parts).
const maxNVChunk = 512

// EK is an endorsement key: its public part, as the TPM derives it from the
// endorsement seed with the TCG default template, and its certificate when the
// manufacturer provisioned one.
type EK struct {
	Alg    KeyAlg
	Public crypto.PublicKey
	// TPMPublic is the TPMT_PUBLIC, which the attestation CA needs to
	// encrypt a credential to the EK (MakeCredential).
	TPMPublic tpm2.TPMTPublic
	// Certificate is nil when the TPM has no EK certificate.
	Certificate *x509.Certificate
	// CertificateDER is the certificate as stored (without NV padding).
	CertificateDER []byte
}

// EK returns the endorsement key of the given algorithm and its certificate,
// read from the NV index where manufacturers store it. A missing certificate
// is not an error (Certificate is nil); a certificate that does not match the
// EK the TPM derives is.
func (t *TPM) EK(ctx context.Context, alg KeyAlg) (*EK, error) {
	var o *object
	if err := t.withEK(ctx, alg, nil, func(_ transport.TPM, ek *object) error { o = ek; return nil }); err != nil {
		return nil, err
	}
	pub, err := tpm2.Pub(o.public)
	if err != nil {
		return nil, fmt.Errorf("attest: EK public: %w", err)
	}
	ek := &EK{Alg: alg, Public: pub, TPMPublic: o.public}
	der, err := t.ReadNV(ctx, alg.CertIndex())
	if errors.Is(err, ErrNoEKCert) {
		return ek, nil
	}
	if err != nil {
		return nil, err
	}
	der, err = trimDER(der)
	if err != nil {
		return nil, fmt.Errorf("attest: EK certificate at NV %#x: %w", uint32(alg.CertIndex()), err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("attest: EK certificate at NV %#x: %w", uint32(alg.CertIndex()), err)
	}
	if !PublicKeyEqual(cert.PublicKey, pub) {
		return nil, fmt.Errorf("attest: EK certificate at NV %#x is for another key", uint32(alg.CertIndex()))
	}
	ek.Certificate, ek.CertificateDER = cert, der
	return ek, nil
}

// PublicKeyEqual reports whether two public keys are the same key.
func PublicKeyEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// trimDER cuts the DER certificate to its encoded length: NV indices are
// often larger than the certificate and padded.
func trimDER(b []byte) ([]byte, error) {
	var raw asn1.RawValue
	if _, err := asn1.Unmarshal(b, &raw); err != nil {
		return nil, err
	}
	return raw.FullBytes, nil
}

// ReadNV reads a whole NV index with owner authorisation (empty password),
// or else the index's own empty authorisation, as EK certificate indices
// allow. It returns ErrNoEKCert when the index is
// not defined.
func (t *TPM) ReadNV(ctx context.Context, index tpm2.TPMHandle) ([]byte, error) {
	var out []byte
	err := t.do(ctx, func(tp transport.TPM) error {
		rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tp)
		if err != nil {
			if errors.Is(err, tpm2.TPMRCHandle) {
				return ErrNoEKCert
			}
			return fmt.Errorf("attest: NV_ReadPublic %#x: %w", uint32(index), err)
		}
		pub, err := rp.NVPublic.Contents()
		if err != nil {
			return fmt.Errorf("attest: NV_ReadPublic %#x: %w", uint32(index), err)
		}
		size := int(pub.DataSize)
		for off := 0; off < size; off += maxNVChunk {
			n := min(maxNVChunk, size-off)
			read := tpm2.NVRead{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
				NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
				Size:       uint16(n),
				Offset:     uint16(off),
			}
			r, err := read.Execute(tp)
			if err != nil && pub.Attributes.AuthRead {
				// The owner has a password: EK certificate indices are
				// also readable with their own (empty) authorisation.
				read.AuthHandle = tpm2.AuthHandle{Handle: index, Name: rp.NVName, Auth: tpm2.PasswordAuth(nil)}
				r, err = read.Execute(tp)
			}
			if err != nil {
				return fmt.Errorf("attest: NV_Read %#x at %d: %w", uint32(index), off, err)
			}
			out = append(out, r.Data.Buffer...)
		}
		return nil
	})
	return out, err
}

// withEK creates the EK as a transient primary key under the endorsement
// hierarchy with the TCG default template, loads also (objects f uses with
// it), runs f, and flushes the EK: TPMs have few transient object slots (the
// reference simulator has three), so only the AK and device keys stay
// loaded.
func (t *TPM) withEK(ctx context.Context, alg KeyAlg, also []*object, f func(tp transport.TPM, ek *object) error) error {
	return t.do(ctx, func(tp transport.TPM) error {
		for i, o := range also {
			if err := t.loadLocked(tp, o, also[:i]...); err != nil {
				return err
			}
		}
		ek := &object{what: alg.String() + " EK", hierarchy: tpm2.TPMRHEndorsement, template: alg.template()}
		if err := t.loadLocked(tp, ek, also...); err != nil {
			return err
		}
		defer t.unloadLocked(tp, ek)
		return f(tp, ek)
	})
}
