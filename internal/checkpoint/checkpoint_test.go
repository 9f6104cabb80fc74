package checkpoint

import (
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

func TestCheckpointAndCosignatures(t *testing.T) {
	_, logPriv, _ := ed25519.GenerateKey(nil)
	_, wPriv, _ := ed25519.GenerateKey(nil)
	signer, err := Signer("log.example", logPriv)
	if err != nil {
		t.Fatal(err)
	}
	vk, _ := VerifierKey("log.example", logPriv.Public().(ed25519.PublicKey))
	logKey, err := ParseVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1_800_000_000, 0)
	cosigner := Cosigner("w.example", wPriv, func() time.Time { return at })
	wKey, err := ParseVerifier(CosignerKey("w.example", wPriv.Public().(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	h := tlog.RecordHash([]byte("x"))
	// An extension line after the root hash is allowed and ignored.
	msg, err := note.Sign(&note.Note{Text: Body("log.example", 7, h) + "ext line\n"}, signer, cosigner)
	if err != nil {
		t.Fatal(err)
	}
	c, err := Open(msg, logKey, []note.Verifier{wKey}, 1)
	if err != nil || c.Size != 7 || c.Hash != h {
		t.Fatalf("Open = %+v, %v", c, err)
	}
	n, _ := note.Open(msg, note.VerifierList(logKey, wKey))
	for _, s := range n.Sigs {
		if s.Name == "w.example" {
			if got, ok := CosignatureTime(s); !ok || !got.Equal(at) {
				t.Fatalf("CosignatureTime = %v, %v; want %v", got, ok, at)
			}
		}
	}
	// A cosignature over another text does not count; a flipped byte is refused.
	tampered := strings.Replace(string(msg), "\n7\n", "\n8\n", 1)
	if _, err := Open([]byte(tampered), logKey, []note.Verifier{wKey}, 1); err == nil {
		t.Fatal("Open accepted a note whose text changed after signing")
	}
	var qe *QuorumError
	if _, err := Open(msg, logKey, []note.Verifier{wKey}, 2); !errors.As(err, &qe) || qe.Have != 1 {
		t.Fatalf("Open with quorum 2 = %v; want a QuorumError with 1", err)
	}
	// The origin must be the log key's name.
	other, _ := Signer("other.example", logPriv)
	msg2, _ := note.Sign(&note.Note{Text: Body("log.example", 7, h)}, other)
	ovk, _ := VerifierKey("other.example", logPriv.Public().(ed25519.PublicKey))
	ok2, _ := ParseVerifier(ovk)
	if _, err := Open(msg2, ok2, nil, 0); err == nil || !strings.Contains(err.Error(), "origin") {
		t.Fatalf("Open(origin differs from key name) = %v", err)
	}
	for _, bad := range []string{"", "log.example+00000000+AQ==", "w.example+deadbeef+" + strings.Repeat("A", 44)} {
		if _, err := ParseVerifier(bad); err == nil {
			t.Errorf("ParseVerifier(%q) accepted", bad)
		}
	}
	if _, err := ParseUnverified([]byte("log\nnot-a-number\nhash\n\n— x y\n")); !errors.Is(err, ErrMalformed) {
		t.Fatalf("ParseUnverified(bad size) = %v", err)
	}
}
