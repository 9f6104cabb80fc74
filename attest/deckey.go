package attest

import (
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/internal/protocol"
)

// DecryptionKey is a TPM-resident ECDH P-256 key: decrypt only, not restricted,
// fixed to the TPM and its parent, generated inside it (issue 18). Its private part
// never leaves the TPM; what leaves is one shared secret per ZGen call, computed with
// a peer's ephemeral public key.
//
// Like Key it is a primary key derived from the owner seed and its label, so
// CreateDecryptionKey with the same label returns the same key after a reboot: the
// device stores nothing secret. Another TPM, or the same TPM after its owner
// hierarchy was cleared, derives a different key.
type DecryptionKey struct {
	t      *TPM
	obj    *object
	pub    *ecdh.PublicKey
	closed bool // guarded by t.mu
}

// DecryptionTemplate is the TPMT_PUBLIC template of a decryption key for label: what
// a verifier of its certification expects the certified public area to be, apart
// from the public point.
func DecryptionTemplate(label []byte) tpm2.TPMTPublic {
	x := sha256.Sum256(append([]byte("edgeward decryption key\x00"), label...))
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			Decrypt:             true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDH,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDH, &tpm2.TPMSKeySchemeECDH{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x[:]},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// CreateDecryptionKey creates (or re-creates, for the same label) the TPM-resident
// decryption key of label.
func (t *TPM) CreateDecryptionKey(ctx context.Context, label []byte) (*DecryptionKey, error) {
	k := &DecryptionKey{t: t, obj: &object{what: "decryption key", hierarchy: tpm2.TPMRHOwner, template: DecryptionTemplate(label)}}
	err := t.do(ctx, func(tp transport.TPM) error { return t.loadLocked(tp, k.obj) })
	if err != nil {
		return nil, err
	}
	pub, err := protocol.ECDHPublic(k.obj.public)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("attest: decryption key public: %w", err)
	}
	k.pub = pub
	return k, nil
}

// Public is the key's public part.
func (k *DecryptionKey) Public() *ecdh.PublicKey { return k.pub }

// TPMPublic returns the marshalled TPMT_PUBLIC of the key.
func (k *DecryptionKey) TPMPublic() []byte { return tpm2.Marshal(k.obj.public) }

// ZGen computes, inside the TPM (TPM2_ECDH_ZGen), the ECDH shared secret of the key
// and peer: the x-coordinate of d·Q, 32 bytes, as crypto/ecdh's ECDH returns it. The
// caller derives a key from it and forgets it.
func (k *DecryptionKey) ZGen(ctx context.Context, peer *ecdh.PublicKey) ([]byte, error) {
	if peer == nil || peer.Curve() != ecdh.P256() {
		return nil, errors.New("attest: ZGen needs a P-256 peer key")
	}
	raw := peer.Bytes() // 0x04 | X | Y
	var z []byte
	err := k.t.do(ctx, func(tp transport.TPM) error {
		if k.closed {
			return errors.New("attest: decryption key is closed")
		}
		if err := k.t.loadLocked(tp, k.obj); err != nil {
			return err
		}
		rsp, err := tpm2.ECDHZGen{
			KeyHandle: tpm2.AuthHandle{Handle: k.obj.handle, Name: k.obj.name, Auth: tpm2.PasswordAuth(nil)},
			InPoint: tpm2.New2B(tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
				Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
			}),
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: TPM2_ECDH_ZGen: %w", err)
		}
		pt, err := rsp.OutPoint.Contents()
		if err != nil {
			return fmt.Errorf("attest: TPM2_ECDH_ZGen: %w", err)
		}
		if len(pt.X.Buffer) > 32 {
			return errors.New("attest: TPM2_ECDH_ZGen: x-coordinate longer than 32 bytes")
		}
		z = make([]byte, 32)
		copy(z[32-len(pt.X.Buffer):], pt.X.Buffer)
		return nil
	})
	return z, err
}

// Certify has the AK certify the decryption key (TPM2_Certify): proof, signed by the
// AK, that a key with this public area lives in the same TPM as the AK.
// qualifyingData (at most 64 bytes) binds the statement to one request.
func (k *DecryptionKey) Certify(ctx context.Context, qualifyingData []byte) (*Certification, error) {
	var c *Certification
	err := k.t.do(ctx, func(tp transport.TPM) error {
		if k.closed {
			return errors.New("attest: decryption key is closed")
		}
		var err error
		c, err = k.t.certifyLocked(tp, k.obj, qualifyingData)
		return err
	})
	return c, err
}

// Close flushes the key from the TPM. The same key comes back from
// CreateDecryptionKey with the same label.
func (k *DecryptionKey) Close() error {
	return k.t.do(context.Background(), func(tp transport.TPM) error {
		if k.closed {
			return nil
		}
		k.closed = true
		return k.t.unloadLocked(tp, k.obj)
	})
}
