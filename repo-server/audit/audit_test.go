package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
	_ "modernc.org/sqlite"
)

// openDB opens a handle on the database at where: a sqlite file or a PostgreSQL URL.
// Each handle stands for another process or replica.
func openDB(t testing.TB, where string) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	if strings.HasPrefix(where, "postgres://") {
		db, err = sql.Open("pgx", where)
	} else {
		db, err = sql.Open("sqlite", "file:"+where+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)&_txlock=immediate")
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newLogWithKey(t testing.TB, key ed25519.PrivateKey, every int) (*Log, string) {
	t.Helper()
	return newLogAt(t, sqliteDB, key, every)
}

// newLogAt opens a log in a fresh database of db.
func newLogAt(t testing.TB, db opener, key ed25519.PrivateKey, every int) (*Log, string) {
	t.Helper()
	where := db(t)
	l, err := Open(context.Background(), Config{DB: openDB(t, where), Key: key, Every: every, Origin: "audit.test"})
	if err != nil {
		t.Fatal(err)
	}
	return l, where
}

func newLog(t testing.TB, every int) (*Log, string) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	return newLogWithKey(t, key, every)
}

func appendN(t testing.TB, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if _, err := l.Append(context.Background(), "server", "attestation.verdict", fmt.Sprintf("device-%d", i%3), map[string]any{"verdict": "trusted", "i": i}); err != nil {
			t.Fatal(err)
		}
	}
}

func export(t testing.TB, l *Log) []string {
	t.Helper()
	var buf bytes.Buffer
	if err := l.Export(context.Background(), &buf); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(buf.String()), "\n")
}

func exportOf(t testing.TB, l *Log, n int) []string {
	appendN(t, l, 1, n)
	return export(t, l)
}

func opts(l *Log) VerifyOptions { return VerifyOptions{LogKey: l.Verifier()} }

func verifyLines(lines []string, o VerifyOptions) (*Report, error) {
	return Verify(strings.NewReader(strings.Join(lines, "\n")+"\n"), o)
}

func testExportVerifies(t *testing.T, db opener) {
	_, key, _ := ed25519.GenerateKey(nil)
	l, _ := newLogAt(t, db, key, 4)
	lines := exportOf(t, l, 10)
	rep, err := verifyLines(lines, opts(l))
	if err != nil {
		t.Fatalf("Verify(untouched export) = %v", err)
	}
	if rep.Records != 10 || rep.Checkpoint.Size != 10 || len(lines) != 11 {
		t.Fatalf("report = %+v, %d lines; want 10 records under a checkpoint of 10, 11 lines", rep, len(lines))
	}
	recs, _ := l.Records(context.Background(), Query{Subject: "device-1"})
	if len(recs) != 4 {
		t.Fatalf("records about device-1 = %d; want 4", len(recs))
	}
	// The dashboard's check: the key alone, origin from the log.
	if _, err := VerifyWithKey(strings.NewReader(strings.Join(lines, "\n")), l.PublicKey(), l.Origin()); err != nil {
		t.Fatalf("VerifyWithKey = %v", err)
	}
	// The checkpoint is a C2SP tlog-checkpoint note.
	c, _ := l.Latest(context.Background())
	if !strings.HasPrefix(string(c.Note), "audit.test\n10\n"+c.Hash.String()+"\n\n— audit.test ") {
		t.Fatalf("checkpoint note = %q", c.Note)
	}
}

// recordLine finds the export line of record seq.
func recordLine(lines []string, seq int64) int {
	for i, l := range lines {
		if strings.HasPrefix(l, `{"type":"record","seq":`+fmt.Sprint(seq)+`,`) {
			return i
		}
	}
	panic("no record")
}

func rewrite(line string, fn func(r *Record)) string {
	var r Record
	json.Unmarshal([]byte(line), &r)
	fn(&r)
	b, _ := json.Marshal(r)
	return `{"type":"record",` + string(b[1:])
}

func TestVerifyFindsTamperedExports(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(lines []string) []string
		want   string
	}{
		{"modified", func(lines []string) []string {
			i := recordLine(lines, 3)
			lines[i] = strings.Replace(lines[i], `"trusted"`, `"untrusted"`, 1)
			return lines
		}, "the log was rewritten"},
		{"actor changed", func(lines []string) []string {
			i := recordLine(lines, 7)
			lines[i] = rewrite(lines[i], func(r *Record) { r.Actor = "cli:mallory" })
			return lines
		}, "the log was rewritten"},
		{"deleted", func(lines []string) []string {
			i := recordLine(lines, 6)
			return append(lines[:i:i], lines[i+1:]...)
		}, "out of sequence: expected record 6"},
		{"deleted and renumbered", func(lines []string) []string {
			i := recordLine(lines, 6)
			lines = append(lines[:i:i], lines[i+1:]...)
			for j := i; j < len(lines)-1; j++ {
				lines[j] = rewrite(lines[j], func(r *Record) { r.Seq-- })
			}
			return lines
		}, "signs a tree of 10 records but the export holds 9"},
		{"reordered", func(lines []string) []string {
			i, j := recordLine(lines, 2), recordLine(lines, 3)
			lines[i], lines[j] = lines[j], lines[i]
			return lines
		}, "out of sequence"},
		{"appended after the checkpoint", func(lines []string) []string {
			forged := Record{Seq: 11, Actor: "server", Kind: "publish", Subject: "models/evil/1.0.0.onnx", Data: json.RawMessage(`{}`)}
			b, _ := json.Marshal(forged)
			return append(lines, `{"type":"record",`+string(b[1:]))
		}, "lines after the checkpoint"},
		{"truncated (head -n 6)", func(lines []string) []string { return lines[:6] }, "no signed checkpoint covers the 6 records"},
		// What Go reads is verified; other readers must not see another record. jq shows
		// the first two as actor mallory, Python's json the third as subject evil.
		{"actor given twice, the signed one in another case", func(lines []string) []string {
			i := recordLine(lines, 6)
			lines[i] = strings.Replace(lines[i], `"actor":"server"`, `"actor":"cli:mallory","Actor":"server"`, 1)
			return lines
		}, "not as the export writes it"},
		{"actor given twice", func(lines []string) []string {
			i := recordLine(lines, 6)
			lines[i] = strings.Replace(lines[i], `"actor":"server"`, `"actor":"cli:mallory","actor":"server"`, 1)
			return lines
		}, "not as the export writes it"},
		{"subject given twice, the signed one last", func(lines []string) []string {
			i := recordLine(lines, 4)
			lines[i] = strings.Replace(lines[i], `"subject":`, `"subject":"models/evil.onnx","subject":`, 1)
			return lines
		}, "not as the export writes it"},
		{"unknown field", func(lines []string) []string {
			i := recordLine(lines, 5)
			lines[i] = strings.TrimSuffix(lines[i], "}") + `,"approved_by":"security"}`
			return lines
		}, "not as the export writes it"},
		{"re-spaced", func(lines []string) []string {
			i := recordLine(lines, 5)
			lines[i] = strings.Replace(lines[i], `"seq":5,`, `"seq": 5,`, 1)
			return lines
		}, "not as the export writes it"},
		{"checkpoint key in another case", func(lines []string) []string {
			last := len(lines) - 1
			lines[last] = strings.Replace(lines[last], `"note":`, `"NOTE":`, 1)
			return lines
		}, "not as the export writes it"},
		{"checkpoint by another key", func(lines []string) []string {
			other, _ := newLog(t, 1000)
			olines := exportOf(t, other, 10)
			return append(lines[:len(lines)-1], olines[len(olines)-1])
		}, "not signed by the log key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLog(t, 4)
			lines := tc.tamper(exportOf(t, l, 10))
			_, err := verifyLines(lines, opts(l))
			var ve *VerifyError
			if !errors.As(err, &ve) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Verify = %v; want a VerifyError saying %q", err, tc.want)
			}
		})
	}
}

// attacker stands for someone with write access to the database but not the key: a backup
// operator or a compromised host. It rewrites the tables directly, recomputing the tree.
type attacker struct {
	t  *testing.T
	db *sql.DB
}

func (a attacker) exec(q string, args ...any) {
	a.t.Helper()
	if _, err := a.db.Exec(q, args...); err != nil {
		a.t.Fatalf("%s: %v", q, err)
	}
}

func (a attacker) dropTriggers() {
	for _, tr := range []string{"audit_leaves_no_update", "audit_leaves_no_delete", "audit_hashes_no_update", "audit_hashes_no_delete"} {
		a.exec(`DROP TRIGGER ` + tr)
	}
}

// rebuild recomputes every stored hash from the leaves, removes the checkpoints the
// rebuilt tree contradicts (those from size from on), and sets the tree size.
func (a attacker) rebuild(l *Log, from int64) {
	a.t.Helper()
	ctx := context.Background()
	var recs []Record
	l.eachRecord(ctx, Query{}, func(r *Record) error { recs = append(recs, *r); return nil })
	a.exec(`DELETE FROM audit_hashes`)
	var stored []tlog.Hash
	mem := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = stored[x]
		}
		return out, nil
	})
	for i, r := range recs {
		hs, _ := tlog.StoredHashes(int64(i), r.Leaf(), mem)
		stored = append(stored, hs...)
		var b []byte
		for _, h := range hs {
			b = append(b, h[:]...)
		}
		a.exec(`UPDATE audit_leaves SET hashes = $1 WHERE seq = $2`, base64.StdEncoding.EncodeToString(b), r.Seq)
	}
	a.exec(`DELETE FROM audit_checkpoints_v2 WHERE size >= $1`, from)
	a.exec(`UPDATE audit_tree_size SET size = $1, frontier = NULL`, len(recs))
}

// auditor keeps the last checkpoint it verified, as `edgeward audit verify --state` does.
type auditor struct{ lastSeen []byte }

func (au *auditor) verify(l *Log, lines []string) error {
	o := opts(l)
	o.LastSeen = au.lastSeen
	rep, err := verifyLines(lines, o)
	if err == nil {
		au.lastSeen = rep.Checkpoint.Note
	}
	return err
}

// TestAttacksOnTheDatabase replays issue 13: an attacker with the database but not the
// key rewrites records and recomputes the tree, deletes and re-adds, truncates, or puts
// back an old backup. A fresh export then verifies against the key alone (the server
// signs what is in its database), but not against the auditor's last-seen checkpoint.
func TestAttacksOnTheDatabase(t *testing.T) {
	tests := []struct {
		name   string
		attack func(a attacker, l *Log, path string) *Log
		want   string
	}{
		{"rewrite with recomputed tree", func(a attacker, l *Log, _ string) *Log {
			a.dropTriggers()
			a.exec(`UPDATE audit_leaves SET actor = 'cli:mallory' WHERE seq = 17`)
			a.rebuild(l, 17)
			return l
		}, "fork: the export's first 30 records are not the tree of the last-seen checkpoint"},
		{"delete and re-add", func(a attacker, l *Log, _ string) *Log {
			a.dropTriggers()
			a.exec(`DELETE FROM audit_leaves WHERE seq >= 20`)
			a.rebuild(l, 20)
			appendN(t, l, 1000, 11)
			return l
		}, "fork: the export's first 30 records"},
		{"truncation of the last 10 records", func(a attacker, l *Log, _ string) *Log {
			a.dropTriggers()
			a.exec(`DELETE FROM audit_leaves WHERE seq > 20`)
			a.rebuild(l, 21)
			return l
		}, "rollback: the export's tree has 20 records but the last-seen checkpoint has 30"},
		{"rollback to an older backup", func(a attacker, l *Log, path string) *Log {
			// The backup was taken at 20 records; the attacker copies it back.
			return nil
		}, "rollback: the export's tree has 20 records but the last-seen checkpoint has 30"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			_, key, _ := ed25519.GenerateKey(nil)
			l, path := newLogWithKey(t, key, 5)
			appendN(t, l, 1, 20)
			backup := filepath.Join(t.TempDir(), "backup.db")
			if _, err := l.db.Exec(`VACUUM INTO '` + backup + `'`); err != nil {
				t.Fatal(err)
			}
			appendN(t, l, 21, 10)
			au := &auditor{}
			if err := au.verify(l, export(t, l)); err != nil {
				t.Fatalf("first verification: %v", err)
			}
			if got := l.Verifier(); got == nil {
				t.Fatal("no verifier")
			}
			a := attacker{t, l.db}
			l2 := tc.attack(a, l, path)
			if l2 == nil {
				l2, _ = Open(ctx, Config{DB: openDB(t, backup), Key: key, Origin: "audit.test"})
			}
			lines := export(t, l2)
			// The key alone does not see it: the server signed the rewritten tree.
			if _, err := verifyLines(lines, opts(l2)); err != nil {
				t.Fatalf("Verify without last-seen = %v; the attack should pass the key-only check", err)
			}
			err := au.verify(l2, lines)
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.Is(err, ErrInconsistent) {
				t.Fatalf("Verify with the last-seen checkpoint = %v; want %q (ErrInconsistent)", err, tc.want)
			}
		})
	}
}

func testAppendOnlyAndConcurrentWriters(t *testing.T, db opener) {
	_, key, _ := ed25519.GenerateKey(nil)
	l, path := newLogAt(t, db, key, 1000)
	ctx := context.Background()
	if _, err := l.Append(ctx, "cli", "publish", "models/a/1.0.0.onnx", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.db.ExecContext(ctx, `UPDATE audit_leaves SET subject = 'x'`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("UPDATE of an audit record = %v; want refused", err)
	}
	if _, err := l.db.ExecContext(ctx, `DELETE FROM audit_leaves`); err == nil {
		t.Fatal("DELETE of audit records succeeded")
	}
	// A second handle on the same file stands for another process or replica.
	other, err := Open(ctx, Config{DB: openDB(t, path), Key: l.key, Origin: l.origin})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, lg := range []*Log{l, other, l, other} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 25 {
				if _, err := lg.Append(ctx, "w", "k", fmt.Sprint(i), i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	rep, err := verifyLines(export(t, l), opts(l))
	if err != nil || rep.Records != 101 {
		t.Fatalf("Verify after concurrent appends = %+v, %v; want 101 records", rep, err)
	}
}

// TestAppendTxCommitsWithTheChange: a record appended in the caller's transaction is
// there exactly when the transaction commits.
func testAppendTxCommitsWithTheChange(t *testing.T, db opener) {
	_, key, _ := ed25519.GenerateKey(nil)
	l, _ := newLogAt(t, db, key, 1000)
	ctx := context.Background()
	if _, err := l.db.Exec(`CREATE TABLE things (id INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	for i, commit := range []bool{false, true, false, true} {
		tx, err := l.db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.AppendTx(ctx, tx, "server", "thing.add", fmt.Sprint(i), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(`INSERT INTO things(id) VALUES ($1)`, i); err != nil {
			t.Fatal(err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	recs, _ := l.Records(ctx, Query{})
	if len(recs) != 2 || recs[0].Subject != "1" || recs[1].Subject != "3" || recs[1].Seq != 2 {
		t.Fatalf("records = %+v; want the two committed, numbered 1 and 2", recs)
	}
	if _, err := verifyLines(export(t, l), opts(l)); err != nil {
		t.Fatal(err)
	}
}

func testProofs(t *testing.T, db opener) {
	_, key, _ := ed25519.GenerateKey(nil)
	l, _ := newLogAt(t, db, key, 1000)
	ctx := context.Background()
	appendN(t, l, 1, 37)
	c1, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 38, 40)
	for _, seq := range []int64{1, 2, 17, 37, 60, 77} {
		p, err := l.Prove(ctx, seq, c1.Size)
		if err != nil {
			t.Fatal(err)
		}
		o := opts(l)
		o.LastSeen = c1.Note
		if _, err := VerifyProof(p, o); err != nil {
			t.Fatalf("VerifyProof(record %d) = %v", seq, err)
		}
		p.Record.Subject = "other"
		if _, err := VerifyProof(p, o); err == nil {
			t.Fatalf("VerifyProof(modified record %d) passed", seq)
		}
	}
	// A proof without the consistency part is refused when the auditor has a last-seen.
	p, _ := l.Prove(ctx, 5, 0)
	o := opts(l)
	o.LastSeen = c1.Note
	if _, err := VerifyProof(p, o); err == nil || !strings.Contains(err.Error(), "no consistency proof") {
		t.Fatalf("VerifyProof without consistency = %v", err)
	}
	if _, err := l.InclusionProof(ctx, 5, 1000); !errors.Is(err, ErrBeyondTree) {
		t.Fatalf("InclusionProof beyond the tree = %v", err)
	}
}

// TestForkShownToTwoParties: the key's holder runs two logs under one key and shows one
// to each party. Each branch verifies alone; a witness or device that has seen one branch
// refuses the other, whatever proof comes with it.
func TestForkShownToTwoParties(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	a, _ := newLogWithKey(t, key, 1000)
	b, _ := newLogWithKey(t, key, 1000)
	appendN(t, a, 1, 10)
	appendN(t, b, 1, 10)
	a.Append(ctx, "server", "repo.publish", "models/m/2.0.0.onnx", nil)
	b.Append(ctx, "server", "repo.publish", "models/evil/2.0.0.onnx", nil)
	appendN(t, b, 100, 5)
	ca, _ := a.Checkpoint(ctx)
	cb, _ := b.Checkpoint(ctx)
	// Two devices (or auditors), each shown one branch, accept it.
	if _, err := Next(a.Verifier(), nil, ca.Note, nil); err != nil {
		t.Fatal(err)
	}
	// The device that saw branch a is shown branch b with the best proof b can make.
	proof, _ := b.ConsistencyProof(ctx, ca.Size, cb.Size)
	if _, err := Next(a.Verifier(), ca.Note, cb.Note, proof); !errors.Is(err, ErrInconsistent) {
		t.Fatalf("Next(branch b after branch a) = %v; want ErrInconsistent", err)
	}
	// Same sizes, different trees.
	b2, _ := b.CheckpointAt(ctx, 16)
	a.Checkpoint(ctx)
	if _, err := Next(a.Verifier(), ca.Note, b2.Note, nil); err == nil {
		t.Fatal("Next accepted a second tree of a size it had seen")
	}
	// An older tree after a newer one is a rollback.
	appendN(t, a, 200, 3)
	ca2, _ := a.Checkpoint(ctx)
	if _, err := Next(a.Verifier(), ca2.Note, ca.Note, nil); !errors.Is(err, ErrInconsistent) || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("Next(older) = %v; want a rollback", err)
	}
	// And the genuine extension passes.
	pa, _ := a.ConsistencyProof(ctx, ca.Size, ca2.Size)
	if _, err := Next(a.Verifier(), ca.Note, ca2.Note, pa); err != nil {
		t.Fatalf("Next(genuine extension) = %v", err)
	}
}

func mustVerifier(t testing.TB, vkey string) note.Verifier {
	t.Helper()
	v, err := ParseVerifier(vkey)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// AppendTx commits with the caller's transaction: a rolled-back transaction leaves
// neither its state change nor its record, and the chain goes on without a gap.
func testAppendTxCommitsWithTheCallersTransaction(t *testing.T, db opener) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	h := openDB(t, db(t))
	l, err := Open(ctx, Config{DB: h, Key: key, Every: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.ExecContext(ctx, `CREATE TABLE state (k TEXT PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	change := func(k string, commit bool) {
		t.Helper()
		tx, err := h.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO state VALUES ($1, 'x')`, k); err != nil {
			t.Fatal(err)
		}
		if _, err := l.AppendTx(ctx, tx, "test", "state.set", k, nil); err != nil {
			t.Fatalf("AppendTx(%s) = %v", k, err)
		}
		if commit {
			err = tx.Commit()
		} else {
			err = tx.Rollback()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	change("a", true)
	change("b", false)
	change("c", true)
	if _, err := l.Append(ctx, "test", "plain", "d", nil); err != nil {
		t.Fatal(err)
	}
	recs, err := l.Records(ctx, Query{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range recs {
		got = append(got, fmt.Sprintf("%d:%s", r.Seq, r.Subject))
	}
	if want := "1:a 2:c 3:d"; strings.Join(got, " ") != want {
		t.Fatalf("records = %v; want %s", got, want)
	}
	var n int
	h.QueryRowContext(ctx, `SELECT count(*) FROM state`).Scan(&n)
	if n != 2 {
		t.Fatalf("state rows = %d; want 2 (the rolled-back one is gone)", n)
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(&buf, opts(l)); err != nil {
		t.Fatalf("Verify(export after AppendTx) = %v", err)
	}
}

// The newest checkpoint is verified once per note (check-ins read it every time), but
// a row changed behind the log's back is verified again and refused.
func TestLatestVerifiesAChangedRow(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 1)
	appendN(t, l, 0, 3)
	for range 2 {
		c, err := l.Latest(ctx)
		if err != nil || c.Size != 3 {
			t.Fatalf("Latest = %+v, %v; want size 3", c, err)
		}
		c.Note[0] ^= 1 // a caller's copy
	}
	c, _ := l.Latest(ctx)
	forged := strings.Replace(string(c.Note), "\n3\n", "\n4\n", 1)
	if forged == string(c.Note) {
		t.Fatalf("cannot forge %q", c.Note)
	}
	if _, err := l.db.ExecContext(ctx, `UPDATE audit_checkpoints_v2 SET note = $1 WHERE size = 3`, forged); err != nil {
		t.Fatal(err)
	}
	if c, err := l.Latest(ctx); err == nil {
		t.Fatalf("Latest after the row was changed = %q; want a refusal", c.Note)
	}
}

// TestAppendSucceedsWhenItsCheckpointFails: a record is committed before the Every-th
// record's checkpoint is signed; when signing fails (here a trigger refuses new
// checkpoints), Append still reports the record it stored rather than an error that
// would make its caller undo a change the log already holds.
func TestAppendSucceedsWhenItsCheckpointFails(t *testing.T) {
	ctx := context.Background()
	l, _ := newLog(t, 5)
	if _, err := l.db.ExecContext(ctx, `CREATE TRIGGER no_checkpoints BEFORE INSERT ON audit_checkpoints_v2 BEGIN SELECT RAISE(ABORT, 'checkpoints refused'); END`); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 1, 5) // the 5th record's checkpoint fails
	if n, err := l.Size(ctx); err != nil || n != 5 {
		t.Fatalf("Size = %d, %v; want 5", n, err)
	}
	if _, err := l.db.ExecContext(ctx, `DROP TRIGGER no_checkpoints`); err != nil {
		t.Fatal(err)
	}
	c, err := l.Checkpoint(ctx)
	if err != nil || c.Size != 5 {
		t.Fatalf("Checkpoint after the trigger is gone = %v, %v; want size 5", c, err)
	}
}

// testAppendUnlessLast: replicas recording one new state at once (each replica's policy
// watcher sees the same policy change) leave one record of it; a state recorded last is
// not recorded again, and a return to an earlier state is.
func testAppendUnlessLast(t *testing.T, db opener) {
	_, key, _ := ed25519.GenerateKey(nil)
	l, path := newLogAt(t, db, key, 1000)
	ctx := context.Background()
	replicas := []*Log{l}
	for range 2 {
		other, err := Open(ctx, Config{DB: openDB(t, path), Key: l.key, Origin: l.origin})
		if err != nil {
			t.Fatal(err)
		}
		replicas = append(replicas, other)
	}
	if _, err := l.Append(ctx, "server", "policy.reload", "A", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, "device", "attestation.verdict", "B", nil); err != nil {
		t.Fatal(err) // another kind about the subject: not the last policy.reload
	}
	var wg sync.WaitGroup
	var appended atomic.Int32
	for range 3 {
		for _, lg := range replicas {
			wg.Add(1)
			go func() {
				defer wg.Done()
				rec, err := lg.AppendUnlessLast(ctx, "server", "policy.reload", "B", map[string]string{"from": "A"})
				if err != nil {
					t.Error(err)
				}
				if rec != nil {
					appended.Add(1)
				}
			}()
		}
	}
	wg.Wait()
	if n := appended.Load(); n != 1 {
		t.Errorf("9 concurrent appends of one policy change appended %d records; want 1", n)
	}
	for _, c := range []struct {
		subject string
		want    bool
	}{{"B", false}, {"C", true}, {"B", true}, {"B", false}} {
		rec, err := replicas[2].AppendUnlessLast(ctx, "server", "policy.reload", c.subject, nil)
		if err != nil || (rec != nil) != c.want {
			t.Errorf("AppendUnlessLast(%s) = %v, %v; want appended %v", c.subject, rec, err, c.want)
		}
	}
	var subjects []string
	recs, err := l.Records(ctx, Query{Kind: "policy.reload"})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		subjects = append(subjects, r.Subject)
	}
	if got := strings.Join(subjects, " "); got != "A B C B" {
		t.Errorf("policy.reload records = %s; want A B C B", got)
	}
	if rep, err := verifyLines(export(t, l), opts(l)); err != nil || rep.Records != 5 {
		t.Errorf("Verify = %+v, %v; want 5 records", rep, err)
	}
}
