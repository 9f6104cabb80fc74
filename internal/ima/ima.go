// Package ima parses and replays the Linux IMA (Integrity Measurement Architecture)
// measurement list: the kernel measures every executable, library and file its IMA
// policy names before it is used, appends an entry to the list and extends PCR 10
// with the entry's template hash. Pure: no I/O, stdlib only.
//
// The format is the kernel's binary list for the SHA-256 bank
// (/sys/kernel/security/ima/binary_runtime_measurements_sha256; the plain
// binary_runtime_measurements on kernels that list one bank, when that bank is
// SHA-256), each entry:
//
//	u32 PCR (little endian) | 32-byte template hash | u32 name length | template name |
//	u32 data length | template data
//
// with the ima-ng template: data = u32 len | "sha256:\0" digest (d-ng) | u32 len | path
// "\0" (n-ng), and template hash = SHA-256(data). The ima-sig template appends the
// file's signature (u32 len | the security.ima xattr: an IMA signature, or nothing when
// the file has none). A "violation" (a file measured while open for writing) is listed
// with a zero template hash and extends 0xFF…FF.
package ima

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
)

// PCR is the PCR IMA extends.
const PCR = 10

// Bounds of a parsed list.
const (
	MaxEntries = 100_000
	MaxPath    = 4096
	MaxSig     = 1024
	// MaxLogBytes bounds a list a check-in may carry.
	MaxLogBytes = 2 << 20
)

// ErrMalformed is wrapped by every Parse error.
var ErrMalformed = errors.New("ima: malformed measurement list")

// Entry is one measurement.
type Entry struct {
	PCR          int
	TemplateHash [32]byte
	Template     string // "ima-ng" or "ima-sig"
	// Alg and Digest are the measured file's hash (d-ng), e.g. "sha256"; Path is its
	// name when it was measured (n-ng). Empty for a template other than ima-ng and
	// ima-sig.
	Alg    string
	Digest []byte
	Path   string
	// Sig is the file's IMA signature (ima-sig; the security.ima extended attribute as
	// the kernel read it, not verified here), empty when it has none.
	Sig []byte
	// Violation: measured while open for writing (zero template hash).
	Violation bool
}

// DigestHex is the file digest in lowercase hex.
func (e Entry) DigestHex() string { return hex.EncodeToString(e.Digest) }

// Parse decodes a binary measurement list (SHA-256 template hashes). It checks every
// ima-ng and ima-sig entry's template hash against its data, so the file digest, path
// and signature read are the ones that were extended. Entries of other templates are
// kept with only their template hash.
func Parse(b []byte) ([]Entry, error) {
	if len(b) > MaxLogBytes {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrMalformed, len(b), MaxLogBytes)
	}
	var out []Entry
	r := bytes.NewReader(b)
	for r.Len() > 0 {
		n := len(out)
		if n >= MaxEntries {
			return nil, fmt.Errorf("%w: more than %d entries", ErrMalformed, MaxEntries)
		}
		var e Entry
		pcr, err := u32(r)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: %v", ErrMalformed, n, err)
		}
		if pcr > 23 {
			return nil, fmt.Errorf("%w: entry %d: PCR %d", ErrMalformed, n, pcr)
		}
		e.PCR = int(pcr)
		if _, err := io.ReadFull(r, e.TemplateHash[:]); err != nil {
			return nil, fmt.Errorf("%w: entry %d: template hash: %v", ErrMalformed, n, err)
		}
		name, err := field(r, 255)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: template name: %v", ErrMalformed, n, err)
		}
		e.Template = string(name)
		data, err := field(r, MaxPath+MaxSig+256)
		if err != nil {
			return nil, fmt.Errorf("%w: entry %d: template data: %v", ErrMalformed, n, err)
		}
		e.Violation = e.TemplateHash == [32]byte{}
		if e.Template == "ima-ng" || e.Template == "ima-sig" {
			if err := e.parseNG(data); err != nil {
				return nil, fmt.Errorf("%w: entry %d: %v", ErrMalformed, n, err)
			}
			if !e.Violation && sha256.Sum256(data) != e.TemplateHash {
				return nil, fmt.Errorf("%w: entry %d (%s): the template hash is not SHA-256 of its data", ErrMalformed, n, e.Path)
			}
		}
		out = append(out, e)
	}
	return out, nil
}

func u32(r *bytes.Reader) (uint32, error) {
	var b [4]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(b[:]), nil
}

func field(r *bytes.Reader, max int) ([]byte, error) {
	l, err := u32(r)
	if err != nil {
		return nil, err
	}
	if int(l) > max || int(l) > r.Len() {
		return nil, fmt.Errorf("length %d out of bounds", l)
	}
	b := make([]byte, l)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}

func (e *Entry) parseNG(data []byte) error {
	r := bytes.NewReader(data)
	d, err := field(r, 128)
	if err != nil {
		return fmt.Errorf("d-ng: %v", err)
	}
	alg, digest, ok := bytes.Cut(d, []byte(":\x00"))
	if !ok || len(alg) == 0 {
		return fmt.Errorf("d-ng: no algorithm prefix")
	}
	e.Alg, e.Digest = string(alg), digest
	if e.Alg == "sha256" && len(digest) != sha256.Size {
		return fmt.Errorf("d-ng: sha256 digest of %d bytes", len(digest))
	}
	p, err := field(r, MaxPath)
	if err != nil {
		return fmt.Errorf("n-ng: %v", err)
	}
	path, ok := strings.CutSuffix(string(p), "\x00")
	if !ok || strings.ContainsRune(path, 0) {
		return fmt.Errorf("n-ng: path not NUL-terminated")
	}
	e.Path = path
	if e.Template == "ima-sig" {
		if e.Sig, err = field(r, MaxSig); err != nil {
			return fmt.Errorf("sig: %v", err)
		}
	}
	if r.Len() != 0 {
		return fmt.Errorf("%s: %d bytes after its fields", e.Template, r.Len())
	}
	return nil
}

// Replay returns the SHA-256 values the entries extend into each PCR, from zero.
func Replay(entries []Entry) map[int][32]byte {
	out := map[int][32]byte{}
	for _, e := range entries {
		d := e.ExtendDigest()
		cur := out[e.PCR]
		out[e.PCR] = sha256.Sum256(append(cur[:], d[:]...))
	}
	return out
}

// BootAggregate is the file digest of the kernel's first entry, boot_aggregate, in
// the SHA-256 bank: SHA-256 of PCRs 0..last concatenated (last 7; 9 on kernels from
// Linux 5.8, which add PCRs 8 and 9, the kernel command line and image GRUB measures,
// for banks other than SHA-1). ok is false when a PCR is missing from pcrs.
func BootAggregate(pcrs map[int][]byte, last int) (d [32]byte, ok bool) {
	h := sha256.New()
	for i := 0; i <= last; i++ {
		if len(pcrs[i]) != sha256.Size {
			return d, false
		}
		h.Write(pcrs[i])
	}
	return [32]byte(h.Sum(nil)), true
}

// ExtendDigest is what the entry extended: its template hash, or all 0xFF for a
// violation.
func (e Entry) ExtendDigest() [32]byte {
	if e.Violation {
		return [32]byte(bytes.Repeat([]byte{0xff}, 32))
	}
	return e.TemplateHash
}

// NG builds an ima-ng entry for PCR 10 as the kernel does: the file's SHA-256 digest
// and path.
func NG(path string, digest [32]byte) Entry {
	return Entry{PCR: PCR, Template: "ima-ng", Alg: "sha256", Digest: digest[:], Path: path,
		TemplateHash: sha256.Sum256(ngData("sha256", digest[:], path))}
}

// Sig builds an ima-sig entry for PCR 10 as the kernel does: the file's SHA-256
// digest, path and signature (nil: the file has none).
func Sig(path string, digest [32]byte, sig []byte) Entry {
	return Entry{PCR: PCR, Template: "ima-sig", Alg: "sha256", Digest: digest[:], Path: path, Sig: sig,
		TemplateHash: sha256.Sum256(templateData("ima-sig", "sha256", digest[:], path, sig))}
}

func ngData(alg string, digest []byte, path string) []byte {
	return templateData("ima-ng", alg, digest, path, nil)
}

func templateData(template, alg string, digest []byte, path string, sig []byte) []byte {
	var b bytes.Buffer
	d := append([]byte(alg+":\x00"), digest...)
	binary.Write(&b, binary.LittleEndian, uint32(len(d)))
	b.Write(d)
	binary.Write(&b, binary.LittleEndian, uint32(len(path)+1))
	b.WriteString(path)
	b.WriteByte(0)
	if template == "ima-sig" {
		binary.Write(&b, binary.LittleEndian, uint32(len(sig)))
		b.Write(sig)
	}
	return b.Bytes()
}

// Marshal encodes entries in the binary list format (ima-ng and ima-sig entries only:
// their template data is rebuilt from Alg, Digest, Path and Sig; TemplateHash is
// written as is).
func Marshal(entries []Entry) []byte {
	var b bytes.Buffer
	for _, e := range entries {
		binary.Write(&b, binary.LittleEndian, uint32(e.PCR))
		b.Write(e.TemplateHash[:])
		binary.Write(&b, binary.LittleEndian, uint32(len(e.Template)))
		b.WriteString(e.Template)
		data := templateData(e.Template, e.Alg, e.Digest, e.Path, e.Sig)
		binary.Write(&b, binary.LittleEndian, uint32(len(data)))
		b.Write(data)
	}
	return b.Bytes()
}
