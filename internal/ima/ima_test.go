package ima

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"testing"
)

func TestRoundTripAndReplay(t *testing.T) {
	entries := []Entry{NG("boot_aggregate", sha256.Sum256([]byte("pcrs"))), NG("/usr/bin/edgeward-agent", sha256.Sum256([]byte("agent")))}
	v := NG("/var/log/x", sha256.Sum256([]byte("x")))
	v.TemplateHash, v.Violation = [32]byte{}, true
	entries = append(entries, v)
	got, err := Parse(Marshal(entries))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[1].Path != "/usr/bin/edgeward-agent" || got[1].DigestHex() != hexOf(sha256.Sum256([]byte("agent"))) || !got[2].Violation {
		t.Fatalf("Parse(Marshal) = %+v", got)
	}
	// PCR 10 = SHA-256(SHA-256(SHA-256(0 | h0) | h1) | ff…ff)
	var pcr [32]byte
	for _, e := range entries {
		d := e.ExtendDigest()
		pcr = sha256.Sum256(append(pcr[:], d[:]...))
	}
	if Replay(got)[PCR] != pcr {
		t.Fatal("Replay does not fold the template hashes into PCR 10")
	}
	if d := got[2].ExtendDigest(); d[0] != 0xff || d[31] != 0xff {
		t.Fatal("a violation must extend 0xff…ff")
	}
}

func TestParseRejects(t *testing.T) {
	good := Marshal([]Entry{NG("/usr/bin/edgeward-agent", sha256.Sum256([]byte("agent")))})
	edited := append([]byte(nil), good...)
	edited[len(edited)-3] ^= 1 // a byte of the path: the template hash no longer matches
	for name, b := range map[string][]byte{
		"truncated":   good[:len(good)-1],
		"path edited": edited,
		"short":       good[:10],
		"PCR 99":      append([]byte{99, 0, 0, 0}, good[4:]...),
	} {
		if _, err := Parse(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("Parse(%s) = %v; want ErrMalformed", name, err)
		}
	}
}

// TestSig: ima-sig entries (the file's signature after d-ng and n-ng) parse, their
// template hash covers the signature, and a list mixing both templates replays.
func TestSig(t *testing.T) {
	sig := append([]byte{3, 2, 4, 0x8f, 0xa1, 0x1c, 0x7e, 0, 4}, []byte("sign")...) // v2 header, key ID, length, bytes
	entries := []Entry{NG("boot_aggregate", sha256.Sum256([]byte("pcrs"))), Sig("/usr/bin/edgeward-agent", sha256.Sum256([]byte("agent")), sig), Sig("/usr/bin/unsigned", sha256.Sum256([]byte("u")), nil)}
	b := Marshal(entries)
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[1].Template != "ima-sig" || got[1].Path != "/usr/bin/edgeward-agent" || string(got[1].Sig) != string(sig) || len(got[2].Sig) != 0 || got[2].Path != "/usr/bin/unsigned" {
		t.Fatalf("Parse(ima-sig list) = %+v", got)
	}
	if Replay(got)[PCR] != Replay(entries)[PCR] {
		t.Fatal("Replay of the parsed ima-sig list differs")
	}
	// The signature is covered: one byte of it changed breaks the template hash.
	i := bytes.Index(b, []byte("sign"))
	edited := bytes.Clone(b)
	edited[i] ^= 1
	if _, err := Parse(edited); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Parse(signature edited) = %v; want ErrMalformed", err)
	}
	// An ima-ng entry's data with a signature field appended is not ima-ng.
	ng := NG("/usr/bin/x", sha256.Sum256(nil))
	ng.Template = "ima-sig" // the hash is ima-ng's, the data ima-sig's
	if _, err := Parse(Marshal([]Entry{ng})); !errors.Is(err, ErrMalformed) {
		t.Fatalf("Parse(ima-sig data under an ima-ng hash) = %v; want ErrMalformed", err)
	}
}

func hexOf(d [32]byte) string { return Entry{Digest: d[:]}.DigestHex() }
