package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/segcrypt"
)

// TestPublishEncrypted: an encrypted publish signs the ciphertext, describes the
// plaintext in the custom metadata, keeps no plaintext in the repository, and stores a
// content key that opens only under its key-encryption key and for its own target.
func TestPublishEncrypted(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	kek, _ := keywrap.NewKEK(nil)
	marker := []byte("EDGEWARD-PLAINTEXT-MARKER-7f3a9c")
	plain := bytes.Repeat(append(bytes.Clone(marker), make([]byte, 1000)...), 200) // ~200 KB, several segments
	enc := func(r *PublishRequest) { r.KEK = kek }
	res, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, enc)
	if err != nil {
		t.Fatal(err)
	}
	up := f.newClient().mustRefresh()
	got, tf, err := f.newClient().download(up, res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(got, marker) {
		t.Fatal("the served target contains the plaintext")
	}
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != res.SHA256 || tf.Length != int64(len(got)) {
		t.Fatalf("signed hash and length are not the ciphertext's")
	}
	var m artifact.Meta
	if err := json.Unmarshal(*tf.Custom, &m); err != nil {
		t.Fatal(err)
	}
	ps := sha256.Sum256(plain)
	if m.Encryption == nil || m.Encryption.PlainSHA256 != hex.EncodeToString(ps[:]) || m.Encryption.PlainLength != int64(len(plain)) || m.Encryption.Scheme != artifact.EncryptionScheme {
		t.Fatalf("custom encryption = %+v; want the plaintext's hash and length", m.Encryption)
	}
	// No plaintext anywhere in the repository directory.
	filepath.WalkDir(f.repo.path(), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, marker) {
				t.Errorf("%s contains the plaintext", p)
			}
		}
		return nil
	})
	key, err := f.repo.ContentKey(kek, res.Path, res.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	dec, err := segcrypt.Decrypt(context.Background(), bytes.NewReader(got), key, m.Encryption.PlainLength)
	if err != nil || !bytes.Equal(dec, plain) {
		t.Fatalf("decrypting with the stored content key = %d bytes, %v; want the plaintext", len(dec), err)
	}
	other, _ := keywrap.NewKEK(nil)
	if _, err := f.repo.ContentKey(other, res.Path, res.SHA256); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("ContentKey under another KEK = %v; want ErrUnwrap", err)
	}
	if _, err := f.repo.ContentKey(kek, "models/other/1.0.0.onnx", res.SHA256); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("ContentKey for another target = %v; want ErrUnwrap", err)
	}
	if _, err := f.repo.ContentKey(kek, res.Path, hex.EncodeToString(make([]byte, 32))); !errors.Is(err, ErrNoContentKey) {
		t.Errorf("ContentKey of a target without one = %v; want ErrNoContentKey", err)
	}

	// The same plaintext again is unchanged (though it encrypts differently); other
	// bytes under the same version conflict; a caller cannot claim encryption.
	again, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, enc)
	if err != nil || !again.Unchanged || again.SHA256 != res.SHA256 {
		t.Errorf("republish of the same plaintext = %+v, %v; want unchanged, the first ciphertext", again, err)
	}
	if _, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", append(plain, 1), enc); !errors.Is(err, ErrConflict) {
		t.Errorf("republish of other plaintext = %v; want ErrConflict", err)
	}
	claim := func(r *PublishRequest) {
		r.Meta.Encryption = &artifact.Encryption{Scheme: artifact.EncryptionScheme, SegmentSize: 1, PlainSHA256: res.SHA256}
	}
	if _, err := f.publish(artifact.KindModel, "claims", "1.0.0", ".onnx", plain, claim); !errors.Is(err, ErrInvalid) {
		t.Errorf("publish claiming encryption = %v; want ErrInvalid", err)
	}
}

// TestReencrypt (issue 18): rotating a target's content key gives it a new ciphertext
// for the same plaintext under the same path and version, signed; the new key is sealed
// under the KEK and the old one destroyed (or kept, on request); the superseded
// ciphertext is listed as retired so its measurements stay recognised; no plaintext
// touches the repository; a plaintext target cannot be re-encrypted. Rotating the KEK
// re-seals every content key, and running it again after an interruption finishes it.
func TestReencrypt(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	kek, _ := keywrap.NewKEK(nil)
	marker := []byte("EDGEWARD-PLAINTEXT-MARKER-5d1e2b")
	plain := bytes.Repeat(append(bytes.Clone(marker), make([]byte, 1000)...), 150)
	enc := func(r *PublishRequest) { r.KEK = kek }
	first, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, enc)
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.repo.Reencrypt(ctx, ReencryptRequest{Kind: artifact.KindModel, Name: "secret", Version: "1.0.0", KEK: kek}, f.keyring())
	if err != nil {
		t.Fatalf("Reencrypt = %v", err)
	}
	if res.Path != first.Path || res.Old != first.SHA256 || res.New == first.SHA256 || res.OldKey != "destroyed" {
		t.Fatalf("Reencrypt = %+v; want %s re-encrypted from %s to a new ciphertext, the old key destroyed", res, first.Path, first.SHA256)
	}
	up := f.newClient().mustRefresh()
	got, tf, err := f.newClient().download(up, res.Path)
	if err != nil {
		t.Fatal(err)
	}
	if sum := sha256.Sum256(got); hex.EncodeToString(sum[:]) != res.New || tf.Length != res.Length {
		t.Fatalf("the signed target is not the new ciphertext")
	}
	var m artifact.Meta
	if err := json.Unmarshal(*tf.Custom, &m); err != nil {
		t.Fatal(err)
	}
	ps := sha256.Sum256(plain)
	if m.Encryption == nil || m.Encryption.PlainSHA256 != hex.EncodeToString(ps[:]) || m.Version != "1.0.0" {
		t.Fatalf("custom metadata after re-encryption = %+v; want the same plaintext and version", m)
	}
	key, err := f.repo.ContentKey(kek, res.Path, res.New)
	if err != nil {
		t.Fatal(err)
	}
	if dec, err := segcrypt.Decrypt(ctx, bytes.NewReader(got), key, m.Encryption.PlainLength); err != nil || !bytes.Equal(dec, plain) {
		t.Fatalf("the new ciphertext under the new key = %v; want the plaintext", err)
	}
	if _, err := f.repo.ContentKey(kek, res.Path, res.Old); !errors.Is(err, ErrNoContentKey) {
		t.Errorf("the superseded content key = %v; want destroyed (ErrNoContentKey)", err)
	}
	retired, err := f.repo.Retired()
	if err != nil || len(retired) != 1 || retired[0].Path != res.Path || retired[0].SHA256 != res.Old || retired[0].Meta() == nil || retired[0].Meta().Encryption == nil {
		t.Fatalf("retired = %+v, %v; want the superseded ciphertext of %s with its metadata", retired, err, res.Path)
	}
	filepath.WalkDir(f.repo.path(), func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, marker) {
				t.Errorf("%s contains the plaintext", p)
			}
		}
		return nil
	})
	// Again, keeping the old key this time.
	again, err := f.repo.Reencrypt(ctx, ReencryptRequest{Kind: artifact.KindModel, Name: "secret", Version: "1.0.0", KEK: kek, KeepOldKey: true}, f.keyring())
	if err != nil || again.Old != res.New || again.OldKey != "kept" {
		t.Fatalf("second Reencrypt = %+v, %v", again, err)
	}
	if _, err := f.repo.ContentKey(kek, res.Path, res.New); err != nil {
		t.Errorf("the kept superseded key = %v; want it still opening", err)
	}
	// Refusals: another KEK, a plaintext target, an unpublished version.
	other, _ := keywrap.NewKEK(nil)
	if _, err := f.repo.Reencrypt(ctx, ReencryptRequest{Kind: artifact.KindModel, Name: "secret", Version: "1.0.0", KEK: other}, f.keyring()); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("Reencrypt under another KEK = %v; want ErrUnwrap", err)
	}
	if _, err := f.publish(artifact.KindModel, "clear", "1.0.0", ".onnx", plain, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Reencrypt(ctx, ReencryptRequest{Kind: artifact.KindModel, Name: "clear", Version: "1.0.0", KEK: kek}, f.keyring()); !errors.Is(err, ErrNotEncrypted) {
		t.Errorf("Reencrypt of a plaintext target = %v; want ErrNotEncrypted", err)
	}
	if _, err := f.repo.Reencrypt(ctx, ReencryptRequest{Kind: artifact.KindModel, Name: "secret", Version: "9.0.0", KEK: kek}, f.keyring()); !errors.Is(err, ErrNotPublished) {
		t.Errorf("Reencrypt of an unpublished version = %v; want ErrNotPublished", err)
	}

	// KEK rotation: every stored content key (the current and the kept superseded one)
	// moves to the new KEK; an interrupted rotation (one key already moved) finishes.
	if _, err := f.publish(artifact.KindModel, "secret", "2.0.0", ".onnx", append(bytes.Clone(plain), 2), enc); err != nil {
		t.Fatal(err)
	}
	newKEK, _ := keywrap.NewKEK(nil)
	cur2, _ := f.repo.Load(ctx)
	var v2 string
	for p, tf := range cur2.Targets[RoleModels].Signed.Targets {
		if p == "models/secret/2.0.0.onnx" {
			v2 = hex.EncodeToString(tf.Hashes["sha256"])
		}
	}
	ck, err := f.repo.ContentKey(kek, "models/secret/2.0.0.onnx", v2)
	if err != nil {
		t.Fatal(err)
	}
	sealed, _ := keywrap.Seal(nil, newKEK, ck[:], contentKeyContext("models/secret/2.0.0.onnx", v2))
	os.WriteFile(f.repo.contentKeyPath(v2), sealed, 0o600) // as if a first run stopped here
	rot, err := f.repo.RotateKEK(ctx, kek, newKEK)
	if err != nil || len(rot.Resealed) != 2 || len(rot.Already) != 1 {
		t.Fatalf("RotateKEK = %+v, %v; want 2 re-sealed (1.0.0 and its kept superseded key), 1 already", rot, err)
	}
	for _, sum := range []string{again.New, again.Old} {
		if _, err := f.repo.ContentKey(newKEK, res.Path, sum); err != nil {
			t.Errorf("content key %s under the new KEK = %v", sum[:12], err)
		}
		if _, err := f.repo.ContentKey(kek, res.Path, sum); !errors.Is(err, keywrap.ErrUnwrap) {
			t.Errorf("content key %s under the old KEK = %v; want ErrUnwrap", sum[:12], err)
		}
	}
	if _, err := f.repo.RotateKEK(ctx, other, newKEK); err != nil {
		t.Errorf("RotateKEK again (everything under the new KEK already) = %v", err)
	}
	third, _ := keywrap.NewKEK(nil)
	if _, err := f.repo.RotateKEK(ctx, other, third); !errors.Is(err, keywrap.ErrUnwrap) {
		t.Errorf("RotateKEK from a key nothing is sealed under = %v; want ErrUnwrap", err)
	}
}
