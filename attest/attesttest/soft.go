package attesttest

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
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
	d   *big.Int // key's scalar, for sign

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
	raw, err := key.Bytes()
	if err != nil {
		return nil, err
	}
	return &SoftDevice{ID: id, AKCert: der, key: key, d: new(big.Int).SetBytes(raw)}, nil
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
	body := quoteBody(nonce, clock, digest[:])
	h := sha256.Sum256(body)
	r, s, err := d.sign(h[:])
	if err != nil {
		return protocol.Quote{}, nil, err
	}
	sig := ecdsaSignature(r.Bytes(), s.Bytes())
	return protocol.Quote{Attest: body, Signature: sig, PCRs: map[int][]byte{eventlog.PCRDevelopment: pcr[:]}}, log, nil
}

// sign is the AK's ECDSA signature (r, s) of the SHA-256 digest h (FIPS 186-5,
// 6.4.1) with a fresh uniformly random k from crypto/rand, as the TPM signs: k·G from
// crypto/ecdh (an ECDH public key is k·G), r and s in math/big. It is the same
// signature ecdsa.Sign makes and ecdsa.Verify accepts, at about half its CPU: the
// standard library derives k through an HMAC-DRBG over SHA-512 (hedged signatures),
// a third of the fleet benchmarks' load generator, which runs on the server's cores.
// Not constant-time (math/big): for simulated devices only, like the rest of SoftDevice.
func (d *SoftDevice) sign(h []byte) (r, s *big.Int, err error) {
	n := elliptic.P256().Params().N
	e := new(big.Int).SetBytes(h) // a 256-bit digest needs no truncation on P-256
	var kb [32]byte
	for {
		if _, err := rand.Read(kb[:]); err != nil {
			return nil, nil, err
		}
		// NewPrivateKey refuses k = 0 and k ≥ n: rejection sampling keeps k uniform.
		kp, err := ecdh.P256().NewPrivateKey(kb[:])
		if err != nil {
			continue
		}
		pt := kp.PublicKey().Bytes() // 0x04 || x || y
		r = new(big.Int).SetBytes(pt[1:33])
		r.Mod(r, n)
		if r.Sign() == 0 {
			continue
		}
		k := new(big.Int).SetBytes(kb[:])
		s = new(big.Int).Mul(r, d.d)
		s.Add(s, e)
		s.Mul(s, k.ModInverse(k, n))
		s.Mod(s, n)
		if s.Sign() == 0 {
			continue
		}
		return r, s, nil
	}
}

// quoteBody is the TPMS_ATTEST of a quote over the measurement PCR alone (TPM 2.0 part
// 2, 10.12.12), written out rather than through go-tpm's reflection (the fleet
// benchmarks sign thousands of quotes a second on the server's own cores):
// tpm2.Marshal of the same structure gives the same bytes (soft_test.go).
func quoteBody(nonce []byte, clock uint64, pcrDigest []byte) []byte {
	b := make([]byte, 0, 64+len(nonce)+len(pcrDigest))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMGeneratedValue))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTAttestQuote))
	b = append(b, 0, 2, 0, 0) // qualifiedSigner: TPM2B_NAME {0, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(len(nonce)))
	b = append(b, nonce...)
	b = binary.BigEndian.AppendUint64(b, clock) // clockInfo.clock
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, 1)    // resetCount, restartCount, safe = YES
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0)       // firmwareVersion
	// TPMS_QUOTE_INFO: one selection of the SHA-256 bank, 3 bytes, the PCR's bit.
	sel := [3]byte{}
	sel[eventlog.PCRDevelopment/8] |= 1 << (eventlog.PCRDevelopment % 8)
	b = binary.BigEndian.AppendUint32(b, 1)
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgSHA256))
	b = append(b, 3)
	b = append(b, sel[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(pcrDigest)))
	return append(b, pcrDigest...)
}

// ecdsaSignature is the TPMT_SIGNATURE of an ECDSA/SHA-256 signature (r, s), written
// out like quoteBody.
func ecdsaSignature(r, s []byte) []byte {
	b := make([]byte, 0, 10+len(r)+len(s))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgECDSA))
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMAlgSHA256))
	b = binary.BigEndian.AppendUint16(b, uint16(len(r)))
	b = append(b, r...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}
