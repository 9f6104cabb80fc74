package verify_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/protocol"
)

// TestDecryptionKeyEndToEnd: a device's TPM-resident decryption key, certified by its
// AK, verified by the server, receives a content key only its own TPM can unwrap: not
// another TPM (swtpm), not another target's context, not after a byte changed. Real
// TPMs on both sides: the reference simulator and swtpm.
func TestDecryptionKeyEndToEnd(t *testing.T) {
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.AK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := tpm.CreateDecryptionKey(ctx, []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	challenge := []byte("enrollment challenge 0123456789")
	cert, err := dk.Certify(ctx, challenge)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := verify.DecryptionKey(ak.Public, *cert, challenge)
	if err != nil {
		t.Fatalf("DecryptionKey(genuine certification) = %v", err)
	}
	if !pub.Equal(dk.Public()) {
		t.Fatal("DecryptionKey returned another key than the device's")
	}
	// The same label gives the same key after the object was flushed (a reboot).
	dk.Close()
	dk, err = tpm.CreateDecryptionKey(ctx, []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	if !dk.Public().Equal(pub) {
		t.Fatal("CreateDecryptionKey with the same label gave another key")
	}

	key := bytes.Repeat([]byte{0x5a}, keywrap.KeySize)
	target := []byte("models/vib/2.0.0.onnx.enc sha256:abcd")
	w, err := keywrap.ToDevice(nil, pub, key, target)
	if err != nil {
		t.Fatal(err)
	}
	zgen := func(p *ecdh.PublicKey) ([]byte, error) { return dk.ZGen(ctx, p) }
	got, err := keywrap.FromDevice(w, dk.Public(), zgen, target)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("FromDevice on the device's own TPM = %x, %v; want the content key", got, err)
	}
	if _, err := keywrap.FromDevice(w, dk.Public(), zgen, []byte("models/other/1.0.0.onnx.enc")); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("FromDevice for another target = %v; want ErrUnwrap", err)
	}
	bad := w
	bad.Sealed = bytes.Clone(w.Sealed)
	bad.Sealed[3] ^= 1
	if _, err := keywrap.FromDevice(bad, dk.Public(), zgen, target); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("FromDevice of a changed wrap = %v; want ErrUnwrap", err)
	}

	// Another TPM derives another key from the same label and template, and cannot
	// compute the shared secret of this wrap.
	sw := attesttest.StartSwtpm(t, false)
	other, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	odk, err := other.CreateDecryptionKey(ctx, []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	if odk.Public().Equal(pub) {
		t.Fatal("two TPMs derived the same decryption key")
	}
	ozgen := func(p *ecdh.PublicKey) ([]byte, error) { return odk.ZGen(ctx, p) }
	if _, err := keywrap.FromDevice(w, dk.Public(), ozgen, target); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("FromDevice with another TPM = %v; want ErrUnwrap", err)
	}
	if _, err := keywrap.FromDevice(w, odk.Public(), ozgen, target); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("FromDevice with another TPM (its own public key) = %v; want ErrUnwrap", err)
	}

	// The other TPM's certification does not pass for this device's AK.
	oak, err := other.AK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ocert, err := odk.Certify(ctx, challenge)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify.DecryptionKey(ak.Public, *ocert, challenge); !errors.Is(err, verify.ErrKeyCertification) {
		t.Errorf("DecryptionKey(another TPM's certification, this AK) = %v; want ErrKeyCertification", err)
	}
	if _, err := verify.DecryptionKey(oak.Public, *ocert, challenge); err != nil {
		t.Errorf("DecryptionKey(another TPM's certification, its AK) = %v", err)
	}
}

// TestDecryptionKeyRefusals: what the AK really certifies but the server must refuse,
// and what was changed after the AK signed.
func TestDecryptionKeyRefusals(t *testing.T) {
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.AK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	q := []byte("challenge")
	dk, err := tpm.CreateDecryptionKey(ctx, []byte("content"))
	if err != nil {
		t.Fatal(err)
	}
	genuine, err := dk.Certify(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	// A signing key of the same TPM, certified by the same AK: not a decryption key.
	sk, err := tpm.CreateKey(ctx, []byte("tls"))
	if err != nil {
		t.Fatal(err)
	}
	signing, err := sk.Certify(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	// The public area of another key (same attributes, other point) beside the
	// genuine certification: the certified name does not match.
	other, err := tpm.CreateDecryptionKey(ctx, []byte("other"))
	if err != nil {
		t.Fatal(err)
	}
	swapped := *genuine
	swapped.Public = other.TPMPublic()
	// The genuine public area with a flag changed (as if the key could be duplicated).
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](genuine.Public)
	if err != nil {
		t.Fatal(err)
	}
	pub.ObjectAttributes.FixedTPM = false
	loosened := *genuine
	loosened.Public = tpm2.Marshal(pub)
	sig := *genuine
	sig.Signature = bytes.Clone(genuine.Signature)
	sig.Signature[len(sig.Signature)-1] ^= 1
	info := *genuine
	info.CertifyInfo = append(bytes.Clone(genuine.CertifyInfo), 0)

	cases := []struct {
		name string
		c    protocol.KeyCertification
		q    []byte
		why  string // in the error
	}{
		{"signing key", *signing, q, "not a decrypt-only key"},
		{"another key's public area", swapped, q, "another key"},
		{"fixedTPM cleared in the public area", loosened, q, "another key"},
		{"signature changed", sig, q, "AK signature"},
		{"certify info with trailing data", info, q, "AK signature"},
		{"another challenge", *genuine, []byte("stale challenge"), "qualifying data"},
		{"empty", protocol.KeyCertification{}, q, "AK signature"},
	}
	for _, c := range cases {
		_, err := verify.DecryptionKey(ak.Public, c.c, c.q)
		if !errors.Is(err, verify.ErrKeyCertification) || !strings.Contains(err.Error(), c.why) {
			t.Errorf("DecryptionKey(%s) = %v; want ErrKeyCertification saying %q", c.name, err, c.why)
		}
	}
	if _, err := verify.DecryptionKey(ak.Public, *genuine, q); err != nil {
		t.Errorf("DecryptionKey(genuine) = %v", err)
	}
}

// TestKEK: a content key at rest on the server opens only under its key-encryption key
// and for its own target.
func TestKEK(t *testing.T) {
	kek, err := keywrap.NewKEK(nil)
	if err != nil {
		t.Fatal(err)
	}
	other, _ := keywrap.NewKEK(nil)
	key := make([]byte, keywrap.KeySize)
	rand.Read(key)
	sealed, err := keywrap.Seal(nil, kek, key, []byte("target a"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, key) {
		t.Fatal("the sealed content key contains the key")
	}
	if got, err := keywrap.Open(kek, sealed, []byte("target a")); err != nil || !bytes.Equal(got, key) {
		t.Fatalf("Open = %x, %v; want the key", got, err)
	}
	changed := bytes.Clone(sealed)
	changed[len(changed)-1] ^= 1
	for name, f := range map[string]func() ([]byte, error){
		"other KEK":    func() ([]byte, error) { return keywrap.Open(other, sealed, []byte("target a")) },
		"other target": func() ([]byte, error) { return keywrap.Open(kek, sealed, []byte("target b")) },
		"changed":      func() ([]byte, error) { return keywrap.Open(kek, changed, []byte("target a")) },
		"truncated":    func() ([]byte, error) { return keywrap.Open(kek, sealed[:5], []byte("target a")) },
	} {
		if _, err := f(); !errors.Is(err, keywrap.ErrUnwrap) {
			t.Errorf("Open(%s) = %v; want ErrUnwrap", name, err)
		}
	}
}
