// Package checkpoint reads, signs and checks the audit log's checkpoints: C2SP
// tlog-checkpoint signed notes (golang.org/x/mod/sumdb/note), cosignatures
// (C2SP tlog-cosignature, cosignature/v1) and the consistency between two checkpoints
// (golang.org/x/mod/sumdb/tlog). It is what every witness of the log runs: an
// `edgeward audit witness`, an auditor, and each device, which is why it lives apart from
// the server's log (the agent must not link the server).
package checkpoint

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// A Checkpoint is a signed statement of the log's tree head, in the C2SP tlog-checkpoint
// format: a signed note whose text is the origin line, the tree size and the base64 root
// hash. Witnesses add cosignatures (C2SP tlog-cosignature, cosignature/v1) to the same
// note.
type Checkpoint struct {
	Origin string
	Size   int64
	Hash   tlog.Hash
	// Note is the whole signed note (text, blank line, signature lines) as served.
	Note []byte
}

// Tree is the checkpoint's tree head.
func (c *Checkpoint) Tree() tlog.Tree { return tlog.Tree{N: c.Size, Hash: c.Hash} }

// Text is the signed text of the note (without signatures).
func (c *Checkpoint) Text() string { return Body(c.Origin, c.Size, c.Hash) }

// Body is the text of a checkpoint note: origin, size and base64 root hash lines.
func Body(origin string, size int64, h tlog.Hash) string {
	return fmt.Sprintf("%s\n%d\n%s\n", origin, size, h)
}

// MaxNote bounds a checkpoint note read from an untrusted source.
const MaxNote = 16 << 10

// ErrMalformed says a checkpoint's text is malformed.
var ErrMalformed = errors.New("malformed checkpoint")

// MaxTreeSize bounds the tree size a checkpoint may state: far beyond any real log, and
// well under what golang.org/x/mod/sumdb/tlog's proofs handle. Over 2^62 its proof checks
// (maxpow2) loop for ever: one checkpoint signed with the log key and sized 2^62+1 held a
// witness's lock, and so the witness, for good, and a verifier ignored SIGTERM
// (found by an outside audit, 1 Dec).
const MaxTreeSize = 1 << 48

// parseCheckpointText parses the text of a checkpoint note. Extension lines after the root
// hash are allowed and ignored, as the format says; a tree size over MaxTreeSize is
// malformed.
func parseCheckpointText(text string) (origin string, size int64, h tlog.Hash, err error) {
	lines := strings.SplitN(text, "\n", 4)
	if len(lines) < 4 || lines[0] == "" {
		return "", 0, h, fmt.Errorf("%w: want origin, size and root hash lines", ErrMalformed)
	}
	size, err = strconv.ParseInt(lines[1], 10, 64)
	if err != nil || size < 0 || strconv.FormatInt(size, 10) != lines[1] {
		return "", 0, h, fmt.Errorf("%w: tree size %q", ErrMalformed, lines[1])
	}
	if size > MaxTreeSize {
		return "", 0, h, fmt.Errorf("%w: tree size %d is over %d", ErrMalformed, size, int64(MaxTreeSize))
	}
	if h, err = tlog.ParseHash(lines[2]); err != nil {
		return "", 0, h, fmt.Errorf("%w: root hash %q", ErrMalformed, lines[2])
	}
	if ext := lines[3]; ext != "" {
		// C2SP tlog-checkpoint: extension lines, if any, are not empty.
		for _, ln := range strings.Split(strings.TrimSuffix(ext, "\n"), "\n") {
			if ln == "" {
				return "", 0, h, fmt.Errorf("%w: an empty extension line", ErrMalformed)
			}
		}
	}
	return lines[0], size, h, nil
}

// Open verifies a checkpoint note: it must be signed by the log's key (logKey),
// its origin must be that key's name, and at least quorum of the witnesses must have
// cosigned it. Signatures by keys not listed are ignored. The errors name what is missing.
func Open(msg []byte, logKey note.Verifier, witnesses []note.Verifier, quorum int) (*Checkpoint, error) {
	if len(msg) > MaxNote {
		return nil, fmt.Errorf("%w: note longer than %d bytes", ErrMalformed, MaxNote)
	}
	seen := map[string]bool{fmt.Sprintf("%s+%08x", logKey.Name(), logKey.KeyHash()): true}
	for _, w := range witnesses {
		id := fmt.Sprintf("%s+%08x", w.Name(), w.KeyHash())
		if seen[id] {
			// Given twice, a key counted for nothing ("cosigned by 0 of the trusted
			// witnesses" where it had cosigned) and could pass for two of a quorum.
			return nil, fmt.Errorf("checkpoint: key %s given twice (the log key and each witness once)", id)
		}
		seen[id] = true
	}
	known := note.VerifierList(append([]note.Verifier{logKey}, witnesses...)...)
	msg, dropped := dropBadSignatures(msg, known)
	n, err := note.Open(msg, known)
	if err != nil {
		var inv *note.InvalidSignatureError
		switch {
		case slices.Contains(dropped, logKey.Name()):
			// Its line was dropped as not verifying: the text was changed under the
			// log's signature (it read "malformed note" before).
			return nil, fmt.Errorf("checkpoint: not signed by the log key %s: its signature line does not verify (the checkpoint was changed after it was signed)", logKey.Name())
		case errors.As(err, &inv):
			return nil, fmt.Errorf("checkpoint: signature by %s (%08x) does not verify: %w", inv.Name, inv.Hash, err)
		case errors.As(err, new(*note.UnverifiedNoteError)):
			return nil, fmt.Errorf("checkpoint: not signed by the log key %s: %w", logKey.Name(), err)
		}
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	logSigned := false
	cosigned := map[string]bool{}
	for _, s := range n.Sigs {
		if s.Name == logKey.Name() && s.Hash == logKey.KeyHash() {
			logSigned = true
			continue
		}
		cosigned[fmt.Sprintf("%s+%08x", s.Name, s.Hash)] = true
	}
	if !logSigned {
		return nil, fmt.Errorf("checkpoint: not signed by the log key %s", logKey.Name())
	}
	origin, size, h, err := parseCheckpointText(n.Text)
	if err != nil {
		return nil, err
	}
	if origin != logKey.Name() {
		return nil, fmt.Errorf("checkpoint: origin %q is not the log key's name %q", origin, logKey.Name())
	}
	if len(cosigned) < quorum {
		var names []string
		for _, w := range witnesses {
			names = append(names, w.Name())
		}
		return nil, &QuorumError{Size: size, Have: len(cosigned), Want: quorum, Witnesses: names}
	}
	return &Checkpoint{Origin: origin, Size: size, Hash: h, Note: msg}, nil
}

// dropBadSignatures returns msg without the signature lines that cannot count: a line
// that is malformed, or by a known key (the log's or a trusted witness's) whose
// signature does not verify, and lines past note's limit of 100. A checkpoint carries
// lines added by others (each witness's cosignature, stored by the log's server), and
// note.Open refuses the whole note for one bad line: a single dishonest or broken witness
// could otherwise make every checkpoint it touched unreadable to the server, the devices
// and the auditors, or, with a line forged under another witness's name, cost that
// witness its cosignature. A dropped line is simply not counted; the log's own valid
// signature and the quorum are still required. msg is returned as is when every line
// is fine, and unchanged when it has no signature block (Open then reports it).
func dropBadSignatures(msg []byte, known note.Verifiers) ([]byte, []string) {
	split := bytes.LastIndex(msg, []byte("\n\n"))
	if split < 0 || !bytes.HasSuffix(msg, []byte("\n")) {
		return msg, nil
	}
	var names []string
	text, sigs := msg[:split+1], msg[split+2:]
	out := append(slices.Clone(text), '\n')
	kept, dropped := 0, false
	for len(sigs) > 0 {
		i := bytes.IndexByte(sigs, '\n')
		line := sigs[:i+1]
		sigs = sigs[i+1:]
		_, err := note.Open(append(append(slices.Clone(text), '\n'), line...), known)
		if (err == nil || errors.As(err, new(*note.UnverifiedNoteError))) && kept < 100 {
			out = append(out, line...)
			kept++
			continue
		}
		dropped = true
		if name, _, ok := strings.Cut(strings.TrimPrefix(string(line), "\u2014 "), " "); ok {
			names = append(names, name)
		}
	}
	if !dropped {
		return msg, nil
	}
	return out, names
}

// QuorumError says a checkpoint lacks enough witness cosignatures.
type QuorumError struct {
	Size       int64
	Have, Want int
	Witnesses  []string
}

func (e *QuorumError) Error() string {
	return fmt.Sprintf("checkpoint at size %d is cosigned by %d of the trusted witnesses %v; the quorum is %d", e.Size, e.Have, e.Witnesses, e.Want)
}

// ParseUnverified reads a checkpoint note's text without checking any signature:
// for display and for finding which key to check it with. Never trust its result.
func ParseUnverified(msg []byte) (*Checkpoint, error) {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return nil, fmt.Errorf("%w: no signature block", ErrMalformed)
	}
	origin, size, h, err := parseCheckpointText(string(msg[:i+1]))
	if err != nil {
		return nil, err
	}
	return &Checkpoint{Origin: origin, Size: size, Hash: h, Note: msg}, nil
}

// Signer is an Ed25519 note signer for a log (the log's origin is its name).
func Signer(name string, key ed25519.PrivateKey) (note.Signer, error) {
	vkey, err := note.NewEd25519VerifierKey(name, key.Public().(ed25519.PublicKey))
	if err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("audit key name %q: %w", name, err)
	}
	return &edSigner{name: name, hash: v.KeyHash(), key: key}, nil
}

type edSigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
}

func (s *edSigner) Name() string                    { return s.name }
func (s *edSigner) KeyHash() uint32                 { return s.hash }
func (s *edSigner) Sign(msg []byte) ([]byte, error) { return ed25519.Sign(s.key, msg), nil }

// VerifierKey is the encoded note verifier key ("name+hash+base64") of a log or witness
// Ed25519 key: what an auditor is given to trust.
func VerifierKey(name string, pub ed25519.PublicKey) (string, error) {
	return note.NewEd25519VerifierKey(name, pub)
}

// Cosignatures (C2SP tlog-cosignature, cosignature/v1): the witness signs
// "cosignature/v1\ntime <unix seconds>\n" followed by the checkpoint text, and the note
// signature is the 8-byte big-endian time followed by the Ed25519 signature. The key's
// algorithm byte is 0x04.
const algCosignatureV1 = 0x04

func cosignedMessage(t uint64, text []byte) []byte {
	return append(fmt.Appendf(nil, "cosignature/v1\ntime %d\n", t), text...)
}

func cosignKeyHash(name string, pub ed25519.PublicKey) uint32 {
	h := sha256.New()
	h.Write([]byte(name + "\n"))
	h.Write(append([]byte{algCosignatureV1}, pub...))
	return binary.BigEndian.Uint32(h.Sum(nil))
}

// CosignerKey is the encoded verifier key of a witness's cosignature/v1 key.
func CosignerKey(name string, pub ed25519.PublicKey) string {
	return fmt.Sprintf("%s+%08x+%s", name, cosignKeyHash(name, pub), base64.StdEncoding.EncodeToString(append([]byte{algCosignatureV1}, pub...)))
}

// Cosigner is a witness's cosignature/v1 signer. now gives the signing time (nil: time.Now).
func Cosigner(name string, key ed25519.PrivateKey, now func() time.Time) note.Signer {
	if now == nil {
		now = time.Now
	}
	pub := key.Public().(ed25519.PublicKey)
	return &cosigner{name: name, hash: cosignKeyHash(name, pub), key: key, now: now}
}

type cosigner struct {
	name string
	hash uint32
	key  ed25519.PrivateKey
	now  func() time.Time
}

func (s *cosigner) Name() string    { return s.name }
func (s *cosigner) KeyHash() uint32 { return s.hash }
func (s *cosigner) Sign(msg []byte) ([]byte, error) {
	t := uint64(s.now().Unix())
	sig := binary.BigEndian.AppendUint64(nil, t)
	return append(sig, ed25519.Sign(s.key, cosignedMessage(t, msg))...), nil
}

// CosignatureVerifier is a note.Verifier of cosignature/v1 signatures; it also reports
// the time of the last cosignature it verified.
type CosignatureVerifier struct {
	name string
	hash uint32
	pub  ed25519.PublicKey
}

func (v *CosignatureVerifier) Name() string    { return v.name }
func (v *CosignatureVerifier) KeyHash() uint32 { return v.hash }
func (v *CosignatureVerifier) Verify(msg, sig []byte) bool {
	if len(sig) != 8+ed25519.SignatureSize || binary.BigEndian.Uint64(sig[:8]) > math.MaxInt64 {
		return false // C2SP tlog-cosignature: the timestamp does not exceed 2^63-1
	}
	return ed25519.Verify(v.pub, cosignedMessage(binary.BigEndian.Uint64(sig[:8]), msg), sig[8:])
}

// ParseVerifier parses an encoded verifier key: an Ed25519 note key (algorithm 1, a log's
// or a witness's plain signature) or a cosignature/v1 key (algorithm 4).
func ParseVerifier(vkey string) (note.Verifier, error) {
	vkey = strings.TrimSpace(vkey)
	name, rest, _ := strings.Cut(vkey, "+")
	hash16, key64, _ := strings.Cut(rest, "+")
	key, err := base64.StdEncoding.DecodeString(key64)
	if err == nil && len(key) == 1+ed25519.PublicKeySize && key[0] == algCosignatureV1 {
		pub := ed25519.PublicKey(key[1:])
		h, err := strconv.ParseUint(hash16, 16, 32)
		if err != nil || len(hash16) != 8 || uint32(h) != cosignKeyHash(name, pub) || name == "" {
			return nil, fmt.Errorf("verifier key %q: malformed or wrong key hash", vkey)
		}
		return &CosignatureVerifier{name: name, hash: uint32(h), pub: pub}, nil
	}
	v, err := note.NewVerifier(vkey)
	if err != nil {
		return nil, fmt.Errorf("verifier key %q: %w", vkey, err)
	}
	return v, nil
}

// CosignatureTime returns the time in a cosignature/v1 signature line's signature
// (base64 of key hash, time, signature), or false if it is not one.
func CosignatureTime(s note.Signature) (time.Time, bool) {
	b, err := base64.StdEncoding.DecodeString(s.Base64)
	if err != nil || len(b) != 4+8+ed25519.SignatureSize {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.BigEndian.Uint64(b[4:12])), 0).UTC(), true
}

// CosignedAt is when a quorum of witnesses had cosigned the checkpoint msg: the
// quorum-th newest time among the cosignatures of witnesses that verify (each witness
// counted once). ok is false when fewer than quorum of them carry a time.
func CosignedAt(msg []byte, witnesses []note.Verifier, quorum int) (at time.Time, ok bool) {
	var times []time.Time
	for _, w := range witnesses {
		n, err := note.Open(msg, note.VerifierList(w))
		if err != nil || len(n.Sigs) != 1 {
			continue
		}
		if t, ok := CosignatureTime(n.Sigs[0]); ok {
			times = append(times, t)
		}
	}
	if quorum < 1 || len(times) < quorum {
		return time.Time{}, false
	}
	slices.SortFunc(times, func(a, b time.Time) int { return b.Compare(a) })
	return times[quorum-1], true
}

// ErrInconsistent says a checkpoint does not extend an earlier one: the log was forked,
// rewritten or rolled back.
var ErrInconsistent = errors.New("inconsistent checkpoints")

// EmptyTreeHash is the root hash of the tree of no records (RFC 6962 2.1: the SHA-256
// of the empty string), the only root a checkpoint of size 0 may state.
var EmptyTreeHash = tlog.Hash(sha256.Sum256(nil))

// checkEmptyTree refuses a checkpoint of size 0 whose root is not the empty tree's:
// cosigning two such roots would be a fork at size 0 (found from outside, 2 Dec; C2SP
// tlog-witness: 422).
func checkEmptyTree(c *Checkpoint) error {
	if c.Size == 0 && c.Hash != EmptyTreeHash {
		return fmt.Errorf("%w: a tree of size 0 whose root %s is not the empty tree's", ErrInconsistent, c.Hash)
	}
	return nil
}

// CheckConsistency verifies that checkpoint newer extends checkpoint older, with proof p
// (a tlog.TreeProof from older.Size to newer.Size). Both must be verified checkpoints of
// the same log.
func CheckConsistency(older, newer *Checkpoint, p tlog.TreeProof) error {
	switch {
	case older.Size < 0 || newer.Size < 0 || older.Size > MaxTreeSize || newer.Size > MaxTreeSize:
		return fmt.Errorf("%w: tree sizes %d and %d: each must be within 0 and %d", ErrMalformed, older.Size, newer.Size, int64(MaxTreeSize))
	case older.Origin != newer.Origin:
		return fmt.Errorf("%w: checkpoints of two logs (%q, %q)", ErrInconsistent, older.Origin, newer.Origin)
	case newer.Size < older.Size:
		return fmt.Errorf("%w: the tree went back from size %d to %d (rollback)", ErrInconsistent, older.Size, newer.Size)
	}
	if err := checkEmptyTree(older); err != nil {
		return err
	}
	if err := checkEmptyTree(newer); err != nil {
		return err
	}
	switch {
	case (older.Size == 0 || newer.Size == older.Size) && len(p) > 0:
		// RFC 6962 and C2SP tlog-witness: the proof from the empty tree, or between
		// trees of one size, is empty; one that is not does not verify.
		return fmt.Errorf("%w: a consistency proof of %d hashes from size %d to %d, where the proof is empty", ErrInconsistent, len(p), older.Size, newer.Size)
	case older.Size == 0:
		return nil
	case newer.Size == older.Size:
		if newer.Hash != older.Hash {
			return fmt.Errorf("%w: two different trees of size %d (fork)", ErrInconsistent, older.Size)
		}
		return nil
	}
	if err := tlog.CheckTree(p, newer.Size, newer.Hash, older.Size, older.Hash); err != nil {
		return fmt.Errorf("%w: the tree of size %d does not extend the one of size %d (fork or rewrite): %v", ErrInconsistent, newer.Size, older.Size, err)
	}
	return nil
}

// Next is what every witness of the log does, an `edgeward audit witness`, a device or an
// auditor: given the newest checkpoint it has verified (lastSeen, nil for none), it
// accepts next only if the log key signed it and proof shows it extends lastSeen. It
// returns the verified next checkpoint. An error wrapping ErrInconsistent means the log
// was forked, rewritten or rolled back: refuse it, report it, keep lastSeen.
func Next(logKey note.Verifier, lastSeen, next []byte, proof tlog.TreeProof) (*Checkpoint, error) {
	return NextQuorum(logKey, nil, 0, lastSeen, next, proof)
}

// NextQuorum is Next that also requires next to be cosigned by quorum of witnesses
// (Open): a holder of the log key alone can then show no one a fork of its own.
func NextQuorum(logKey note.Verifier, witnesses []note.Verifier, quorum int, lastSeen, next []byte, proof tlog.TreeProof) (*Checkpoint, error) {
	c, err := Open(next, logKey, witnesses, quorum)
	if err != nil {
		return nil, err
	}
	if lastSeen == nil {
		return c, checkEmptyTree(c)
	}
	last, err := Open(lastSeen, logKey, nil, 0)
	if err != nil {
		return nil, fmt.Errorf("last-seen checkpoint: %w", err)
	}
	if err := CheckConsistency(last, c, proof); err != nil {
		return nil, err
	}
	return c, nil
}
