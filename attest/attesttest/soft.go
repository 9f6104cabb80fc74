package attesttest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/protocol"
	"github.com/google/go-tpm/tpm2"
)

// SoftDevice is a simulated device for fleet-scale tests and benchmarks (thousands of
// devices, where one TPM simulator per device would not fit): a software AK whose
// certificate a test attestation CA issues directly, a software measurement PCR, and
// quotes built and signed in the TPM's own wire formats (TPMS_ATTEST, TPMT_SIGNATURE).
// The server's verifier cannot tell it from a TPM — which is why its certificate must
// only ever come from a test CA. Safe for concurrent use.
type SoftDevice struct {
	// ID is the permanent identifier in the AK certificate (the device ID).
	ID string
	// AKCert is the DER AK certificate.
	AKCert []byte

	key *ecdsa.PrivateKey

	mu    sync.Mutex
	pcr   [32]byte
	log   eventlog.Log
	clock uint64
}

// NewSoftDevice makes a device named name with an AK certificate signed by the test
// attestation CA (caKey, caCert), in the profile the attestation CA issues.
func NewSoftDevice(caKey crypto.Signer, caCert *x509.Certificate, name string) (*SoftDevice, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte("soft-ek:" + name))
	id := "urn:ek:sha256:" + base64.StdEncoding.EncodeToString(sum[:])
	san, err := attestca.MarshalSAN(protocol.TPMInfo{Manufacturer: "id:534F4654", Model: "soft", Version: "id:00010000"}, id)
	if err != nil {
		return nil, err
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	now := time.Now()
	t := &x509.Certificate{
		SerialNumber: serial, NotBefore: now.Add(-5 * time.Minute), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, UnknownExtKeyUsage: []asn1.ObjectIdentifier{protocol.OIDAIKCertificate()},
		BasicConstraintsValid: true, ExtraExtensions: []pkix.Extension{{Id: protocol.OIDSubjectAltName(), Critical: true, Value: san}},
	}
	der, err := x509.CreateCertificate(rand.Reader, t, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("soft AK certificate: %w", err)
	}
	return &SoftDevice{ID: id, AKCert: der, key: key}, nil
}

// Measure extends the measurement PCR (16) with the artifact and logs it.
func (d *SoftDevice) Measure(kind, name, version, sha256hex string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e := eventlog.Event{PCR: eventlog.PCRDevelopment, Kind: kind, Name: name, Version: version, SHA256: sha256hex}
	dig := e.Digest()
	d.pcr = sha256.Sum256(append(d.pcr[:], dig[:]...))
	d.log = append(d.log, e)
}

// Quote returns a quote over PCR 16 with qualifying data nonce, and the log.
func (d *SoftDevice) Quote(nonce []byte) (protocol.Quote, eventlog.Log, error) {
	d.mu.Lock()
	pcr, log := d.pcr, append(eventlog.Log(nil), d.log...)
	d.clock++
	clock := d.clock
	d.mu.Unlock()
	digest := sha256.Sum256(pcr[:])
	sel := make([]byte, 3)
	sel[eventlog.PCRDevelopment/8] |= 1 << (eventlog.PCRDevelopment % 8)
	att := tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            tpm2.TPMSTAttestQuote,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0, 0}},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: clock, Safe: true},
		Attested: tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
			PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: sel}}},
			PCRDigest: tpm2.TPM2BDigest{Buffer: digest[:]},
		}),
	}
	body := tpm2.Marshal(att)
	h := sha256.Sum256(body)
	r, s, err := ecdsa.Sign(rand.Reader, d.key, h[:])
	if err != nil {
		return protocol.Quote{}, nil, err
	}
	sig := tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: tpm2.TPMAlgSHA256, SignatureR: tpm2.TPM2BECCParameter{Buffer: r.Bytes()}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s.Bytes()},
	})}
	return protocol.Quote{Attest: body, Signature: tpm2.Marshal(sig), PCRs: map[int][]byte{eventlog.PCRDevelopment: pcr[:]}}, log, nil
}
