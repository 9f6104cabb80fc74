package audit

import (
	"errors"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"golang.org/x/mod/sumdb/note"
)

// ErrStale says that the newest checkpoint a server showed was cosigned by a quorum of
// the trusted witnesses longer ago than the auditor allows (VerifyOptions.MaxAge).
//
// A log rolled back to an earlier prefix of itself (a database restored from an old
// backup) still carries the cosignatures that prefix collected when it was current: it
// verifies, cosigned by a quorum, for an auditor without a last-seen checkpoint (a new
// one, or one whose state is older than the prefix), and the witnesses, who have
// cosigned more since, refuse to cosign anything the rolled-back log signs next, so its
// newest cosignatures only grow older. Their age is what shows it (found from outside,
// 2 Dec: a log of 5 records restored to 3 verified for a new auditor with a quorum of
// 2 witnesses that both held size 5).
var ErrStale = errors.New("stale checkpoint")

// CosignedAt is checkpoint.CosignedAt: when a quorum of witnesses had cosigned msg.
func CosignedAt(msg []byte, witnesses []note.Verifier, quorum int) (at time.Time, ok bool) {
	return checkpoint.CosignedAt(msg, witnesses, quorum)
}

// checkFresh returns when a quorum of opts.Witnesses cosigned c (zero without
// witnesses) and, with opts.MaxAge, refuses a checkpoint cosigned longer ago.
func checkFresh(c *Checkpoint, opts VerifyOptions) (time.Time, error) {
	if opts.MaxAge > 0 && (len(opts.Witnesses) == 0 || opts.Quorum < 1) {
		return time.Time{}, errors.New("a maximum age needs witnesses and a quorum: only their cosignatures carry a time")
	}
	if len(opts.Witnesses) == 0 || opts.Quorum < 1 {
		return time.Time{}, nil
	}
	at, ok := CosignedAt(c.Note, opts.Witnesses, opts.Quorum)
	if opts.MaxAge <= 0 {
		return at, nil
	}
	if !ok {
		return time.Time{}, fmt.Errorf("%w: checkpoint at size %d carries no time from %d of the trusted witnesses", ErrStale, c.Size, opts.Quorum)
	}
	now := time.Now()
	if opts.Now != nil {
		now = opts.Now()
	}
	if age := now.Sub(at); age > opts.MaxAge {
		return at, fmt.Errorf("%w: the checkpoint at size %d was cosigned by %d of the trusted witnesses at %s, %s ago, longer than the maximum age %s: the server shows an old checkpoint (its log rolled back to an earlier prefix or frozen, or its witnesses not reached since); compare the size with each witness's newest checkpoint (GET WITNESS/checkpoint?origin=%s) and keep your --state file",
			ErrStale, c.Size, opts.Quorum, at.UTC().Format(time.RFC3339), age.Round(time.Second), opts.MaxAge, c.Origin)
	}
	return at, nil
}
