package audit

import (
	"context"
	"crypto/ed25519"
	"errors"
	"strings"
	"testing"
)

// TestVerifyErrorSaysWhere: an auditor reads where an export stops being trustworthy,
// the line and the record when there are some, and nothing made up when there are none.
func TestVerifyErrorSaysWhere(t *testing.T) {
	l, _ := newLog(t, 1000)
	lines := exportOf(t, l, 5)
	// Record 3 is on line 3; its sequence number changed: out of sequence there.
	bad := append([]string(nil), lines...)
	bad[2] = rewrite(bad[2], func(r *Record) { r.Seq = 9 })
	_, err := verifyLines(bad, opts(l))
	var ve *VerifyError
	if !errors.As(err, &ve) || !strings.HasPrefix(err.Error(), "line 3: record 9: out of sequence: expected record 3") {
		t.Errorf("Verify(record 3 renumbered 9) = %v; want it to start with line 3: record 9: out of sequence", err)
	}
	// A rollback is about no line and no record.
	o := opts(l)
	appendN(t, l, 6, 2)
	c, err := l.Checkpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	o.LastSeen = c.Note
	_, err = verifyLines(lines, o)
	if !errors.Is(err, ErrInconsistent) || !strings.HasPrefix(err.Error(), "rollback: ") {
		t.Errorf("Verify(older export after seeing 7 records) = %v; want it to start with rollback: and wrap ErrInconsistent", err)
	}
}

// TestVerifyWithKey: the dashboard's check reports what it verified, and refuses an
// export under another key or an unusable log name.
func TestVerifyWithKey(t *testing.T) {
	l, _ := newLog(t, 1000)
	export := strings.Join(exportOf(t, l, 4), "\n")
	rep, err := VerifyWithKey(strings.NewReader(export), l.PublicKey(), l.Origin())
	if err != nil || rep == nil || rep.Records != 4 || rep.Checkpoint.Size != 4 {
		t.Fatalf("VerifyWithKey(genuine) = %+v, %v; want 4 records under a checkpoint of 4", rep, err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if _, err := VerifyWithKey(strings.NewReader(export), other, l.Origin()); err == nil {
		t.Errorf("VerifyWithKey(another key) passed")
	}
	if _, err := VerifyWithKey(strings.NewReader(export), l.PublicKey(), "audit test+bad"); err == nil {
		t.Errorf("VerifyWithKey(a log name with a space and a +) passed")
	}
}

// TestVerifyProofAgainstLastSeen: with a last-seen checkpoint, VerifyProof returns the
// checkpoint it verified; a proof against the very checkpoint last seen needs no
// consistency part; a proof asked without --since carries none.
func TestVerifyProofAgainstLastSeen(t *testing.T) {
	l, _ := newLog(t, 1000)
	ctx := context.Background()
	appendN(t, l, 1, 9)
	c1, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	o := opts(l)
	o.LastSeen = c1.Note
	p, err := l.Prove(ctx, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.From != 0 || len(p.Consistency) != 0 {
		t.Errorf("Prove(4, from 0) = from %d with %d consistency hashes; want none", p.From, len(p.Consistency))
	}
	if c, err := VerifyProof(p, o); err != nil || c == nil || c.Size != 9 {
		t.Errorf("VerifyProof(against the checkpoint last seen) = %+v, %v; want the checkpoint of 9", c, err)
	}
	appendN(t, l, 10, 3)
	p, err = l.Prove(ctx, 11, c1.Size)
	if err != nil {
		t.Fatal(err)
	}
	if c, err := VerifyProof(p, o); err != nil || c == nil || c.Size != 12 {
		t.Errorf("VerifyProof(record 11, consistent with 9) = %+v, %v; want the checkpoint of 12", c, err)
	}
	// A consistency proof that does not prove it: refused.
	p.Consistency = p.Consistency[1:]
	if _, err := VerifyProof(p, o); err == nil {
		t.Errorf("VerifyProof(consistency proof cut) passed")
	}
}

// TestVerifyGrownExportAgainstLastSeen: the auditor's routine. An auditor verified an
// export and kept its checkpoint; the log grew; the newer export verifies against the
// kept checkpoint and reports the newer one. (Issue 21: no short test reached the
// consistency check with a last-seen checkpoint smaller than the export's, so refusing
// every grown log there went unnoticed.)
func TestVerifyGrownExportAgainstLastSeen(t *testing.T) {
	l, _ := newLog(t, 1000)
	first, err := verifyLines(exportOf(t, l, 5), opts(l))
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 6, 3)
	o := opts(l)
	o.LastSeen = first.Checkpoint.Note
	rep, err := verifyLines(export(t, l), o)
	if err != nil || rep.Records != 8 || rep.Checkpoint.Size != 8 {
		t.Fatalf("Verify(export of 8 records, last seen 5) = %+v, %v; want 8 records under a checkpoint of 8", rep, err)
	}
}
