package attest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/cryptobyte/asn1"

	"github.com/edgeward/edgeward/internal/protocol"
)

// Key is a TPM-resident ECDSA P-256 signing key (not restricted, fixed to the
// TPM, generated inside it). Its private part never leaves the TPM. It
// implements crypto.Signer, so it can back a TLS client certificate.
//
// A Key is a primary key derived from the owner seed and its label:
// CreateKey with the same label returns the same key after a reboot, so the
// agent stores only the (non-secret) label. It is valid until Close or until
// the TPM is closed. While it is open the TPM may flush it to make room
// (see MaxLoaded) and re-creates it at its next use.
type Key struct {
	t      *TPM
	obj    *object
	pub    *ecdsa.PublicKey
	closed bool // guarded by t.mu
}

// CreateKey creates (or re-creates, for the same label) a TPM-resident signing
// key. Different labels give unrelated keys.
func (t *TPM) CreateKey(ctx context.Context, label []byte) (*Key, error) {
	x := sha256.Sum256(append([]byte("edgeward key\x00"), label...))
	tmpl := tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x[:]},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
	k := &Key{t: t, obj: &object{what: "signing key", hierarchy: tpm2.TPMRHOwner, template: tmpl}}
	err := t.do(ctx, func(tp transport.TPM) error { return t.loadLocked(tp, k.obj) })
	if err != nil {
		return nil, err
	}
	p, err := tpm2.Pub(k.obj.public)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("attest: signing key public: %w", err)
	}
	k.pub = p.(*ecdsa.PublicKey)
	return k, nil
}

// Public implements crypto.Signer.
func (k *Key) Public() crypto.PublicKey { return k.pub }

// TPMPublic returns the marshalled TPMT_PUBLIC of the key (the "pubArea" of a
// device-attest-01 attestation statement).
func (k *Key) TPMPublic() []byte { return tpm2.Marshal(k.obj.public) }

// Close flushes the key from the TPM. The same key comes back from CreateKey
// with the same label.
func (k *Key) Close() error {
	return k.t.do(context.Background(), func(tp transport.TPM) error {
		if k.closed {
			return nil
		}
		k.closed = true
		return k.t.unloadLocked(tp, k.obj)
	})
}

// Sign implements crypto.Signer with TPM2_Sign; digest must be a SHA-256
// digest (the key's scheme). The signature is ASN.1 DER, as crypto/ecdsa
// produces. Sign ignores rand: the TPM uses its own RNG.
func (k *Key) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return k.SignContext(context.Background(), digest, opts)
}

// SignContext is Sign with a context.
func (k *Key) SignContext(ctx context.Context, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 {
		return nil, errors.New("attest: TPM key signs SHA-256 digests only")
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("attest: digest is %d bytes, want %d", len(digest), sha256.Size)
	}
	var out []byte
	err := k.t.do(ctx, func(tp transport.TPM) error {
		if k.closed {
			return errors.New("attest: key is closed")
		}
		if err := k.t.loadLocked(tp, k.obj); err != nil {
			return err
		}
		rsp, err := tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: k.obj.handle, Name: k.obj.name, Auth: tpm2.PasswordAuth(nil)},
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: TPM2_Sign: %w", err)
		}
		sig, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return fmt.Errorf("attest: TPM2_Sign: %w", err)
		}
		var b cryptobyte.Builder
		b.AddASN1(asn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1BigInt(new(big.Int).SetBytes(sig.SignatureR.Buffer))
			b.AddASN1BigInt(new(big.Int).SetBytes(sig.SignatureS.Buffer))
		})
		out, err = b.Bytes()
		return err
	})
	return out, err
}

// Certification is a TPM2_Certify of a key by the AK: proof, signed by the AK, that
// the key with this public area lives in the same TPM (protocol.KeyCertification).
type Certification = protocol.KeyCertification

// Certify has the AK certify the key. qualifyingData (at most 64 bytes) ends
// up in the signed certifyInfo; for ACME device-attest-01 it is
// SHA-256(keyAuthorization), which binds the statement to one challenge.
func (k *Key) Certify(ctx context.Context, qualifyingData []byte) (*Certification, error) {
	var c *Certification
	err := k.t.do(ctx, func(tp transport.TPM) error {
		if k.closed {
			return errors.New("attest: key is closed")
		}
		var err error
		c, err = k.t.certifyLocked(tp, k.obj, qualifyingData)
		return err
	})
	return c, err
}

// certifyLocked has the AK certify o (TPM2_Certify), loading both.
func (t *TPM) certifyLocked(tp transport.TPM, o *object, qualifyingData []byte) (*Certification, error) {
	ak := t.ak
	if err := t.loadLocked(tp, o); err != nil {
		return nil, err
	}
	if err := t.loadLocked(tp, ak, o); err != nil {
		return nil, err
	}
	rsp, err := tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: o.handle, Name: o.name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: ak.handle, Name: ak.name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qualifyingData},
		InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
	}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("attest: TPM2_Certify of the %s: %w", o.what, err)
	}
	return &Certification{
		Public:      tpm2.Marshal(o.public),
		CertifyInfo: rsp.CertifyInfo.Bytes(),
		Signature:   tpm2.Marshal(rsp.Signature),
	}, nil
}
