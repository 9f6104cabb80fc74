package audit

import (
	"context"
	"fmt"

	"golang.org/x/mod/sumdb/tlog"
)

// Proof is one record with the proof that it is in a signed checkpoint's tree: what an
// auditor needs to check a single decision without the whole log.
type Proof struct {
	Record     Record      `json:"record"`
	Checkpoint string      `json:"checkpoint"` // signed note
	Inclusion  []tlog.Hash `json:"inclusion"`  // tlog.RecordProof of leaf Seq-1 in the checkpoint's tree
	// From and Consistency prove that the checkpoint extends an earlier tree of size From
	// (the auditor's last-seen checkpoint), when asked for.
	From        int64       `json:"from,omitempty"`
	Consistency []tlog.Hash `json:"consistency,omitempty"`
}

// Prove returns record seq with its inclusion proof against the newest checkpoint (signed
// now if the log grew), and a consistency proof from tree size from when from > 0.
func (l *Log) Prove(ctx context.Context, seq, from int64) (*Proof, error) {
	c, err := l.Checkpoint(ctx)
	if err != nil {
		return nil, err
	}
	return l.ProveAt(ctx, c, seq, from)
}

// ProveAt is Prove under checkpoint c, one of the log's (CosignedCheckpoint, for an
// auditor who requires a witness quorum).
func (l *Log) ProveAt(ctx context.Context, c *Checkpoint, seq, from int64) (*Proof, error) {
	if from > c.Size {
		return nil, fmt.Errorf("audit: consistency from size %d to the checkpoint's %d: %w", from, c.Size, ErrBeyondTree)
	}
	rec, err := l.Record(ctx, seq)
	if err != nil {
		return nil, err
	}
	if seq > c.Size {
		return nil, fmt.Errorf("audit: record %d is not yet under a checkpoint: %w", seq, ErrBeyondTree)
	}
	inc, err := l.InclusionProof(ctx, seq, c.Size)
	if err != nil {
		return nil, err
	}
	p := &Proof{Record: *rec, Checkpoint: string(c.Note), Inclusion: inc}
	if from > 0 {
		cons, err := l.ConsistencyProof(ctx, from, c.Size)
		if err != nil {
			return nil, err
		}
		p.From, p.Consistency = from, cons
	}
	return p, nil
}

// VerifyProof checks a Proof: the checkpoint is signed by the log key and cosigned by a
// quorum of witnesses, the record is leaf Seq-1 of its tree, and, given the auditor's
// last-seen checkpoint, the checkpoint extends it (the proof must then carry a
// consistency proof from that size). It returns the verified checkpoint.
func VerifyProof(p *Proof, opts VerifyOptions) (*Checkpoint, error) {
	c, err := OpenCheckpoint([]byte(p.Checkpoint), opts.LogKey, opts.Witnesses, opts.Quorum)
	if err != nil {
		return nil, err
	}
	if p.Record.Seq < 1 || p.Record.Seq > c.Size {
		return nil, fmt.Errorf("record %d is not in the checkpoint's tree of size %d", p.Record.Seq, c.Size)
	}
	if err := tlog.CheckRecord(p.Inclusion, c.Size, c.Hash, p.Record.Seq-1, p.Record.LeafHash()); err != nil {
		return nil, fmt.Errorf("record %d is not in the tree of size %d that the checkpoint signs (modified, or not in the log): %w", p.Record.Seq, c.Size, err)
	}
	if opts.LastSeen != nil {
		last, err := OpenCheckpoint(opts.LastSeen, opts.LogKey, nil, 0)
		if err != nil {
			return nil, fmt.Errorf("the last-seen checkpoint does not verify: %w", err)
		}
		if last.Size > 0 && last.Size < c.Size && p.From != last.Size {
			return nil, fmt.Errorf("the proof carries no consistency proof from the last-seen size %d (ask with --since %d)", last.Size, last.Size)
		}
		proof := p.Consistency
		if p.From != last.Size {
			proof = nil // a proof from another size; none is needed from 0 or to the same size
		}
		if err := CheckConsistency(last, c, proof); err != nil {
			return nil, err
		}
	}
	if _, err := checkFresh(c, opts); err != nil {
		return nil, err
	}
	return c, nil
}
