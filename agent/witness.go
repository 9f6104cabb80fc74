package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/wire"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// AuditWitness makes the device a witness of the server's audit log: it keeps the newest
// checkpoint it has verified (in Path, so it survives restarts), echoes it in every
// check-in, and accepts the server's new checkpoint only with a consistency proof from
// it. A server that forked, rewrote or rolled back its log cannot prove that, and the
// device then refuses the check-in's answer (the server, shown the old checkpoint again
// at each check-in, records the inconsistency in its own log). Safe for concurrent use.
//
// Answers are verified against the checkpoint held in memory; the file is what lets a
// restarted agent witness from where it was. So a verified checkpoint that cannot be
// saved (a full disk) is still accepted, and the answer that carried it acted on: the
// failure is kept and logged once, and every later Accept saves the newest
// checkpoint again until a save succeeds. An agent restarted before then witnesses from
// the older checkpoint saved, which the server's log must still extend. (Refusing the
// answers instead left a device on a full disk acting on none of them, each refusal
// logged as a forked log.)
type AuditWitness struct {
	Key  note.Verifier // the log's verifier key
	Path string        // where the newest verified checkpoint is kept
	// Witnesses and Quorum, if Quorum > 0: a checkpoint is accepted only when cosigned
	// by Quorum of Witnesses (edgeward audit witness services run by others). With the
	// log key alone, whoever holds it (the server signs checkpoints online) could show
	// a device a fork of its own, or a tree of 2^48 records after which the device
	// refused every honest answer for good (found from outside, 2 Dec).
	Witnesses []note.Verifier
	Quorum    int
	// MaxAge, with a Quorum: a checkpoint whose quorum of cosignatures is older than
	// this is refused (ErrAuditStale). A server that serves an old cosigned checkpoint
	// (its log rolled back to an earlier prefix, or frozen while it writes a fork no
	// witness will cosign) passes the consistency check with an empty proof forever; a
	// device new to it has nothing to check it against at all. The server has its
	// checkpoint cosigned whenever its log grows and writes a record at least at every
	// timestamp renewal (12 hours by default): a bound below that refuses a healthy
	// quiet log. 0: no bound.
	MaxAge time.Duration
	// Now is the clock MaxAge is measured by; nil: time.Now.
	Now func() time.Time
	// Logger, if set, is told when the checkpoint could not be saved and when it is again.
	Logger *slog.Logger

	mu      sync.Mutex
	last    []byte
	read    bool
	unsaved error // the last save's failure; nil once a save succeeds
}

// ErrAuditInconsistent says the server's audit checkpoint does not extend the one the
// device had verified: the check-in's answer is refused.
var ErrAuditInconsistent = checkpoint.ErrInconsistent

// ErrAuditStale says the server's audit checkpoint was cosigned by the witnesses'
// quorum longer ago than AuditWitness.MaxAge: the check-in's answer is refused.
var ErrAuditStale = errors.New("stale audit checkpoint")

// Echo is the checkpoint to send in the next check-in ("" before the first).
func (w *AuditWitness) Echo() (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.loadLocked(); err != nil {
		return "", err
	}
	return string(w.last), nil
}

func (w *AuditWitness) loadLocked() error {
	if w.read {
		return nil
	}
	data, err := os.ReadFile(w.Path)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	if len(data) > 0 {
		w.last = data
	}
	w.read = true
	return nil
}

// Accept verifies the server's checkpoint against the newest one the device holds and
// keeps it if it is newer. An error means: refuse the answer that carried it.
func (w *AuditWitness) Accept(a *wire.AuditCheckpoint) (*checkpoint.Checkpoint, error) {
	if a == nil {
		return nil, errors.New("audit: the server sent no audit checkpoint (it must, to be witnessed)")
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.loadLocked(); err != nil {
		return nil, err
	}
	var proof tlog.TreeProof
	for _, h := range a.Proof {
		if len(h) != tlog.HashSize {
			return nil, errors.New("audit: malformed consistency proof")
		}
		proof = append(proof, tlog.Hash(h))
	}
	c, err := checkpoint.NextQuorum(w.Key, w.Witnesses, w.Quorum, w.last, []byte(a.Checkpoint), proof)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint refused: %w", err)
	}
	if err := w.checkAge(c); err != nil {
		return nil, err
	}
	newer := true
	if w.last != nil {
		if old, err := checkpoint.ParseUnverified(w.last); err == nil && old.Size >= c.Size {
			newer = false
		}
	}
	if newer {
		w.last = []byte(a.Checkpoint)
	}
	if newer || w.unsaved != nil {
		w.saveLocked()
	}
	return c, nil
}

// checkAge refuses c when its quorum of cosignatures is older than w.MaxAge.
func (w *AuditWitness) checkAge(c *checkpoint.Checkpoint) error {
	if w.MaxAge <= 0 || w.Quorum < 1 {
		return nil
	}
	at, ok := checkpoint.CosignedAt(c.Note, w.Witnesses, w.Quorum)
	if !ok {
		return fmt.Errorf("audit checkpoint refused: %w: the checkpoint at size %d carries no time from %d of the trusted witnesses", ErrAuditStale, c.Size, w.Quorum)
	}
	now := time.Now
	if w.Now != nil {
		now = w.Now
	}
	if age := now().Sub(at); age > w.MaxAge {
		return fmt.Errorf("audit checkpoint refused: %w: the checkpoint at size %d was cosigned by %d of the trusted witnesses at %s, %s ago, longer than --audit-max-age %s: the server shows an old checkpoint (its log rolled back or frozen, or its witnesses not reached since)",
			ErrAuditStale, c.Size, w.Quorum, at.UTC().Format(time.RFC3339), age.Round(time.Second), w.MaxAge)
	}
	return nil
}

// saveLocked writes the checkpoint held in memory to Path, durably; a failure is kept
// in w.unsaved (see AuditWitness), not returned.
func (w *AuditWitness) saveLocked() {
	err := durable.WriteFile(w.Path, w.last, 0o644)
	switch {
	case err != nil:
		if w.Logger != nil && w.unsaved == nil {
			w.Logger.Warn("audit checkpoint verified but not saved: answers are verified against it in memory, and saving it is retried at every check-in; a restart of the agent before then witnesses from the one saved before",
				"path", w.Path, "err", err)
		}
		w.unsaved = fmt.Errorf("audit checkpoint: %w", err)
	case w.unsaved != nil:
		if w.Logger != nil {
			w.Logger.Info("audit checkpoint saved again", "path", w.Path)
		}
		w.unsaved = nil
	}
}
