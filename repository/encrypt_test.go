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
