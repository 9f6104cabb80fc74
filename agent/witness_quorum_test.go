package agent

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/wire"
)

// memTree is an RFC 6962 tree in memory (its stored hashes, tlog's layout).
type memTree struct {
	n      int64
	hashes []tlog.Hash
}

func (m *memTree) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		out[i] = m.hashes[x]
	}
	return out, nil
}

func (m *memTree) add(t *testing.T, records ...string) {
	t.Helper()
	for _, r := range records {
		hs, err := tlog.StoredHashes(m.n, []byte(r), m)
		if err != nil {
			t.Fatal(err)
		}
		m.hashes = append(m.hashes, hs...)
		m.n++
	}
}

func (m *memTree) root(t *testing.T) tlog.Hash {
	t.Helper()
	h, err := tlog.TreeHash(m.n, m)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// TestDeviceRequiresAWitnessQuorum: with witnesses and a quorum, a device accepts only
// checkpoints its witnesses cosigned. A holder of the log key alone (the server signs
// checkpoints online) showed a device a fork of its own, then a tree of 2^48 records,
// after which the device refused every honest answer for good (found from outside,
// 2 Dec); without cosignatures now neither is accepted.
func TestDeviceRequiresAWitnessQuorum(t *testing.T) {
	_, logPriv, _ := ed25519.GenerateKey(nil)
	logSigner, err := checkpoint.Signer("log.example", logPriv)
	if err != nil {
		t.Fatal(err)
	}
	vk, _ := checkpoint.VerifierKey("log.example", logPriv.Public().(ed25519.PublicKey))
	logKey, err := checkpoint.ParseVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	_, wPriv, _ := ed25519.GenerateKey(nil)
	cosigner := checkpoint.Cosigner("w.example", wPriv, func() time.Time { return time.Unix(1_800_000_000, 0) })
	wKey, err := checkpoint.ParseVerifier(checkpoint.CosignerKey("w.example", wPriv.Public().(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	sign := func(tr *memTree, cosigned bool) string {
		t.Helper()
		signers := []note.Signer{logSigner}
		if cosigned {
			signers = append(signers, cosigner)
		}
		msg, err := note.Sign(&note.Note{Text: checkpoint.Body("log.example", tr.n, tr.root(t))}, signers...)
		if err != nil {
			t.Fatal(err)
		}
		return string(msg)
	}
	proof := func(tr *memTree, from int64) [][]byte {
		t.Helper()
		p, err := tlog.ProveTree(tr.n, from, tr)
		if err != nil {
			t.Fatal(err)
		}
		var out [][]byte
		for _, h := range p {
			out = append(out, h[:])
		}
		return out
	}
	honest, fork := &memTree{}, &memTree{}
	for i := range 10 {
		honest.add(t, fmt.Sprint("record ", i))
		fork.add(t, fmt.Sprint("record ", i))
	}
	w := &AuditWitness{Key: logKey, Witnesses: []note.Verifier{wKey}, Quorum: 1, Path: filepath.Join(t.TempDir(), "audit-checkpoint")}
	if _, err := w.Accept(&wire.AuditCheckpoint{Checkpoint: sign(honest, false)}); err == nil || !strings.Contains(err.Error(), "quorum") {
		t.Fatalf("Accept(a checkpoint the witness has not cosigned) = %v; want refused for the quorum", err)
	}
	if _, err := w.Accept(&wire.AuditCheckpoint{Checkpoint: sign(honest, true)}); err != nil {
		t.Fatalf("Accept(cosigned) = %v", err)
	}
	// The key holder extends its own copy with made-up records: consistent, signed with
	// the log key, but never shown to the witness.
	for i := range 10 {
		fork.add(t, fmt.Sprint("made up ", i))
	}
	if _, err := w.Accept(&wire.AuditCheckpoint{Checkpoint: sign(fork, false), Proof: proof(fork, 10)}); err == nil {
		t.Fatal("Accept(a fork signed with the log key alone) = nil; want refused")
	}
	// The honest log goes on, cosigned: accepted, from the checkpoint the device holds.
	for i := range 5 {
		honest.add(t, fmt.Sprint("record ", 10+i))
	}
	if c, err := w.Accept(&wire.AuditCheckpoint{Checkpoint: sign(honest, true), Proof: proof(honest, 10)}); err != nil || c.Size != 15 {
		t.Fatalf("Accept(the honest log, cosigned) = %v, %v; want size 15", c, err)
	}
	// Without a quorum (the default) the same device would have taken the fork.
	open := &AuditWitness{Key: logKey, Path: filepath.Join(t.TempDir(), "audit-checkpoint")}
	if _, err := open.Accept(&wire.AuditCheckpoint{Checkpoint: sign(fork, false)}); err != nil {
		t.Fatalf("Accept without a quorum = %v", err)
	}
}

// TestDeviceRefusesAStaleCheckpoint: with --audit-max-age, a device refuses the answers
// of a server whose checkpoint its witnesses' quorum cosigned too long ago (a log
// rolled back to an earlier, once-cosigned prefix, or frozen while a fork grows that
// no witness will cosign): a device new to the server used to accept it, and one that
// had seen it accepted it again and again with an empty proof. A fresh cosignature of
// the same tree is accepted again; without a bound nothing changes.
func TestDeviceRefusesAStaleCheckpoint(t *testing.T) {
	_, logPriv, _ := ed25519.GenerateKey(nil)
	logSigner, err := checkpoint.Signer("log.example", logPriv)
	if err != nil {
		t.Fatal(err)
	}
	vk, _ := checkpoint.VerifierKey("log.example", logPriv.Public().(ed25519.PublicKey))
	logKey, err := checkpoint.ParseVerifier(vk)
	if err != nil {
		t.Fatal(err)
	}
	_, wPriv, _ := ed25519.GenerateKey(nil)
	wKey, err := checkpoint.ParseVerifier(checkpoint.CosignerKey("w.example", wPriv.Public().(ed25519.PublicKey)))
	if err != nil {
		t.Fatal(err)
	}
	tr := &memTree{}
	for i := range 5 {
		tr.add(t, fmt.Sprint("record ", i))
	}
	cosignedAt := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	sign := func(at time.Time) string {
		t.Helper()
		cosigner := checkpoint.Cosigner("w.example", wPriv, func() time.Time { return at })
		msg, err := note.Sign(&note.Note{Text: checkpoint.Body("log.example", tr.n, tr.root(t))}, logSigner, cosigner)
		if err != nil {
			t.Fatal(err)
		}
		return string(msg)
	}
	old := sign(cosignedAt)
	now := cosignedAt.Add(49 * time.Hour)
	device := func(maxAge time.Duration) *AuditWitness {
		return &AuditWitness{Key: logKey, Witnesses: []note.Verifier{wKey}, Quorum: 1, MaxAge: maxAge,
			Now: func() time.Time { return now }, Path: filepath.Join(t.TempDir(), "audit-checkpoint")}
	}

	// A device new to the server: nothing to check the old checkpoint against but its age.
	fresh := device(36 * time.Hour)
	_, err = fresh.Accept(&wire.AuditCheckpoint{Checkpoint: old})
	if !errors.Is(err, ErrAuditStale) || !strings.Contains(err.Error(), "49h0m0s ago") {
		t.Fatalf("new device, checkpoint cosigned 49h ago, max age 36h: Accept = %v; want ErrAuditStale saying 49h0m0s ago", err)
	}
	if echo, _ := fresh.Echo(); echo != "" {
		t.Errorf("the refused checkpoint was kept: Echo = %q", echo)
	}

	// A device that accepted it while it was fresh, shown it again and again.
	now = cosignedAt.Add(time.Hour)
	seen := device(36 * time.Hour)
	if _, err := seen.Accept(&wire.AuditCheckpoint{Checkpoint: old}); err != nil {
		t.Fatalf("checkpoint cosigned 1h ago, max age 36h: Accept = %v", err)
	}
	now = cosignedAt.Add(49 * time.Hour)
	if _, err := seen.Accept(&wire.AuditCheckpoint{Checkpoint: old}); !errors.Is(err, ErrAuditStale) {
		t.Fatalf("the same checkpoint 49h after its cosignature: Accept = %v; want ErrAuditStale", err)
	}
	// The witness cosigns the same tree again (the log grew elsewhere, or was checked):
	// accepted.
	if _, err := seen.Accept(&wire.AuditCheckpoint{Checkpoint: sign(now.Add(-time.Minute))}); err != nil {
		t.Fatalf("a fresh cosignature of the same tree: Accept = %v", err)
	}

	// No bound (the default): the old checkpoint is accepted, as before.
	if _, err := device(0).Accept(&wire.AuditCheckpoint{Checkpoint: old}); err != nil {
		t.Fatalf("no max age: Accept = %v", err)
	}
}
