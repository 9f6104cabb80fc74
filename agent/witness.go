package agent

import (
	"errors"
	"fmt"
	"os"
	"sync"

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
type AuditWitness struct {
	Key  note.Verifier // the log's verifier key
	Path string        // where the newest verified checkpoint is kept

	mu   sync.Mutex
	last []byte
	read bool
}

// ErrAuditInconsistent says the server's audit checkpoint does not extend the one the
// device had verified: the check-in's answer is refused.
var ErrAuditInconsistent = checkpoint.ErrInconsistent

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
	c, err := checkpoint.Next(w.Key, w.last, []byte(a.Checkpoint), proof)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint refused: %w", err)
	}
	if w.last != nil {
		if old, err := checkpoint.ParseUnverified(w.last); err == nil && old.Size >= c.Size {
			return c, nil
		}
	}
	if err := durable.WriteFile(w.Path, []byte(a.Checkpoint), 0o644); err != nil {
		return nil, fmt.Errorf("audit checkpoint: %w", err)
	}
	w.last = []byte(a.Checkpoint)
	return c, nil
}
