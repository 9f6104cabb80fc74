// Package keywrap wraps a model's content key for the two places it may rest outside
// the model (issue 18):
//
//   - to one device: ECDH-ES on NIST P-256 to the device's TPM-resident decryption
//     key, the shared secret through HKDF-SHA256 into a single-use AES-256-GCM key that
//     seals the content key (the shape of the IETF SUIT encrypted-payload draft's
//     ECDH-ES mode). Only that TPM can compute the shared secret (TPM2_ECDH_ZGen), so
//     only that device can unwrap.
//   - at rest on the server: AES-256-GCM under a key-encryption key kept apart from
//     the repository and the database.
//
// Both bind the wrap to a context (the target's path and ciphertext hash): a wrapped key
// moved to another target does not unwrap. The package is pure; the TPM is reached
// through a function the caller passes.
package keywrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// KeySize is the length of the keys this package wraps and of a key-encryption key.
const KeySize = 32

const (
	labelDevice = "edgeward content key to device v1"
	labelKEK    = "edgeward content key at rest v1"
)

// ErrUnwrap: a wrapped key does not open: wrong recipient, wrong context or tampered.
var ErrUnwrap = errors.New("keywrap: wrapped key does not open (another recipient, another target, or tampered)")

// Wrapped is a content key wrapped to one device's decryption key.
type Wrapped struct {
	// Ephemeral is the sender's one-time P-256 public key, uncompressed.
	Ephemeral []byte `json:"ephemeral"`
	// Sealed is the content key sealed with AES-256-GCM (zero nonce: the key is
	// derived afresh for each wrap), tag included.
	Sealed []byte `json:"sealed"`
}

// ToDevice wraps key (KeySize bytes) to the device whose decryption key is to, bound to
// context. rnd supplies the ephemeral key (crypto/rand when nil).
func ToDevice(rnd io.Reader, to *ecdh.PublicKey, key, context []byte) (Wrapped, error) {
	if len(key) != KeySize {
		return Wrapped{}, fmt.Errorf("keywrap: key is %d bytes, want %d", len(key), KeySize)
	}
	if to == nil || to.Curve() != ecdh.P256() {
		return Wrapped{}, errors.New("keywrap: recipient is not a P-256 key")
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	eph, err := ecdh.P256().GenerateKey(rnd)
	if err != nil {
		return Wrapped{}, fmt.Errorf("keywrap: ephemeral key: %w", err)
	}
	z, err := eph.ECDH(to)
	if err != nil {
		return Wrapped{}, fmt.Errorf("keywrap: ECDH: %w", err)
	}
	aead, err := deviceAEAD(z, eph.PublicKey().Bytes(), to.Bytes(), context)
	if err != nil {
		return Wrapped{}, err
	}
	return Wrapped{
		Ephemeral: eph.PublicKey().Bytes(),
		Sealed:    aead.Seal(nil, make([]byte, aead.NonceSize()), key, context),
	}, nil
}

// ZGen computes the ECDH shared secret of the recipient's private key and peer: the
// x-coordinate of the product, 32 bytes (attest.DecryptionKey.ZGen in a TPM).
type ZGen func(peer *ecdh.PublicKey) ([]byte, error)

// FromDevice unwraps w with the recipient's key: its public part me and zgen, which
// computes the shared secret (inside the TPM). It fails with ErrUnwrap for a key
// wrapped to another recipient or context, or tampered.
func FromDevice(w Wrapped, me *ecdh.PublicKey, zgen ZGen, context []byte) ([]byte, error) {
	eph, err := ecdh.P256().NewPublicKey(w.Ephemeral)
	if err != nil {
		return nil, fmt.Errorf("%w: ephemeral key: %v", ErrUnwrap, err)
	}
	z, err := zgen(eph)
	if err != nil {
		return nil, fmt.Errorf("keywrap: shared secret: %w", err)
	}
	aead, err := deviceAEAD(z, w.Ephemeral, me.Bytes(), context)
	if err != nil {
		return nil, err
	}
	key, err := aead.Open(nil, make([]byte, aead.NonceSize()), w.Sealed, context)
	if err != nil || len(key) != KeySize {
		return nil, ErrUnwrap
	}
	return key, nil
}

// deviceAEAD derives the single-use key of one wrap from the shared secret, both public
// keys and the context.
func deviceAEAD(z, eph, recipient, context []byte) (cipher.AEAD, error) {
	info := make([]byte, 0, len(labelDevice)+1+len(eph)+len(recipient)+sha256.Size)
	info = append(info, labelDevice...)
	info = append(info, 0)
	info = append(info, eph...)
	info = append(info, recipient...)
	h := sha256.Sum256(context)
	info = append(info, h[:]...)
	k, err := hkdf.Key(sha256.New, z, nil, string(info), KeySize)
	if err != nil {
		return nil, fmt.Errorf("keywrap: HKDF: %w", err)
	}
	return gcm(k)
}

func gcm(k []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("keywrap: %w", err)
	}
	return cipher.NewGCM(b)
}

// NewKEK returns a fresh key-encryption key from rnd (crypto/rand when nil).
func NewKEK(rnd io.Reader) ([]byte, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	k := make([]byte, KeySize)
	if _, err := io.ReadFull(rnd, k); err != nil {
		return nil, fmt.Errorf("keywrap: key-encryption key: %w", err)
	}
	return k, nil
}

// Seal wraps key under the key-encryption key kek, bound to context, for storage: a
// random nonce followed by the sealed key.
func Seal(rnd io.Reader, kek, key, context []byte) ([]byte, error) {
	if len(kek) != KeySize || len(key) != KeySize {
		return nil, fmt.Errorf("keywrap: key-encryption key %d bytes and key %d bytes; want %d each", len(kek), len(key), KeySize)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	aead, err := kekAEAD(kek)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+KeySize+aead.Overhead())
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("keywrap: nonce: %w", err)
	}
	return aead.Seal(nonce, nonce, key, context), nil
}

// Open unwraps what Seal stored. It fails with ErrUnwrap under another key-encryption
// key or context, or when the stored bytes were changed.
func Open(kek, sealed, context []byte) ([]byte, error) {
	if len(kek) != KeySize {
		return nil, fmt.Errorf("keywrap: key-encryption key is %d bytes, want %d", len(kek), KeySize)
	}
	aead, err := kekAEAD(kek)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, ErrUnwrap
	}
	key, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], context)
	if err != nil || len(key) != KeySize {
		return nil, ErrUnwrap
	}
	return key, nil
}

// kekAEAD derives the sealing key from the key-encryption key, so the KEK itself is
// used for nothing else.
func kekAEAD(kek []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, kek, nil, labelKEK, KeySize)
	if err != nil {
		return nil, fmt.Errorf("keywrap: HKDF: %w", err)
	}
	return gcm(k)
}

// TargetContext is the context a content key is wrapped to a device under: the target's
// path and the SHA-256 (hex) of its ciphertext, so a wrapped key opens for that target
// only.
func TargetContext(path, sha256hex string) []byte {
	return []byte("target\x00" + path + "\x00" + sha256hex)
}
