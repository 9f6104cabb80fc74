package audit

import (
	"crypto/ed25519"
	"time"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// The checkpoint format and checks live in internal/checkpoint (the agent uses them too);
// these names keep the log's API in one place.

// Checkpoint is a signed checkpoint of the log (C2SP tlog-checkpoint).
type Checkpoint = checkpoint.Checkpoint

// QuorumError says a checkpoint lacks enough witness cosignatures.
type QuorumError = checkpoint.QuorumError

// CosignatureVerifier verifies a witness's cosignature/v1 signatures.
type CosignatureVerifier = checkpoint.CosignatureVerifier

// ErrInconsistent says a checkpoint does not extend an earlier one.
var ErrInconsistent = checkpoint.ErrInconsistent

// EmptyTreeHash is the root of the tree of no records (checkpoint.EmptyTreeHash).
var EmptyTreeHash = checkpoint.EmptyTreeHash

// ErrCheckpoint says a checkpoint's text is malformed.
var ErrCheckpoint = checkpoint.ErrMalformed

const maxNote = checkpoint.MaxNote

func checkpointText(origin string, size int64, h tlog.Hash) string {
	return checkpoint.Body(origin, size, h)
}

// OpenCheckpoint verifies a checkpoint note (see checkpoint.Open).
func OpenCheckpoint(msg []byte, logKey note.Verifier, witnesses []note.Verifier, quorum int) (*Checkpoint, error) {
	return checkpoint.Open(msg, logKey, witnesses, quorum)
}

// ParseCheckpointUnverified reads a checkpoint's text without checking signatures.
func ParseCheckpointUnverified(msg []byte) (*Checkpoint, error) {
	return checkpoint.ParseUnverified(msg)
}

// Signer is an Ed25519 note signer for a log.
func Signer(name string, key ed25519.PrivateKey) (note.Signer, error) {
	return checkpoint.Signer(name, key)
}

// VerifierKey is the encoded note verifier key of an Ed25519 key.
func VerifierKey(name string, pub ed25519.PublicKey) (string, error) {
	return checkpoint.VerifierKey(name, pub)
}

// CosignerKey is the encoded verifier key of a witness's cosignature/v1 key.
func CosignerKey(name string, pub ed25519.PublicKey) string { return checkpoint.CosignerKey(name, pub) }

// Cosigner is a witness's cosignature/v1 signer.
func Cosigner(name string, key ed25519.PrivateKey, now func() time.Time) note.Signer {
	return checkpoint.Cosigner(name, key, now)
}

// ParseVerifier parses an encoded verifier key (Ed25519 or cosignature/v1).
func ParseVerifier(vkey string) (note.Verifier, error) { return checkpoint.ParseVerifier(vkey) }

// CosignatureTime returns the time in a cosignature/v1 signature.
func CosignatureTime(s note.Signature) (time.Time, bool) { return checkpoint.CosignatureTime(s) }

// CheckConsistency verifies that newer extends older with proof p.
func CheckConsistency(older, newer *Checkpoint, p tlog.TreeProof) error {
	return checkpoint.CheckConsistency(older, newer, p)
}

// Next accepts next after lastSeen only with a valid consistency proof (see checkpoint.Next).
func Next(logKey note.Verifier, lastSeen, next []byte, proof tlog.TreeProof) (*Checkpoint, error) {
	return checkpoint.Next(logKey, lastSeen, next, proof)
}
