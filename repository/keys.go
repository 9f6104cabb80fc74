package repository

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"golang.org/x/crypto/scrypt"
)

// KeyType is the signature algorithm of a TUF key.
type KeyType string

const (
	KeyEd25519   KeyType = "ed25519"
	KeyECDSAP256 KeyType = "ecdsa-p256"
)

// ParseKeyType returns the KeyType named s ("" means ed25519).
func ParseKeyType(s string) (KeyType, error) {
	switch KeyType(s) {
	case "", KeyEd25519:
		return KeyEd25519, nil
	case KeyECDSAP256, "ecdsa", "p256":
		return KeyECDSAP256, nil
	}
	return "", fmt.Errorf("unknown key type %q: want ed25519 or ecdsa-p256", s)
}

// ErrWrongPassphrase is returned when an encrypted key file does not open with the
// passphrase given. The file is left as it was.
var ErrWrongPassphrase = errors.New("wrong passphrase (or the key file was modified)")

// Key is a private signing key with its TUF public form.
type Key struct {
	Role    string // the role it was generated for (informational; a key may serve several)
	Private crypto.Signer
	Public  *metadata.Key
}

// ID is the TUF key ID.
func (k *Key) ID() string {
	id, err := k.Public.ID()
	if err != nil { // only fails for keys that cannot be canonically encoded; ours can
		panic(fmt.Sprintf("tuf key id: %v", err))
	}
	return id
}

// Signer returns the go-tuf signer for this key.
func (k *Key) Signer() (signature.Signer, error) {
	hash := crypto.Hash(0)
	if _, ok := k.Private.(*ecdsa.PrivateKey); ok {
		hash = crypto.SHA256
	}
	s, err := signature.LoadSigner(k.Private, hash)
	if err != nil {
		return nil, fmt.Errorf("load signer for key %s: %w", k.ID()[:8], err)
	}
	return s, nil
}

// GenerateKey makes a new key of type t for role, reading randomness from r
// (crypto/rand when nil).
func GenerateKey(role string, t KeyType, r io.Reader) (*Key, error) {
	if r == nil {
		r = rand.Reader
	}
	var priv crypto.Signer
	switch t {
	case KeyEd25519, "":
		_, p, err := ed25519.GenerateKey(r)
		if err != nil {
			return nil, fmt.Errorf("generate ed25519 key: %w", err)
		}
		priv = p
	case KeyECDSAP256:
		p, err := ecdsa.GenerateKey(elliptic.P256(), r)
		if err != nil {
			return nil, fmt.Errorf("generate ecdsa key: %w", err)
		}
		priv = p
	default:
		return nil, fmt.Errorf("unknown key type %q", t)
	}
	return newKey(role, priv)
}

func newKey(role string, priv crypto.Signer) (*Key, error) {
	pub, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		return nil, fmt.Errorf("tuf public key: %w", err)
	}
	return &Key{Role: role, Private: priv, Public: pub}, nil
}

// KDFParams are the scrypt parameters of an encrypted key file. The zero value means
// the defaults (N=2^15, r=8, p=1: about 100 ms and 32 MiB on a laptop).
type KDFParams struct {
	N, R, P int
}

func (p KDFParams) withDefaults() KDFParams {
	if p.N == 0 {
		p.N = 1 << 15
	}
	if p.R == 0 {
		p.R = 8
	}
	if p.P == 0 {
		p.P = 1
	}
	return p
}

// keyFile is the on-disk form of a key. Offline keys are encrypted: the PKCS#8 private key
// is sealed with AES-256-GCM under a key derived by scrypt from the passphrase; the
// header (format, role, key ID, public key) is the AEAD's additional data, so editing it
// makes the file fail to open. Online keys (Encrypted false) hold the PKCS#8 in clear and
// rely on file permissions: the server must sign unattended.
type keyFile struct {
	Format     string        `json:"format"` // "edgeward-key-v1"
	Role       string        `json:"role"`
	KeyID      string        `json:"keyid"`
	Public     *metadata.Key `json:"public"`
	Encrypted  bool          `json:"encrypted"`
	KDF        *kdfJSON      `json:"kdf,omitempty"`
	Nonce      []byte        `json:"nonce,omitempty"`
	Ciphertext []byte        `json:"ciphertext,omitempty"`
	PKCS8      []byte        `json:"pkcs8,omitempty"`
}

type kdfJSON struct {
	Name string `json:"name"` // "scrypt"
	Salt []byte `json:"salt"`
	N    int    `json:"n"`
	R    int    `json:"r"`
	P    int    `json:"p"`
}

const keyFormat = "edgeward-key-v1"

func (f *keyFile) aad() []byte {
	pub, _ := json.Marshal(f.Public)
	return []byte(f.Format + "\x00" + f.Role + "\x00" + f.KeyID + "\x00" + string(pub))
}

// MarshalKey encodes k for storage. With a passphrase the private key is encrypted; with
// a nil passphrase it is stored in clear (online keys only).
func MarshalKey(k *Key, passphrase []byte, kdf KDFParams, r io.Reader) ([]byte, error) {
	if r == nil {
		r = rand.Reader
	}
	der, err := x509.MarshalPKCS8PrivateKey(k.Private)
	if err != nil {
		return nil, fmt.Errorf("encode private key: %w", err)
	}
	f := &keyFile{Format: keyFormat, Role: k.Role, KeyID: k.ID(), Public: k.Public}
	if passphrase == nil {
		f.PKCS8 = der
		return json.MarshalIndent(f, "", "  ")
	}
	if len(passphrase) == 0 {
		return nil, errors.New("empty passphrase: refusing to encrypt a key with it")
	}
	kdf = kdf.withDefaults()
	f.Encrypted = true
	f.KDF = &kdfJSON{Name: "scrypt", Salt: make([]byte, 16), N: kdf.N, R: kdf.R, P: kdf.P}
	if _, err := io.ReadFull(r, f.KDF.Salt); err != nil {
		return nil, fmt.Errorf("salt: %w", err)
	}
	aead, err := keyAEAD(passphrase, f.KDF)
	if err != nil {
		return nil, err
	}
	f.Nonce = make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(r, f.Nonce); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	f.Ciphertext = aead.Seal(nil, f.Nonce, der, f.aad())
	return json.MarshalIndent(f, "", "  ")
}

func keyAEAD(passphrase []byte, k *kdfJSON) (cipher.AEAD, error) {
	if k.Name != "scrypt" {
		return nil, fmt.Errorf("unsupported kdf %q", k.Name)
	}
	// Bound the parameters a hostile file could ask for (N=2^20, r=8 is 1 GiB).
	if k.N < 2 || k.N > 1<<20 || k.R < 1 || k.R > 32 || k.P < 1 || k.P > 16 || len(k.Salt) < 8 {
		return nil, fmt.Errorf("kdf parameters out of range (n=%d r=%d p=%d)", k.N, k.R, k.P)
	}
	dk, err := scrypt.Key(passphrase, k.Salt, k.N, k.R, k.P, 32)
	if err != nil {
		return nil, fmt.Errorf("scrypt: %w", err)
	}
	block, err := aes.NewCipher(dk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// ParseKey decodes a key file. passphrase may be nil for an unencrypted (online) key; for
// an encrypted one a wrong passphrase gives ErrWrongPassphrase.
func ParseKey(data []byte, passphrase []byte) (*Key, error) {
	var f keyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not an edgeward key file: %w", err)
	}
	if f.Format != keyFormat || f.Public == nil {
		return nil, fmt.Errorf("not an edgeward key file (format %q)", f.Format)
	}
	der := f.PKCS8
	if f.Encrypted {
		if f.KDF == nil {
			return nil, errors.New("encrypted key file has no kdf parameters")
		}
		if passphrase == nil {
			return nil, errors.New("key file is encrypted: a passphrase is needed")
		}
		aead, err := keyAEAD(passphrase, f.KDF)
		if err != nil {
			return nil, err
		}
		if len(f.Nonce) != aead.NonceSize() {
			return nil, errors.New("key file nonce has the wrong size")
		}
		der, err = aead.Open(nil, f.Nonce, f.Ciphertext, f.aad())
		if err != nil {
			return nil, ErrWrongPassphrase
		}
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("decode private key: %w", err)
	}
	signer, ok := priv.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("unsupported private key type %T", priv)
	}
	k, err := newKey(f.Role, signer)
	if err != nil {
		return nil, err
	}
	if k.ID() != f.KeyID {
		return nil, fmt.Errorf("key file says key ID %s but the key is %s", short(f.KeyID), short(k.ID()))
	}
	return k, nil
}

// PeekKey reads the public part of a key file without decrypting it.
func PeekKey(data []byte) (role, keyID string, pub *metadata.Key, err error) {
	var f keyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return "", "", nil, fmt.Errorf("not an edgeward key file: %w", err)
	}
	if f.Format != keyFormat || f.Public == nil {
		return "", "", nil, fmt.Errorf("not an edgeward key file (format %q)", f.Format)
	}
	id, err := f.Public.ID()
	if err != nil || id != f.KeyID {
		return "", "", nil, fmt.Errorf("key file key ID %s does not match its public key", short(f.KeyID))
	}
	return f.Role, f.KeyID, f.Public, nil
}

// LoadKeyFile reads and decrypts the key file at path.
func LoadKeyFile(path string, passphrase []byte) (*Key, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read key: %w", err)
	}
	k, err := ParseKey(data, passphrase)
	if err != nil {
		return nil, fmt.Errorf("key %s: %w", path, err)
	}
	return k, nil
}

// WriteKeyFile stores k at dir/<role>-<keyid[:8]>.key (mode 0600) and returns the path.
// It refuses to overwrite an existing file.
func WriteKeyFile(fsys FS, dir string, k *Key, passphrase []byte, kdf KDFParams) (string, error) {
	data, err := MarshalKey(k, passphrase, kdf, nil)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, fmt.Sprintf("%s-%s.key", k.Role, k.ID()[:8]))
	if _, err := os.Stat(path); err == nil {
		return "", fmt.Errorf("key file %s exists: refusing to overwrite", path)
	}
	if err := fsys.WriteFile(path, data, 0o600); err != nil {
		return "", fmt.Errorf("write key %s: %w", path, err)
	}
	return path, nil
}

func short(id string) string {
	if len(id) > 8 {
		return id[:8]
	}
	return id
}

// ChangePassphrase re-encrypts the encrypted key file data under newPass, with a fresh
// salt and nonce and default KDF parameters (kdf zero) or kdf. It refuses an online
// (unencrypted) key file and a wrong oldPass (ErrWrongPassphrase); the key, its role
// and its ID are unchanged.
func ChangePassphrase(data, oldPass, newPass []byte, kdf KDFParams) ([]byte, error) {
	var f keyFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("not an edgeward key file: %w", err)
	}
	if !f.Encrypted {
		return nil, errors.New("key file is not encrypted (an online key): it has no passphrase to change")
	}
	if len(newPass) == 0 {
		return nil, errors.New("empty new passphrase")
	}
	k, err := ParseKey(data, oldPass)
	if err != nil {
		return nil, err
	}
	return MarshalKey(k, newPass, kdf, nil)
}
