package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// v1Append appends a record as Edgeward did before schema migration 2: the tree size
// UPDATE, the stored hashes read back from audit_hashes, one audit_hashes row per stored
// hash.
func v1Append(t *testing.T, db *sql.DB, seq int64, subject string) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	var size int64
	if err := tx.QueryRowContext(ctx, `UPDATE audit_tree_size SET size = size + 1 WHERE id = 1 RETURNING size`).Scan(&size); err != nil {
		t.Fatal(err)
	}
	if size != seq {
		t.Fatalf("old append: size %d, want %d", size, seq)
	}
	rec := &Record{Seq: size, At: time.Date(2026, 11, 1, 0, 0, int(seq), 0, time.UTC), Actor: "server", Kind: "attestation.verdict", Subject: subject, Data: []byte(`{"verdict":"trusted"}`)}
	hashes, err := tlog.StoredHashes(size-1, rec.Leaf(), v1Reader(tx))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_leaves(seq, at, actor, kind, subject, data) VALUES ($1, $2, $3, $4, $5, $6)`,
		rec.Seq, rec.At.Format(time.RFC3339Nano), rec.Actor, rec.Kind, rec.Subject, string(rec.Data)); err != nil {
		t.Fatal(err)
	}
	for i, h := range hashes {
		if _, err := tx.ExecContext(ctx, `INSERT INTO audit_hashes(id, hash) VALUES ($1, $2)`, tlog.StoredHashIndex(0, size-1)+int64(i), h.String()); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// v1Reader reads the old layout's stored hashes.
func v1Reader(q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) tlog.HashReader {
	return tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			var s string
			if err := q.QueryRowContext(context.Background(), `SELECT hash FROM audit_hashes WHERE id = $1`, x).Scan(&s); err != nil {
				return nil, err
			}
			var err error
			if out[i], err = tlog.ParseHash(s); err != nil {
				return nil, err
			}
		}
		return out, nil
	})
}

// v1Checkpoint signs a checkpoint over the old layout's tree, as the old code did.
func v1Checkpoint(t *testing.T, db *sql.DB, key ed25519.PrivateKey, size int64) []byte {
	t.Helper()
	ctx := context.Background()
	root, err := tlog.TreeHash(size, v1Reader(db))
	if err != nil {
		t.Fatal(err)
	}
	signer, _ := Signer("audit.test", key)
	msg, err := note.Sign(&note.Note{Text: checkpointText("audit.test", size, root)}, signer)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO audit_checkpoints_v2(size, note, at) VALUES ($1, $2, $3)`, size, string(msg), "2026-11-01T00:00:00Z"); err != nil {
		t.Fatal(err)
	}
	return msg
}

// testUpgradeFromUnversionedSchema: a log written by Edgeward before the audit schema was
// versioned (stored hashes in audit_hashes, no frontier) is upgraded by Open; its records
// still export and verify against a checkpoint signed before the upgrade, the log goes on
// growing over both layouts, and inclusion and consistency proofs span them.
func testUpgradeFromUnversionedSchema(t *testing.T, db opener) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	h := openDB(t, db(t))
	old := append([]string(nil), schema...)
	if _, err := h.ExecContext(ctx, `SELECT sqlite_version()`); err == nil {
		old = append(old, sqliteSchema...)
	} else {
		old = append(old, pgAppendOnly...)
	}
	for _, q := range old {
		if _, err := h.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const n1 = 13 // an odd size: the frontier has several subtrees (8, 4, 1)
	for i := int64(1); i <= n1; i++ {
		v1Append(t, h, i, fmt.Sprintf("device-%d", i%4))
	}
	lastSeen := v1Checkpoint(t, h, key, n1)

	l, err := Open(ctx, Config{DB: h, Key: key, Origin: "audit.test", Every: 5})
	if err != nil {
		t.Fatalf("Open(old schema) = %v", err)
	}
	var v int
	if err := h.QueryRowContext(ctx, `SELECT version FROM audit_schema WHERE id = 1`).Scan(&v); err != nil || v != SchemaVersion() || v < 2 {
		t.Fatalf("schema version after Open = %d, %v; want %d", v, err, SchemaVersion())
	}
	verify := func(what string, lastSeen []byte) *Report {
		t.Helper()
		var buf bytes.Buffer
		if err := l.Export(ctx, &buf); err != nil {
			t.Fatalf("%s: Export = %v", what, err)
		}
		o := opts(l)
		o.LastSeen = lastSeen
		rep, err := Verify(&buf, o)
		if err != nil {
			t.Fatalf("%s: Verify = %v", what, err)
		}
		return rep
	}
	if rep := verify("the old log, upgraded", lastSeen); rep.Records != n1 || rep.LastSeen != n1 {
		t.Fatalf("report = %+v; want %d records extending the old checkpoint", rep, n1)
	}

	// It grows over the new layout, in transactions and on its own, and a second Open
	// (another replica, a restart) changes nothing.
	for i := 0; i < 9; i++ {
		tx, err := h.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.AppendTx(ctx, tx, "device:d", "attestation.verdict", fmt.Sprint(i), map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	l2, err := Open(ctx, Config{DB: h, Key: key, Origin: "audit.test", Every: 5})
	if err != nil {
		t.Fatalf("Open again = %v", err)
	}
	appendN(t, l2, 100, 11)
	var oldRows, newRows int
	h.QueryRowContext(ctx, `SELECT count(*) FROM audit_leaves WHERE hashes IS NULL`).Scan(&oldRows)
	h.QueryRowContext(ctx, `SELECT count(*) FROM audit_leaves WHERE hashes IS NOT NULL`).Scan(&newRows)
	if oldRows != n1 || newRows != 20 {
		t.Fatalf("records in the old layout %d, in the new %d; want %d and 20", oldRows, newRows, n1)
	}
	rep := verify("after growing", lastSeen)
	if rep.Records != n1+20 {
		t.Fatalf("report = %+v; want %d records", rep, n1+20)
	}
	// Proofs over both layouts, checked as an auditor does.
	for _, seq := range []int64{1, 7, n1, n1 + 1, n1 + 20} {
		p, err := l.Prove(ctx, seq, n1)
		if err != nil {
			t.Fatalf("Prove(%d) = %v", seq, err)
		}
		if _, err := VerifyProof(p, VerifyOptions{LogKey: l.Verifier(), LastSeen: lastSeen}); err != nil {
			t.Fatalf("VerifyProof(%d) = %v", seq, err)
		}
	}
	older, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for from := int64(1); from < older.Size; from++ {
		root, err := l.TreeHash(ctx, from)
		if err != nil {
			t.Fatal(err)
		}
		p, err := l.ConsistencyProof(ctx, from, older.Size)
		if err != nil {
			t.Fatal(err)
		}
		if err := tlog.CheckTree(p, older.Size, older.Hash, from, root); err != nil {
			t.Fatalf("consistency %d -> %d: %v", from, older.Size, err)
		}
	}

	// A newer schema is refused, untouched.
	if _, err := h.ExecContext(ctx, `UPDATE audit_schema SET version = $1 WHERE id = 1`, SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, Config{DB: h, Key: key, Origin: "audit.test"}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("Open(newer schema) = %v; want refused", err)
	}
}

// testStaleTreeHead: a Log's remembered tree head is only a guess. Here it is wrong at
// the right size: its append rolled back and another writer appended a different record
// at that size. The next append must extend the committed tree, not the remembered one.
func testStaleTreeHead(t *testing.T, db opener) {
	ctx := context.Background()
	_, key, _ := ed25519.GenerateKey(nil)
	where := db(t)
	a, err := Open(ctx, Config{DB: openDB(t, where), Key: key, Origin: "audit.test"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Open(ctx, Config{DB: openDB(t, where), Key: key, Origin: "audit.test"})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, a, 1, 6)
	appendN(t, b, 10, 1) // b learns the head (its first append reads it)
	appendN(t, a, 20, 1) // a's guess is stale by size: it reads the head
	tx, err := a.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.AppendTx(ctx, tx, "x", "rolled.back", "x", nil); err != nil {
		t.Fatal(err)
	}
	tx.Rollback() // a now remembers size 9 with the rolled-back leaf in its frontier
	appendN(t, b, 30, 1)
	appendN(t, a, 40, 3) // the same size as a remembers, another frontier
	appendN(t, b, 50, 2)
	var buf bytes.Buffer
	if err := a.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(&buf, opts(a))
	if err != nil || rep.Records != 14 {
		t.Fatalf("Verify = %+v, %v; want the 14 committed records in one tree", rep, err)
	}
	if recs, _ := a.Records(ctx, Query{Kind: "rolled.back"}); len(recs) != 0 {
		t.Fatalf("the rolled-back record is in the log: %+v", recs)
	}
}
