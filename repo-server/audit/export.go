package audit

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// writeLine writes v as one JSON line with a leading "type" field.
func writeLine(w io.Writer, typ string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if _, err := fmt.Fprintf(w, "{\"type\":%q,", typ); err != nil {
		return err
	}
	if _, err := w.Write(b[1:]); err != nil {
		return err
	}
	_, err = w.Write([]byte("\n"))
	return err
}

// canonical checks that line is exactly what Export writes for v as read from it
// (writeLine): what is verified is Go's reading of the line, and an auditor reads the
// file with other tools too. Without it, a key given twice (Go takes the last, jq too,
// others the first), in another case ("Actor": Go matches keys without regard to case)
// or unknown, verified as the record Go read while other readers saw another: "ok" on a
// line whose actor jq showed as someone else (found by an outside audit, 1 Dec).
func canonical(line []byte, typ string, v any) error {
	var b bytes.Buffer
	if err := writeLine(&b, typ, v); err != nil {
		return err
	}
	if !bytes.Equal(bytes.TrimSuffix(b.Bytes(), []byte("\n")), line) {
		return errors.New("not as the export writes it: a key is duplicated, in another case, unknown or out of order, or the line was re-spaced or re-escaped, so other JSON readers may not read what is verified")
	}
	return nil
}

// checkpointLine is an export's last line: the signed checkpoint covering every record.
type checkpointLine struct {
	Note string `json:"note"`
}

// Export writes the log as JSON Lines: every record in order, then one line holding the
// newest signed checkpoint (with its cosignatures), whose tree is exactly those records.
// It first signs a checkpoint over everything, so the export is complete as of now.
func (l *Log) Export(ctx context.Context, w io.Writer) error {
	c, err := l.Checkpoint(ctx)
	if err != nil {
		return err
	}
	return l.exportTo(ctx, w, c)
}

// ExportCosigned writes the log up to the newest checkpoint that at least one witness
// cosigned (records appended since are left for the next export), so that an auditor
// who requires a witness quorum is not handed a checkpoint the witnesses have not seen
// yet. It fails with ErrNoCheckpoint when no checkpoint is cosigned.
func (l *Log) ExportCosigned(ctx context.Context, w io.Writer) error {
	c, err := l.CosignedCheckpoint(ctx)
	if err != nil {
		return err
	}
	return l.exportTo(ctx, w, c)
}

// CosignedCheckpoint returns the newest checkpoint that carries a signature besides
// the log's (a witness's cosignature), verified with the log key; ErrNoCheckpoint when
// there is none yet. Exports and proofs for an auditor who requires a witness quorum
// stop at it: a checkpoint signed for the request has had no time to be cosigned.
func (l *Log) CosignedCheckpoint(ctx context.Context) (*Checkpoint, error) {
	var msg string
	err := l.db.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints_v2 WHERE note LIKE $1 ORDER BY size DESC LIMIT 1`, "%\n— %\n— %").Scan(&msg)
	if err != nil {
		return nil, fmt.Errorf("audit: no cosigned checkpoint: %w (%v)", ErrNoCheckpoint, err)
	}
	return OpenCheckpoint([]byte(msg), l.Verifier(), nil, 0)
}

// ExportAt is Export up to checkpoint c, one of the log's (CosignedCheckpoint).
func (l *Log) ExportAt(ctx context.Context, w io.Writer, c *Checkpoint) error {
	return l.exportTo(ctx, w, c)
}

func (l *Log) exportTo(ctx context.Context, w io.Writer, c *Checkpoint) error {
	bw := bufio.NewWriter(w)
	if err := l.eachRecord(ctx, Query{Upto: c.Size}, func(r *Record) error { return writeLine(bw, "record", r) }); err != nil {
		return err
	}
	if err := writeLine(bw, "checkpoint", checkpointLine{Note: string(c.Note)}); err != nil {
		return err
	}
	return bw.Flush()
}

// Report is what Verify found.
type Report struct {
	Records    int64       // records read, all proven to be in the tree
	Checkpoint *Checkpoint // the checkpoint covering them (verified)
	Cosigners  []string    // the trusted witnesses that cosigned it
	LastSeen   int64       // size of the auditor's last-seen checkpoint the tree extends (0: none)
	// CosignedAt is when a quorum of the trusted witnesses had cosigned the checkpoint
	// (CosignedAt); zero without witnesses.
	CosignedAt time.Time
}

// VerifyError says where an export stops being trustworthy.
type VerifyError struct {
	Line int   // 1-based line of the export (0: not about one line)
	Seq  int64 // the record concerned (0 if none)
	Msg  string
	Err  error // the underlying error, if any (ErrInconsistent, *QuorumError, …)
}

func (e *VerifyError) Error() string {
	s := e.Msg
	if e.Seq > 0 {
		s = fmt.Sprintf("record %d: %s", e.Seq, s)
	}
	if e.Line > 0 {
		s = fmt.Sprintf("line %d: %s", e.Line, s)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *VerifyError) Unwrap() error { return e.Err }

// maxLine bounds one line of an export.
const maxLine = 4 << 20

// VerifyOptions says what an export is verified against.
type VerifyOptions struct {
	// LogKey verifies the log's checkpoint signature (required).
	LogKey note.Verifier
	// Witnesses are the trusted witnesses' keys; Quorum of them must have cosigned the
	// checkpoint covering the export. Zero: no cosignature is required.
	Witnesses []note.Verifier
	Quorum    int
	// LastSeen is the auditor's last-seen checkpoint (a signed note), from an earlier
	// verification, a witness or a device. The export's tree must extend it. nil: none.
	LastSeen []byte
	// MaxAge, if positive, is how long ago a quorum of Witnesses may have cosigned the
	// checkpoint at most (their cosignatures carry a time); older fails with ErrStale:
	// a server rolled back to an earlier prefix of its log, or frozen, shows old
	// cosignatures, which nothing else catches without a last-seen checkpoint. Zero:
	// no bound. Now is the clock it is measured with (nil: time.Now).
	MaxAge time.Duration
	Now    func() time.Time
}

// Verify checks an export offline. It proves that every record, numbered 1, 2, 3 … in
// order, is a leaf of the tree whose root the last line's checkpoint signs (it rebuilds
// the tree from the records with tlog and compares roots), that the checkpoint is signed
// by the log key and cosigned by a quorum of witnesses, that it covers exactly the
// records of the export (so a truncated export fails), and that the tree extends the
// last-seen checkpoint (so a rollback or a fork fails). It returns the first problem as a
// *VerifyError.
func Verify(r io.Reader, opts VerifyOptions) (*Report, error) {
	if opts.LogKey == nil {
		return nil, errors.New("verify: the log's verifier key is needed")
	}
	rep := &Report{}
	var lastSeen *Checkpoint
	if opts.LastSeen != nil {
		var err error
		if lastSeen, err = OpenCheckpoint(opts.LastSeen, opts.LogKey, nil, 0); err != nil {
			return rep, &VerifyError{Msg: "the last-seen checkpoint does not verify", Err: err}
		}
	}
	// The tree is rebuilt in memory with tlog's stored-hash layout.
	var stored []tlog.Hash
	mem := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			if x >= int64(len(stored)) {
				return nil, fmt.Errorf("stored hash %d missing", x)
			}
			out[i] = stored[x]
		}
		return out, nil
	})
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	n := 0
	var cpLine []byte
	for sc.Scan() {
		n++
		if cpLine != nil {
			return rep, &VerifyError{Line: n, Msg: "lines after the checkpoint: the checkpoint must be the export's last line"}
		}
		var head struct {
			Type string `json:"type"`
		}
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			return rep, &VerifyError{Line: n, Msg: "not JSON", Err: err}
		}
		switch head.Type {
		case "record":
			var rec Record
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				return rep, &VerifyError{Line: n, Msg: "bad record", Err: err}
			}
			var data bytes.Buffer
			if err := json.Compact(&data, rec.Data); err != nil {
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: "bad data", Err: err}
			}
			rec.Data = data.Bytes()
			if err := canonical(sc.Bytes(), "record", &rec); err != nil {
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: err.Error()}
			}
			if want := rep.Records + 1; rec.Seq != want {
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: fmt.Sprintf("out of sequence: expected record %d (a record was deleted or reordered)", want)}
			}
			hs, err := tlog.StoredHashes(rec.Seq-1, rec.Leaf(), mem)
			if err != nil {
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: "tree", Err: err}
			}
			stored = append(stored, hs...)
			rep.Records++
		case "checkpoint":
			var cl checkpointLine
			if err := json.Unmarshal(sc.Bytes(), &cl); err != nil {
				return rep, &VerifyError{Line: n, Msg: "bad checkpoint line", Err: err}
			}
			if err := canonical(sc.Bytes(), "checkpoint", &cl); err != nil {
				return rep, &VerifyError{Line: n, Msg: err.Error()}
			}
			cpLine = []byte(cl.Note)
		default:
			return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("unknown line type %q", head.Type)}
		}
	}
	if err := sc.Err(); err != nil {
		return rep, &VerifyError{Line: n + 1, Msg: "read", Err: err}
	}
	if cpLine == nil {
		return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("no signed checkpoint covers the %d records of the export: it was truncated", rep.Records)}
	}
	c, err := OpenCheckpoint(cpLine, opts.LogKey, opts.Witnesses, opts.Quorum)
	if err != nil {
		return rep, &VerifyError{Line: n, Msg: "checkpoint", Err: err}
	}
	rep.Checkpoint = c
	rep.Cosigners = append(rep.Cosigners, mustOpen(c.Note, opts.Witnesses)...) // the note as Open kept it: lines that cannot count dropped
	if c.Size != rep.Records {
		return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("the checkpoint signs a tree of %d records but the export holds %d: records were removed or added", c.Size, rep.Records)}
	}
	root, err := tlog.TreeHash(c.Size, mem)
	if err != nil {
		return rep, &VerifyError{Line: n, Msg: "tree", Err: err}
	}
	if root != c.Hash {
		return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("the %d records are not the tree the checkpoint signs (root %s, signed %s): the log was rewritten", c.Size, root, c.Hash)}
	}
	if lastSeen != nil {
		if lastSeen.Size > c.Size {
			return rep, &VerifyError{Msg: fmt.Sprintf("rollback: the export's tree has %d records but the last-seen checkpoint has %d (records were removed, or an old log is shown)", c.Size, lastSeen.Size), Err: ErrInconsistent}
		}
		// The records themselves give the tree at the last-seen size: stronger than a
		// consistency proof, and the same check.
		old, err := tlog.TreeHash(lastSeen.Size, mem)
		if err != nil {
			return rep, &VerifyError{Msg: "tree", Err: err}
		}
		if lastSeen.Size > 0 && old != lastSeen.Hash {
			return rep, &VerifyError{Msg: fmt.Sprintf("fork: the export's first %d records are not the tree of the last-seen checkpoint (root %s, last seen %s): the log was rewritten or forked", lastSeen.Size, old, lastSeen.Hash), Err: ErrInconsistent}
		}
		if lastSeen.Size > 0 && lastSeen.Size < c.Size {
			p, err := tlog.ProveTree(c.Size, lastSeen.Size, mem)
			if err == nil {
				err = CheckConsistency(lastSeen, c, p)
			}
			if err != nil {
				return rep, &VerifyError{Msg: "consistency with the last-seen checkpoint", Err: err}
			}
		}
		rep.LastSeen = lastSeen.Size
	}
	if rep.CosignedAt, err = checkFresh(c, opts); err != nil {
		return rep, &VerifyError{Line: n, Msg: "checkpoint", Err: err}
	}
	return rep, nil
}

// mustOpen names the witnesses among ws that validly cosigned msg.
func mustOpen(msg []byte, ws []note.Verifier) []string {
	var out []string
	for _, w := range ws {
		if n, err := note.Open(msg, note.VerifierList(w)); err == nil && len(n.Sigs) == 1 {
			out = append(out, w.Name())
		}
	}
	return out
}

// VerifyWithKey verifies an export against the log's Ed25519 public key alone, taking
// the log's name from the export's checkpoint: no witness quorum, no last-seen
// checkpoint. For the dashboard and tests; auditors use Verify.
func VerifyWithKey(r io.Reader, pub ed25519.PublicKey, origin string) (*Report, error) {
	vk, err := VerifierKey(origin, pub)
	if err != nil {
		return nil, err
	}
	v, err := note.NewVerifier(vk)
	if err != nil {
		return nil, err
	}
	return Verify(r, VerifyOptions{LogKey: v})
}
