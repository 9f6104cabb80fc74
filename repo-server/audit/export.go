package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
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

// Export writes the whole log as JSON Lines: every record in order, and each checkpoint
// right after the record it covers. It first signs a checkpoint over everything, so a
// verifier can tell an untouched export from one with records appended after it.
func (l *Log) Export(ctx context.Context, w io.Writer) error {
	if _, err := l.Checkpoint(ctx); err != nil {
		return err
	}
	recs, err := l.Records(ctx, Query{})
	if err != nil {
		return err
	}
	cps, err := l.checkpoints(ctx, 0)
	if err != nil {
		return err
	}
	sort.Slice(cps, func(i, j int) bool { return cps[i].Count < cps[j].Count })
	bw := bufio.NewWriter(w)
	ci := 0
	for i := range recs {
		if err := writeLine(bw, "record", &recs[i]); err != nil {
			return err
		}
		for ci < len(cps) && cps[ci].Count == recs[i].Seq {
			if err := writeLine(bw, "checkpoint", &cps[ci]); err != nil {
				return err
			}
			ci++
		}
	}
	return bw.Flush()
}

// Report is what Verify found.
type Report struct {
	Records     int64 // records read
	Checkpoints int   // valid checkpoints read
	Covered     int64 // records covered by the last valid checkpoint
}

// VerifyError says where an export stops being trustworthy.
type VerifyError struct {
	Line int   // 1-based line of the export
	Seq  int64 // the record concerned (0 if none)
	Msg  string
}

func (e *VerifyError) Error() string {
	if e.Seq > 0 {
		return fmt.Sprintf("line %d: record %d: %s", e.Line, e.Seq, e.Msg)
	}
	return fmt.Sprintf("line %d: %s", e.Line, e.Msg)
}

// maxLine bounds one line of an export.
const maxLine = 4 << 20

// Verify checks an export offline with only the checkpoint public key: sequence numbers
// run 1, 2, 3…; every record's prev is its predecessor's hash and its hash is recomputed;
// every checkpoint is signed by pub and names the hash of the record it follows; and the
// last checkpoint covers the last record. It returns the first problem as a *VerifyError.
func Verify(r io.Reader, pub ed25519.PublicKey) (*Report, error) {
	if len(pub) != ed25519.PublicKeySize {
		return nil, errors.New("verify: not an ed25519 public key")
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxLine)
	rep := &Report{}
	prev := zeroHash
	hashes := map[int64]string{}
	n := 0
	for sc.Scan() {
		n++
		var raw map[string]json.RawMessage
		if err := json.Unmarshal(sc.Bytes(), &raw); err != nil {
			return rep, &VerifyError{Line: n, Msg: "not JSON: " + err.Error()}
		}
		var typ string
		json.Unmarshal(raw["type"], &typ)
		switch typ {
		case "record":
			var rec Record
			if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
				return rep, &VerifyError{Line: n, Msg: "bad record: " + err.Error()}
			}
			want := rep.Records + 1
			switch {
			case rec.Seq != want:
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: fmt.Sprintf("out of sequence: expected record %d (a record was deleted or reordered)", want)}
			case rec.Prev != prev:
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: "does not chain to the record before it"}
			case hashRecord(&rec) != rec.Hash:
				return rep, &VerifyError{Line: n, Seq: rec.Seq, Msg: "contents do not match its hash (modified)"}
			}
			prev = rec.Hash
			hashes[rec.Seq] = rec.Hash
			rep.Records++
		case "checkpoint":
			var c Checkpoint
			if err := json.Unmarshal(sc.Bytes(), &c); err != nil {
				return rep, &VerifyError{Line: n, Msg: "bad checkpoint: " + err.Error()}
			}
			if c.KeyID != KeyID(pub) || !ed25519.Verify(pub, checkpointMessage(&c), c.Sig) {
				return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("checkpoint at %d: signature does not verify with key %s", c.Count, KeyID(pub))}
			}
			h, ok := hashes[c.Count]
			if !ok || c.Count != rep.Records {
				return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("checkpoint at %d does not follow record %d", c.Count, c.Count)}
			}
			if h != c.Head {
				return rep, &VerifyError{Line: n, Seq: c.Count, Msg: "the chain up to here differs from what the checkpoint signed (records were rewritten)"}
			}
			rep.Checkpoints++
			rep.Covered = c.Count
		default:
			return rep, &VerifyError{Line: n, Msg: fmt.Sprintf("unknown line type %q", typ)}
		}
	}
	if err := sc.Err(); err != nil {
		return rep, &VerifyError{Line: n + 1, Msg: err.Error()}
	}
	if rep.Records == 0 {
		return rep, &VerifyError{Line: n, Msg: "no records"}
	}
	if rep.Covered != rep.Records {
		return rep, &VerifyError{Line: n, Seq: rep.Covered + 1, Msg: fmt.Sprintf("%d records after the last checkpoint (%d) are not covered by any signature (appended)", rep.Records-rep.Covered, rep.Covered)}
	}
	return rep, nil
}
