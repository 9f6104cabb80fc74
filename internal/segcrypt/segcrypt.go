// Package segcrypt encrypts a payload (a model, a probe set) with AES-256-GCM in
// fixed-size authenticated segments, so that it can be decrypted while it streams,
// with memory bounded by one segment, and so that any change to it is caught at the
// segment it touches.
//
// The format (version 1):
//
//	header:  "EWSEG\x00\x01\n" | segment size (uint32, big endian) | nonce prefix (7 bytes)
//	segment: AES-256-GCM(key, nonce, plaintext[i*S:(i+1)*S], aad = header)
//	nonce:   nonce prefix | i (uint32, big endian) | 1 for the last segment, else 0
//
// Every segment but the last holds exactly S plaintext bytes; the last holds 0 to S
// (an empty payload is one empty last segment). Each segment carries a 16-byte tag.
// Because the index and the last-segment flag are part of each nonce, and the header is
// authenticated with every segment:
//   - a modified byte anywhere fails the segment it is in (or, in the header, every one);
//   - reordered or duplicated segments fail at the first one out of place;
//   - a payload cut at a segment boundary fails at its new last segment (it was sealed
//     as "not last"), and bytes appended after the last segment fail too.
//
// A content key must encrypt one payload only: the nonce prefix is random, but the
// format relies on a fresh key per payload (NewKey) rather than on the prefix. Re-
// encrypting a payload means a new key.
package segcrypt

import (
	"bufio"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// KeySize is the length of a content key (AES-256).
const KeySize = 32

// Key is a content key. Treat it as secret: it decrypts the payload it was made for.
type Key [KeySize]byte

const (
	magic = "EWSEG\x00\x01\n"
	// HeaderSize is the length of the header before the first segment.
	HeaderSize  = len(magic) + 4 + prefixSize
	prefixSize  = 7
	tagSize     = 16
	nonceSize   = 12
	maxSegments = 1 << 32
)

// Segment size bounds and default.
const (
	MinSegmentSize     = 4 << 10
	MaxSegmentSize     = 16 << 20
	DefaultSegmentSize = 64 << 10
)

// Errors of decryption. Each is wrapped with the segment it was found at.
var (
	// ErrFormat: the input is not a segcrypt payload of a version this package reads.
	ErrFormat = errors.New("segcrypt: not an encrypted payload")
	// ErrAuth: a segment failed authentication: the ciphertext was modified,
	// reordered, truncated or extended, or the key is not the payload's.
	ErrAuth = errors.New("segcrypt: segment failed authentication (tampered, reordered or truncated ciphertext, or the wrong key)")
	// ErrLength: the plaintext is not as long as the caller expects.
	ErrLength = errors.New("segcrypt: plaintext length differs from the expected length")
)

// NewKey returns a fresh random content key from r (crypto/rand when nil).
func NewKey(r io.Reader) (Key, error) {
	if r == nil {
		r = rand.Reader
	}
	var k Key
	if _, err := io.ReadFull(r, k[:]); err != nil {
		return Key{}, fmt.Errorf("segcrypt: content key: %w", err)
	}
	return k, nil
}

// Options configure Encrypt. The zero value is ready to use.
type Options struct {
	// SegmentSize is the plaintext bytes per segment; 0 means DefaultSegmentSize.
	SegmentSize int
	// Rand supplies the nonce prefix; nil means crypto/rand.
	Rand io.Reader
}

// Info describes an encrypted payload.
type Info struct {
	SegmentSize  int
	PlainLength  int64
	PlainSHA256  [sha256.Size]byte
	CipherLength int64
}

// CipherLength is the length of the encryption of plain bytes in segments of seg bytes.
func CipherLength(plain int64, seg int) int64 {
	n := plain / int64(seg)
	if plain%int64(seg) != 0 || plain == 0 {
		n++
	}
	return int64(HeaderSize) + plain + n*tagSize
}

func newAEAD(key Key) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key[:])
	if err != nil {
		return nil, fmt.Errorf("segcrypt: %w", err)
	}
	return cipher.NewGCM(b)
}

func nonce(dst *[nonceSize]byte, prefix []byte, i uint32, last bool) []byte {
	copy(dst[:prefixSize], prefix)
	binary.BigEndian.PutUint32(dst[prefixSize:], i)
	dst[nonceSize-1] = 0
	if last {
		dst[nonceSize-1] = 1
	}
	return dst[:]
}

// Encrypt reads src to its end and writes its encryption under key to dst. Its memory
// is about two segments. It returns what it wrote, including the plaintext's SHA-256.
func Encrypt(ctx context.Context, dst io.Writer, key Key, src io.Reader, opt Options) (Info, error) {
	seg := opt.SegmentSize
	if seg == 0 {
		seg = DefaultSegmentSize
	}
	if seg < MinSegmentSize || seg > MaxSegmentSize {
		return Info{}, fmt.Errorf("segcrypt: segment size %d outside [%d, %d]", seg, MinSegmentSize, MaxSegmentSize)
	}
	r := opt.Rand
	if r == nil {
		r = rand.Reader
	}
	aead, err := newAEAD(key)
	if err != nil {
		return Info{}, err
	}
	header := make([]byte, HeaderSize)
	copy(header, magic)
	binary.BigEndian.PutUint32(header[len(magic):], uint32(seg))
	prefix := header[len(magic)+4:]
	if _, err := io.ReadFull(r, prefix); err != nil {
		return Info{}, fmt.Errorf("segcrypt: nonce prefix: %w", err)
	}
	info := Info{SegmentSize: seg}
	if _, err := dst.Write(header); err != nil {
		return info, fmt.Errorf("segcrypt: write: %w", err)
	}
	info.CipherLength = int64(HeaderSize)
	h := sha256.New()
	// Read one byte past each segment to know whether it is the last.
	br := bufio.NewReaderSize(src, seg+1)
	cur := make([]byte, seg)
	out := make([]byte, 0, seg+tagSize)
	var nb [nonceSize]byte
	for i := uint64(0); ; i++ {
		if err := ctx.Err(); err != nil {
			return info, err
		}
		if i >= maxSegments {
			return info, fmt.Errorf("segcrypt: payload longer than %d segments", uint64(maxSegments))
		}
		n, err := io.ReadFull(br, cur)
		if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
			return info, fmt.Errorf("segcrypt: read: %w", err)
		}
		last := n < seg
		if !last {
			if _, perr := br.Peek(1); perr == io.EOF {
				last = true
			} else if perr != nil {
				return info, fmt.Errorf("segcrypt: read: %w", perr)
			}
		}
		h.Write(cur[:n])
		out = aead.Seal(out[:0], nonce(&nb, prefix, uint32(i), last), cur[:n], header)
		if _, err := dst.Write(out); err != nil {
			return info, fmt.Errorf("segcrypt: write: %w", err)
		}
		info.PlainLength += int64(n)
		info.CipherLength += int64(len(out))
		if last {
			break
		}
	}
	h.Sum(info.PlainSHA256[:0])
	return info, nil
}

// Reader decrypts a payload as it reads it. It returns plaintext only from segments
// that authenticated; at the first one that does not, Read returns an error wrapping
// ErrAuth that names the segment. A Reader is not safe for concurrent use.
type Reader struct {
	br     *bufio.Reader
	aead   cipher.AEAD
	header []byte
	prefix []byte
	seg    int
	i      uint64
	buf    []byte // ciphertext of the current segment, then its plaintext
	plain  []byte // unread plaintext of the current segment
	done   bool
	err    error
	n      int64 // plaintext returned so far
}

// NewReader reads the header from src and returns a Reader of its plaintext.
func NewReader(src io.Reader, key Key) (*Reader, error) {
	header := make([]byte, HeaderSize)
	if _, err := io.ReadFull(src, header); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, fmt.Errorf("%w: shorter than its header", ErrFormat)
		}
		return nil, fmt.Errorf("segcrypt: read header: %w", err)
	}
	if string(header[:len(magic)]) != magic {
		return nil, fmt.Errorf("%w: bad magic or unknown version", ErrFormat)
	}
	seg := int(binary.BigEndian.Uint32(header[len(magic):]))
	if seg < MinSegmentSize || seg > MaxSegmentSize {
		return nil, fmt.Errorf("%w: segment size %d outside [%d, %d]", ErrFormat, seg, MinSegmentSize, MaxSegmentSize)
	}
	aead, err := newAEAD(key)
	if err != nil {
		return nil, err
	}
	return &Reader{
		br:     bufio.NewReaderSize(src, seg+tagSize+1),
		aead:   aead,
		header: header,
		prefix: header[len(magic)+4:],
		seg:    seg,
		buf:    make([]byte, seg+tagSize),
	}, nil
}

// SegmentSize is the payload's plaintext bytes per segment.
func (r *Reader) SegmentSize() int { return r.seg }

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.plain) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.err = r.next()
	}
	n := copy(p, r.plain)
	r.plain = r.plain[n:]
	r.n += int64(n)
	return n, nil
}

// next reads and opens the next segment into r.plain.
func (r *Reader) next() error {
	if r.i >= maxSegments {
		return fmt.Errorf("%w: more than %d segments", ErrFormat, uint64(maxSegments))
	}
	n, err := io.ReadFull(r.br, r.buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("segcrypt: read segment %d: %w", r.i, err)
	}
	last := n < len(r.buf)
	if !last {
		if _, perr := r.br.Peek(1); perr == io.EOF {
			last = true
		} else if perr != nil {
			return fmt.Errorf("segcrypt: read segment %d: %w", r.i, perr)
		}
	}
	if n < tagSize {
		return fmt.Errorf("%w: segment %d is %d bytes, shorter than its tag", ErrAuth, r.i, n)
	}
	var nb [nonceSize]byte
	plain, err := r.aead.Open(r.buf[:0], nonce(&nb, r.prefix, uint32(r.i), last), r.buf[:n], r.header)
	if err != nil {
		return fmt.Errorf("%w: segment %d (plaintext bytes %d to %d)", ErrAuth, r.i, r.i*uint64(r.seg), r.i*uint64(r.seg)+uint64(n-tagSize))
	}
	r.plain = plain
	r.done = last
	r.i++
	return nil
}

// Decrypt reads a whole payload into memory: exactly length plaintext bytes (the length
// its signed metadata gives), allocated once. A payload of another length is refused,
// and nothing is returned unless every segment authenticated.
func Decrypt(ctx context.Context, src io.Reader, key Key, length int64) ([]byte, error) {
	if length < 0 {
		return nil, fmt.Errorf("segcrypt: negative plaintext length %d", length)
	}
	r, err := NewReader(src, key)
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, length)
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if len(r.plain) == 0 && !r.done && r.err == nil {
			r.err = r.next()
		}
		if r.err != nil {
			return nil, r.err
		}
		if int64(len(out))+int64(len(r.plain)) > length {
			return nil, fmt.Errorf("%w: more than the %d bytes expected", ErrLength, length)
		}
		out = append(out, r.plain...)
		r.plain = nil
		if r.done {
			if int64(len(out)) != length {
				return nil, fmt.Errorf("%w: %d bytes, %d expected", ErrLength, len(out), length)
			}
			return out, nil
		}
	}
}
