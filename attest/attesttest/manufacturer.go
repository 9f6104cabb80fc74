// Package attesttest provides test fixtures for attestation: a TPM
// "manufacturer CA" that provisions EK certificates into a TPM's NV the way
// real TPMs ship, and a launcher for a real swtpm process. It is imported by
// tests only (this package's and the e2e suite's); production code must not
// import it.
package attesttest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/protocol"
)

// Manufacturer is a test TPM manufacturer: a root CA and an intermediate that
// signs EK certificates.
type Manufacturer struct {
	Root         *x509.Certificate
	Intermediate *x509.Certificate
	rootKey      crypto.Signer
	intKey       crypto.Signer
}

// NewManufacturer creates a manufacturer CA named name.
func NewManufacturer(name string) (*Manufacturer, error) {
	rootKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	intKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	rootT := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name + " EK Root CA", Organization: []string{name}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(20 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootT, rootT, rootKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	root, _ := x509.ParseCertificate(rootDER)
	intT := &x509.Certificate{
		SerialNumber:          big.NewInt(2),
		Subject:               pkix.Name{CommonName: name + " EK Intermediate CA", Organization: []string{name}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	intDER, err := x509.CreateCertificate(rand.Reader, intT, root, intKey.Public(), rootKey)
	if err != nil {
		return nil, err
	}
	inter, _ := x509.ParseCertificate(intDER)
	return &Manufacturer{Root: root, Intermediate: inter, rootKey: rootKey, intKey: intKey}, nil
}

// Roots returns a pool holding the root.
func (m *Manufacturer) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Root)
	return p
}

// IssueEKCert issues an EK certificate in the TCG EK credential profile
// shape: empty subject, critical SAN directoryName with the TPM
// manufacturer, model and version, EKU tcg-kp-EKCertificate.
func (m *Manufacturer) IssueEKCert(ek crypto.PublicKey, info attest.Info) ([]byte, error) {
	dir := pkix.RDNSequence{
		{{Type: protocol.OIDTPMManufacturer(), Value: info.Manufacturer}},
		{{Type: protocol.OIDTPMModel(), Value: info.Model}},
		{{Type: protocol.OIDTPMVersion(), Value: info.Version}},
	}
	dirDER, err := asn1.Marshal(dir)
	if err != nil {
		return nil, err
	}
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: dirDER}})
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return nil, err
	}
	t := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{protocol.OIDEKCertificate()},
		ExtraExtensions:       []pkix.Extension{{Id: protocol.OIDSubjectAltName(), Critical: true, Value: san}},
	}
	return x509.CreateCertificate(rand.Reader, t, m.Intermediate, ek, m.intKey)
}

// Provision issues a certificate for the TPM's EK of algorithm alg and writes
// it to the EK certificate NV index with platform authorisation (empty on
// the simulator), with the attributes manufacturers use: written by the
// platform, readable by the owner without a password.
func (m *Manufacturer) Provision(ctx context.Context, t *attest.TPM, alg attest.KeyAlg) (*x509.Certificate, error) {
	ek, err := t.EK(ctx, alg)
	if err != nil {
		return nil, err
	}
	info, err := t.Info(ctx)
	if err != nil {
		return nil, err
	}
	der, err := m.IssueEKCert(ek.Public, info)
	if err != nil {
		return nil, err
	}
	if err := WriteNV(ctx, t, alg.CertIndex(), der); err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// WriteNV defines index (platform hierarchy) and writes data to it, replacing
// an earlier definition.
func WriteNV(ctx context.Context, t *attest.TPM, index tpm2.TPMHandle, data []byte) error {
	return t.Exec(ctx, func(tp transport.TPM) error {
		if rp, err := (tpm2.NVReadPublic{NVIndex: index}).Execute(tp); err == nil {
			if _, err := (tpm2.NVUndefineSpace{
				AuthHandle: tpm2.TPMRHPlatform,
				NVIndex:    tpm2.NamedHandle{Handle: index, Name: rp.NVName},
			}).Execute(tp); err != nil {
				return fmt.Errorf("undefine NV %#x: %w", uint32(index), err)
			}
		}
		def := tpm2.NVDefineSpace{
			AuthHandle: tpm2.TPMRHPlatform,
			PublicInfo: tpm2.New2B(tpm2.TPMSNVPublic{
				NVIndex: index,
				NameAlg: tpm2.TPMAlgSHA256,
				Attributes: tpm2.TPMANV{
					PPWrite:        true,
					PPRead:         true,
					OwnerRead:      true,
					AuthRead:       true,
					NoDA:           true,
					PlatformCreate: true,
					NT:             tpm2.TPMNTOrdinary,
				},
				DataSize: uint16(len(data)),
			}),
		}
		if _, err := def.Execute(tp); err != nil {
			return fmt.Errorf("define NV %#x: %w", uint32(index), err)
		}
		rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tp)
		if err != nil {
			return err
		}
		name := rp.NVName
		for off := 0; off < len(data); off += 512 {
			end := min(off+512, len(data))
			if _, err := (tpm2.NVWrite{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHPlatform, Auth: tpm2.PasswordAuth(nil)},
				NVIndex:    tpm2.NamedHandle{Handle: index, Name: name},
				Data:       tpm2.TPM2BMaxNVBuffer{Buffer: data[off:end]},
				Offset:     uint16(off),
			}).Execute(tp); err != nil {
				return fmt.Errorf("write NV %#x at %d: %w", uint32(index), off, err)
			}
			// The name changes once TPMA_NV_WRITTEN is set.
			rp, err := tpm2.NVReadPublic{NVIndex: index}.Execute(tp)
			if err != nil {
				return err
			}
			name = rp.NVName
		}
		return nil
	})
}
