package checkpoint

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// testLog is a log key named log.example: its private key, signer and verifier.
func testLog(t *testing.T) (ed25519.PrivateKey, note.Signer, note.Verifier) {
	t.Helper()
	_, logPriv, _ := ed25519.GenerateKey(nil)
	signer, err := Signer("log.example", logPriv)
	if err != nil {
		t.Fatal(err)
	}
	vk, _ := VerifierKey("log.example", logPriv.Public().(ed25519.PublicKey))
	logKey, err := ParseVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	return logPriv, signer, logKey
}

func TestCheckpointAndCosignatures(t *testing.T) {
	logPriv, signer, logKey := testLog(t)
	_, wPriv, _ := ed25519.GenerateKey(nil)
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
	} else if !strings.Contains(err.Error(), "not signed by the log key log.example") || !strings.Contains(err.Error(), "changed after it was signed") {
		// It said "malformed note" (found from outside, 2 Dec).
		t.Errorf("Open of a note changed after signing = %v; want it not signed by the log key, changed", err)
	}
	// A witness key given twice is refused, not counted as none (or as two).
	if _, err := Open(msg, logKey, []note.Verifier{wKey, wKey}, 2); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("Open with one witness key given twice = %v; want refused", err)
	}
	if _, err := Open(msg, logKey, []note.Verifier{logKey}, 1); err == nil || !strings.Contains(err.Error(), "given twice") {
		t.Errorf("Open with the log key as a witness = %v; want refused", err)
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

// TestOpenDropsLinesThatCannotCount: lines added to a checkpoint by others (witnesses'
// cosignatures, stored by the log's server) that are malformed, or forged under a known
// key, are not counted and do not make the checkpoint unreadable; the log's valid
// signature and the quorum are still required. (note.Open refuses the whole note for
// one such line: a single dishonest witness could break every checkpoint it touched.)
func TestOpenDropsLinesThatCannotCount(t *testing.T) {
	_, logPriv, _ := ed25519.GenerateKey(nil)
	signer, _ := Signer("log.example", logPriv)
	vk, _ := VerifierKey("log.example", logPriv.Public().(ed25519.PublicKey))
	logKey, _ := ParseVerifier(vk)
	var cosigners []note.Signer
	var wKeys []note.Verifier
	for _, name := range []string{"w1.example", "w2.example"} {
		_, priv, _ := ed25519.GenerateKey(nil)
		cosigners = append(cosigners, Cosigner(name, priv, nil))
		k, _ := ParseVerifier(CosignerKey(name, priv.Public().(ed25519.PublicKey)))
		wKeys = append(wKeys, k)
	}
	text := Body("log.example", 9, tlog.RecordHash([]byte("y")))
	genuine, err := note.Sign(&note.Note{Text: text}, append([]note.Signer{signer}, cosigners...)...)
	if err != nil {
		t.Fatal(err)
	}
	_, sigBlock, _ := strings.Cut(string(genuine), "\n\n")
	forged := func(name string, hash uint32, n int) string {
		b := make([]byte, 4+n)
		b[0], b[1], b[2], b[3] = byte(hash>>24), byte(hash>>16), byte(hash>>8), byte(hash)
		return "— " + name + " " + base64.StdEncoding.EncodeToString(b) + "\n"
	}
	bad := []string{
		"— w9.example !!!not-base64\n",                  // malformed
		forged(wKeys[1].Name(), wKeys[1].KeyHash(), 72), // under w2's key, before w2's real line
		forged(logKey.Name(), logKey.KeyHash(), 64),     // under the log's key, before its real line
		"— \x01control\n",                               // not a valid note line at all
	}
	msg := []byte(text + "\n" + strings.Join(bad, "") + sigBlock)
	if _, err := note.Open(msg, note.VerifierList(logKey, wKeys[0], wKeys[1])); err == nil {
		t.Fatal("note.Open accepted the lines: the test shows nothing")
	}
	c, err := Open(msg, logKey, wKeys, 2)
	if err != nil {
		t.Fatalf("Open with bad lines beside the genuine ones = %v; want the quorum of 2 met", err)
	}
	if c.Size != 9 || strings.Contains(string(c.Note), "!!!") || strings.Count(string(c.Note), "\n— ") != 3 {
		t.Errorf("Open kept the note %q; want the three genuine signatures only", c.Note)
	}
	// Without the log's own genuine line, nothing is left to trust.
	noLog := []byte(text + "\n" + bad[2] + strings.SplitAfterN(sigBlock, "\n", 2)[1])
	if _, err := Open(noLog, logKey, wKeys, 0); err == nil {
		t.Error("Open accepted a checkpoint whose only log signature is forged")
	}
	// A forged w2 line alone does not count towards the quorum.
	onlyW1 := []byte(text + "\n" + strings.Join(strings.SplitAfter(sigBlock, "\n")[:2], "") + bad[1])
	var qe *QuorumError
	if _, err := Open(onlyW1, logKey, wKeys, 2); !errors.As(err, &qe) || qe.Have != 1 {
		t.Errorf("Open(w1 genuine, w2 forged) with quorum 2 = %v; want a QuorumError with 1", err)
	}
}

// TestHugeTreeSizeRefused: a checkpoint signed with the log key but stating a tree of
// 2^62+1 records is malformed, refused by Open and Next at once, and CheckConsistency
// refuses such a size however the checkpoint was made. Before, the proof check
// (tlog.CheckTree's maxpow2) looped for ever: a witness held its lock, and so stopped
// answering, for good (found by an outside audit, 1 Dec). A size at the bound still
// parses.
func TestHugeTreeSizeRefused(t *testing.T) {
	_, signer, logKey := testLog(t)
	h := tlog.RecordHash([]byte("x"))
	sign := func(size int64) []byte {
		msg, err := note.Sign(&note.Note{Text: Body("log.example", size, h)}, signer)
		if err != nil {
			t.Fatal(err)
		}
		return msg
	}
	huge := sign(1<<62 + 1)
	if _, err := Open(huge, logKey, nil, 0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Open(size 2^62+1) = %v; want ErrMalformed", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Next(logKey, sign(1), huge, tlog.TreeProof{h})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Next accepted a checkpoint of size 2^62+1")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Next on a checkpoint of size 2^62+1 did not return in 10 s")
	}
	older := &Checkpoint{Origin: "log.example", Size: 1, Hash: h}
	newer := &Checkpoint{Origin: "log.example", Size: 1<<62 + 1, Hash: h}
	if err := CheckConsistency(older, newer, tlog.TreeProof{h}); !errors.Is(err, ErrMalformed) {
		t.Fatalf("CheckConsistency(size 2^62+1) = %v; want ErrMalformed", err)
	}
	if c, err := Open(sign(MaxTreeSize), logKey, nil, 0); err != nil || c.Size != MaxTreeSize {
		t.Fatalf("Open(size MaxTreeSize) = %+v, %v", c, err)
	}
	if _, err := Open(sign(MaxTreeSize+1), logKey, nil, 0); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Open(size MaxTreeSize+1) = %v; want ErrMalformed", err)
	}
}

// TestSpecLimits: what C2SP tlog-checkpoint and tlog-cosignature forbid is refused (an
// empty extension line; a cosignature time over 2^63-1), and a tree of size 0 has the
// empty tree's root alone.
func TestSpecLimits(t *testing.T) {
	_, signer, logKey := testLog(t)
	h := tlog.RecordHash([]byte("x"))
	msg, _ := note.Sign(&note.Note{Text: Body("log.example", 7, h) + "\next\n"}, signer)
	if _, err := Open(msg, logKey, nil, 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("Open(an empty extension line) = %v; want ErrMalformed", err)
	}
	_, wPriv, _ := ed25519.GenerateKey(nil)
	wKey, _ := ParseVerifier(CosignerKey("w.example", wPriv.Public().(ed25519.PublicKey)))
	for _, at := range []uint64{1 << 63, 1<<64 - 1} {
		sig := binary.BigEndian.AppendUint64(nil, at)
		sig = append(sig, ed25519.Sign(wPriv, cosignedMessage(at, []byte("text\n")))...)
		if wKey.Verify([]byte("text\n"), sig) {
			t.Errorf("a cosignature at time %d verified; the limit is 2^63-1", at)
		}
	}
	at := uint64(1 << 40)
	sig := append(binary.BigEndian.AppendUint64(nil, at), ed25519.Sign(wPriv, cosignedMessage(at, []byte("text\n")))...)
	if !wKey.Verify([]byte("text\n"), sig) {
		t.Error("a cosignature at an ordinary time did not verify")
	}
	empty := &Checkpoint{Origin: "log.example", Size: 0, Hash: EmptyTreeHash}
	notEmpty := &Checkpoint{Origin: "log.example", Size: 0, Hash: h}
	seven := &Checkpoint{Origin: "log.example", Size: 7, Hash: h}
	if err := CheckConsistency(empty, seven, nil); err != nil {
		t.Errorf("from the empty tree: %v", err)
	}
	if err := CheckConsistency(notEmpty, seven, nil); !errors.Is(err, ErrInconsistent) {
		t.Errorf("from a size-0 tree with another root = %v; want ErrInconsistent", err)
	}
	if err := CheckConsistency(empty, seven, tlog.TreeProof{h}); !errors.Is(err, ErrInconsistent) {
		t.Errorf("from the empty tree with a proof = %v; want ErrInconsistent", err)
	}
	if err := CheckConsistency(seven, seven, tlog.TreeProof{h}); !errors.Is(err, ErrInconsistent) {
		t.Errorf("between equal trees with a proof = %v; want ErrInconsistent", err)
	}
}
