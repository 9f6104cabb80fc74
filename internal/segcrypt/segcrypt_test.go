package segcrypt

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

const seg = MinSegmentSize

func payload(n int) []byte {
	p := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))
	for i := range p {
		p[i] = byte(r.Uint32())
	}
	return p
}

func seal(t testing.TB, key Key, plain []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	info, err := Encrypt(context.Background(), &buf, key, bytes.NewReader(plain), Options{SegmentSize: seg})
	if err != nil {
		t.Fatal(err)
	}
	if info.CipherLength != int64(buf.Len()) {
		t.Fatalf("Info.CipherLength = %d; wrote %d", info.CipherLength, buf.Len())
	}
	return buf.Bytes()
}

func TestRoundTrip(t *testing.T) {
	key, err := NewKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 1, seg - 1, seg, seg + 1, 3 * seg, 3*seg + 5} {
		plain := payload(n)
		var buf bytes.Buffer
		info, err := Encrypt(context.Background(), &buf, key, bytes.NewReader(plain), Options{SegmentSize: seg})
		if err != nil {
			t.Fatalf("Encrypt(%d bytes) = %v", n, err)
		}
		if info.PlainLength != int64(n) || info.PlainSHA256 != sha256.Sum256(plain) {
			t.Errorf("Encrypt(%d bytes) info = %d bytes, sha256 %x; want %d, %x", n, info.PlainLength, info.PlainSHA256, n, sha256.Sum256(plain))
		}
		if got, want := int64(buf.Len()), CipherLength(int64(n), seg); got != want || info.CipherLength != want {
			t.Errorf("Encrypt(%d bytes) wrote %d bytes (info %d); CipherLength says %d", n, got, info.CipherLength, want)
		}
		if bytes.Contains(buf.Bytes(), plain[:min(n, 64)]) && n >= 16 {
			t.Errorf("Encrypt(%d bytes): the plaintext's first bytes appear in the ciphertext", n)
		}
		r, err := NewReader(bytes.NewReader(buf.Bytes()), key)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(r)
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Reader of %d bytes = %d bytes, %v; want the plaintext", n, len(got), err)
		}
		got, err = Decrypt(context.Background(), bytes.NewReader(buf.Bytes()), key, int64(n))
		if err != nil || !bytes.Equal(got, plain) {
			t.Errorf("Decrypt(%d bytes) = %d bytes, %v; want the plaintext", n, len(got), err)
		}
	}
}

// TestFreshPrefix: two encryptions of one payload under one key differ (the nonce
// prefix is random), though the format asks for a fresh key per payload anyway.
func TestFreshPrefix(t *testing.T) {
	key, _ := NewKey(nil)
	plain := payload(100)
	if a, b := seal(t, key, plain), seal(t, key, plain); bytes.Equal(a, b) {
		t.Error("two encryptions are identical")
	}
}

// TestTamper: every kind of change to a payload is refused, and names the segment.
func TestTamper(t *testing.T) {
	key, _ := NewKey(nil)
	other, _ := NewKey(nil)
	plain := payload(3*seg + 100) // segments 0, 1, 2 full, 3 short and last
	ct := seal(t, key, plain)
	segLen := seg + tagSize
	at := func(i int) int { return HeaderSize + i*segLen }
	flip := func(off int) []byte {
		c := bytes.Clone(ct)
		c[off] ^= 0x01
		return c
	}
	swap := bytes.Clone(ct)
	copy(swap[at(1):at(2)], ct[at(2):at(3)])
	copy(swap[at(2):at(3)], ct[at(1):at(2)])
	dup := append(bytes.Clone(ct[:at(2)]), ct[at(1):]...)
	biggerSeg := bytes.Clone(ct)
	biggerSeg[len(magic)+3]++ // the segment size field: authenticated with every segment
	cases := []struct {
		name    string
		ct      []byte
		key     Key
		want    error
		segment string // in the error: where it was caught
	}{
		{"header nonce prefix", flip(HeaderSize - 1), key, ErrAuth, "segment 0 "},
		{"segment size field", biggerSeg, key, ErrAuth, "segment 0 "},
		{"magic", flip(0), key, ErrFormat, ""},
		{"first segment", flip(at(0) + 5), key, ErrAuth, "segment 0 "},
		{"middle segment's tag", flip(at(2) - 1), key, ErrAuth, "segment 1 "},
		{"last segment", flip(len(ct) - 20), key, ErrAuth, "segment 3 "},
		{"segments swapped", swap, key, ErrAuth, "segment 1 "},
		{"segment duplicated", dup, key, ErrAuth, "segment 2 "},
		{"cut at a segment boundary", ct[:at(3)], key, ErrAuth, "segment 2 "},
		{"cut inside a segment", ct[:at(3)+50], key, ErrAuth, "segment 3 "},
		{"cut inside a tag", ct[:at(3)+10], key, ErrAuth, "segment 3 "},
		{"byte appended", append(bytes.Clone(ct), 0), key, ErrAuth, "segment 3 "},
		{"segment appended", append(bytes.Clone(ct), ct[at(1):at(2)]...), key, ErrAuth, "segment 3 "},
		{"header only", ct[:HeaderSize], key, ErrAuth, "segment 0 "},
		{"shorter than the header", ct[:HeaderSize-1], key, ErrFormat, ""},
		{"wrong key", ct, other, ErrAuth, "segment 0 "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Decrypt(context.Background(), bytes.NewReader(c.ct), c.key, int64(len(plain)))
			if !errors.Is(err, c.want) {
				t.Fatalf("Decrypt = %v; want %v", err, c.want)
			}
			if c.segment != "" && !bytes.Contains([]byte(err.Error()+" "), []byte(c.segment)) {
				t.Errorf("Decrypt error %q does not name %q", err, c.segment)
			}
			// The streaming reader returns only authenticated plaintext before the error.
			r, err := NewReader(bytes.NewReader(c.ct), c.key)
			if err != nil {
				if !errors.Is(err, c.want) {
					t.Fatalf("NewReader = %v; want %v", err, c.want)
				}
				return
			}
			got, err := io.ReadAll(r)
			if !errors.Is(err, c.want) {
				t.Fatalf("Reader = %v; want %v", err, c.want)
			}
			if !bytes.Equal(got, plain[:len(got)]) || len(got)%seg != 0 {
				t.Errorf("Reader returned %d bytes before the error; want whole authenticated segments of the plaintext", len(got))
			}
		})
	}
}

func TestDecryptLength(t *testing.T) {
	key, _ := NewKey(nil)
	plain := payload(seg + 1)
	ct := seal(t, key, plain)
	for _, n := range []int64{0, seg, seg + 2} {
		if _, err := Decrypt(context.Background(), bytes.NewReader(ct), key, n); !errors.Is(err, ErrLength) {
			t.Errorf("Decrypt(length %d) of %d bytes = %v; want ErrLength", n, len(plain), err)
		}
	}
}

func TestSegmentSizeBounds(t *testing.T) {
	key, _ := NewKey(nil)
	for _, s := range []int{1, MinSegmentSize - 1, MaxSegmentSize + 1} {
		if _, err := Encrypt(context.Background(), io.Discard, key, bytes.NewReader(nil), Options{SegmentSize: s}); err == nil {
			t.Errorf("Encrypt(segment size %d) = nil; want an error", s)
		}
	}
	// A header that claims a huge segment is refused before anything is allocated.
	ct := seal(t, key, payload(10))
	ct[len(magic)] = 0xff
	if _, err := NewReader(bytes.NewReader(ct), key); !errors.Is(err, ErrFormat) {
		t.Errorf("NewReader(segment size 0xff......) = %v; want ErrFormat", err)
	}
}

// FuzzDecrypt: whatever the input, decryption does not panic, and it succeeds only for
// the ciphertext that was sealed: any other input that decrypted would be a forgery.
func FuzzDecrypt(f *testing.F) {
	var key Key
	key[0] = 1
	genuine := map[string]bool{}
	for _, n := range []int{0, 10, seg + 3} {
		// A fixed nonce prefix: each fuzz worker process builds the same seeds.
		var buf bytes.Buffer
		_, err := Encrypt(context.Background(), &buf, key, bytes.NewReader(payload(n)), Options{SegmentSize: seg, Rand: bytes.NewReader(make([]byte, prefixSize))})
		if err != nil {
			f.Fatal(err)
		}
		genuine[buf.String()] = true
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, ct []byte) {
		r, err := NewReader(bytes.NewReader(ct), key)
		if err != nil {
			return
		}
		if _, err := io.ReadAll(r); err == nil && !genuine[string(ct)] {
			t.Fatalf("a %d-byte input that was never sealed decrypted", len(ct))
		}
	})
}

func BenchmarkDecrypt(b *testing.B) {
	key, _ := NewKey(nil)
	plain := payload(16 << 20)
	var buf bytes.Buffer
	if _, err := Encrypt(context.Background(), &buf, key, bytes.NewReader(plain), Options{}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(plain)))
	for b.Loop() {
		if _, err := Decrypt(context.Background(), bytes.NewReader(buf.Bytes()), key, int64(len(plain))); err != nil {
			b.Fatal(err)
		}
	}
}
