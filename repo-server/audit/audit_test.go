package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	_ "modernc.org/sqlite"
)

func openDB(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func newLog(t *testing.T, every int) (*Log, string) {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	path := filepath.Join(t.TempDir(), "audit.db")
	l, err := Open(context.Background(), Config{DB: openDB(t, path), Key: key, Every: every})
	if err != nil {
		t.Fatal(err)
	}
	return l, path
}

func exportOf(t *testing.T, l *Log, n int) []string {
	t.Helper()
	ctx := context.Background()
	for i := 1; i <= n; i++ {
		if _, err := l.Append(ctx, "server", "attestation.verdict", fmt.Sprintf("device-%d", i%3), map[string]any{"verdict": "trusted", "i": i}); err != nil {
			t.Fatal(err)
		}
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(buf.String()), "\n")
}

func TestExportVerifies(t *testing.T) {
	l, _ := newLog(t, 4)
	lines := exportOf(t, l, 10)
	rep, err := Verify(strings.NewReader(strings.Join(lines, "\n")), l.PublicKey())
	if err != nil {
		t.Fatalf("Verify(untouched export) = %v", err)
	}
	// Checkpoints at 4 and 8 by count, and one at 10 signed by the export.
	if rep.Records != 10 || rep.Checkpoints != 3 || rep.Covered != 10 {
		t.Fatalf("report = %+v; want 10 records, 3 checkpoints, 10 covered", rep)
	}
	recs, _ := l.Records(context.Background(), Query{Subject: "device-1"})
	if len(recs) != 4 {
		t.Fatalf("records about device-1 = %d; want 4", len(recs))
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

func TestVerifyFindsTampering(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(lines []string, l *Log) []string
		want   string
		seq    int64
	}{
		{"modified", func(lines []string, _ *Log) []string {
			i := recordLine(lines, 3)
			lines[i] = strings.Replace(lines[i], `trusted`, `untrusted`, 1)
			return lines
		}, "modified", 3},
		{"deleted", func(lines []string, _ *Log) []string {
			i := recordLine(lines, 6)
			return append(lines[:i:i], lines[i+1:]...)
		}, "out of sequence", 7},
		{"reordered", func(lines []string, _ *Log) []string {
			i, j := recordLine(lines, 2), recordLine(lines, 3)
			lines[i], lines[j] = lines[j], lines[i]
			return lines
		}, "out of sequence", 3},
		{"appended after the last checkpoint", func(lines []string, _ *Log) []string {
			var last Record
			json.Unmarshal([]byte(lines[recordLine(lines, 10)]), &last)
			forged := Record{Seq: 11, At: last.At, Actor: "server", Kind: "publish", Subject: "models/evil/1.0.0.onnx", Data: json.RawMessage(`{}`), Prev: last.Hash}
			forged.Hash = hashRecord(&forged)
			b, _ := json.Marshal(forged)
			return append(lines, `{"type":"record",`+string(b[1:]))
		}, "appended", 11},
		{"chain rewritten after a modification", func(lines []string, _ *Log) []string {
			// The attacker modifies record 5 and recomputes every later hash: the chain
			// is self-consistent but the checkpoint at 8 no longer matches.
			prev := ""
			for i, ln := range lines {
				if !strings.HasPrefix(ln, `{"type":"record"`) {
					continue
				}
				lines[i] = rewrite(ln, func(r *Record) {
					if r.Seq == 5 {
						r.Data = json.RawMessage(`{"verdict":"untrusted"}`)
					}
					if r.Seq >= 5 {
						r.Prev = prev
						r.Hash = hashRecord(r)
					}
					prev = r.Hash
				})
			}
			return lines
		}, "rewritten", 8},
		{"checkpoint by another key", func(lines []string, _ *Log) []string {
			other, _ := newLog(t, 1000)
			olines := exportOf(t, other, 10)
			var out []string
			for _, ln := range lines {
				if !strings.HasPrefix(ln, `{"type":"checkpoint"`) {
					out = append(out, ln)
				}
			}
			return append(out, olines[len(olines)-1])
		}, "signature does not verify", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, _ := newLog(t, 4)
			lines := tc.tamper(exportOf(t, l, 10), l)
			_, err := Verify(strings.NewReader(strings.Join(lines, "\n")), l.PublicKey())
			var ve *VerifyError
			if !errors.As(err, &ve) || !strings.Contains(ve.Msg, tc.want) {
				t.Fatalf("Verify = %v; want a VerifyError saying %q", err, tc.want)
			}
			if tc.seq != 0 && ve.Seq != tc.seq {
				t.Fatalf("Verify reported record %d; want %d (%v)", ve.Seq, tc.seq, err)
			}
		})
	}
}

func TestAppendOnlyAndConcurrentWriters(t *testing.T) {
	l, path := newLog(t, 1000)
	ctx := context.Background()
	if _, err := l.Append(ctx, "cli", "publish", "models/a/1.0.0.onnx", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.db.ExecContext(ctx, `UPDATE audit_records SET subject = 'x'`); err == nil || !strings.Contains(err.Error(), "append-only") {
		t.Fatalf("UPDATE of an audit record = %v; want refused", err)
	}
	if _, err := l.db.ExecContext(ctx, `DELETE FROM audit_records`); err == nil {
		t.Fatal("DELETE of audit records succeeded")
	}
	// A second handle on the same file stands for another process.
	other, err := Open(ctx, Config{DB: openDB(t, path), Key: l.key})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for _, lg := range []*Log{l, other} {
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
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(&buf, l.PublicKey())
	if err != nil || rep.Records != 51 {
		t.Fatalf("Verify after concurrent appends = %+v, %v; want 51 records", rep, err)
	}
}

// AppendTx commits with the caller's transaction: a rolled-back transaction leaves
// neither its state change nor its record, and the chain goes on without a gap.
func TestAppendTxCommitsWithTheCallersTransaction(t *testing.T) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	db := openDB(t, filepath.Join(t.TempDir(), "fleet.db"))
	l, err := Open(ctx, Config{DB: db, Key: key, Every: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE state (k TEXT PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	change := func(k string, commit bool) {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO state VALUES (?, 'x')`, k); err != nil {
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
	db.QueryRowContext(ctx, `SELECT count(*) FROM state`).Scan(&n)
	if n != 2 {
		t.Fatalf("state rows = %d; want 2 (the rolled-back one is gone)", n)
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(&buf, l.PublicKey()); err != nil {
		t.Fatalf("Verify(export after AppendTx) = %v", err)
	}
}
