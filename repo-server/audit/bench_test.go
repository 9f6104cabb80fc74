package audit

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"database/sql"
	"encoding/json"
	"io"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// BenchmarkAppendTx appends one record per transaction, as a check-in does (sqlite, WAL,
// synchronous=FULL): the records/s figure includes one fsync'd commit each.
//
//	go test ./repo-server/audit -run '^$' -bench AppendTx -benchtime 2000x
func BenchmarkAppendTx(b *testing.B) {
	l, _ := newLog(b, 1000)
	ctx := context.Background()
	data := map[string]any{"verdict": "trusted", "reasons": []string{}}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tx, err := l.db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := l.AppendTx(ctx, tx, "device:d", "attestation.verdict", "d-"+strconv.Itoa(i), data); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// TestLargeLog measures, for a log of EDGEWARD_AUDIT_BENCH_N records (default 1,000,000;
// skipped in -short), the proof sizes and the time to verify a proof and a whole export.
// The tree is built in memory with tlog (the same leaves the database would hold).
//
//	EDGEWARD_AUDIT_BENCH_N=1000000 go test ./repo-server/audit -run TestLargeLog -v
func TestLargeLog(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a large tree")
	}
	n := int64(1_000_000)
	if s := os.Getenv("EDGEWARD_AUDIT_BENCH_N"); s != "" {
		n, _ = strconv.ParseInt(s, 10, 64)
	}
	_, key, _ := ed25519.GenerateKey(nil)
	signer, _ := Signer("audit.test", key)
	vk, _ := VerifierKey("audit.test", key.Public().(ed25519.PublicKey))
	logKey, _ := note.NewVerifier(vk)
	at := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	rec := func(i int64) *Record {
		return &Record{Seq: i, At: at.Add(time.Duration(i) * time.Millisecond), Actor: "device:d" + strconv.FormatInt(i%1000, 10), Kind: "attestation.verdict",
			Subject: "d" + strconv.FormatInt(i%1000, 10), Data: json.RawMessage(`{"verdict":"trusted"}`)}
	}
	var stored []tlog.Hash
	mem := tlog.HashReaderFunc(func(ix []int64) ([]tlog.Hash, error) {
		out := make([]tlog.Hash, len(ix))
		for i, x := range ix {
			out[i] = stored[x]
		}
		return out, nil
	})
	start := time.Now()
	for i := int64(1); i <= n; i++ {
		hs, err := tlog.StoredHashes(i-1, rec(i).Leaf(), mem)
		if err != nil {
			t.Fatal(err)
		}
		stored = append(stored, hs...)
	}
	build := time.Since(start)
	root, _ := tlog.TreeHash(n, mem)
	cp, _ := note.Sign(&note.Note{Text: checkpointText("audit.test", n, root)}, signer)
	c, err := OpenCheckpoint(cp, logKey, nil, 0)
	if err != nil {
		t.Fatal(err)
	}

	seq := n / 3
	inc, _ := tlog.ProveRecord(n, seq-1, mem)
	start = time.Now()
	const reps = 1000
	for i := 0; i < reps; i++ {
		if err := tlog.CheckRecord(inc, n, root, seq-1, rec(seq).LeafHash()); err != nil {
			t.Fatal(err)
		}
	}
	incTime := time.Since(start) / reps
	old := n / 2
	oldRoot, _ := tlog.TreeHash(old, mem)
	cons, _ := tlog.ProveTree(n, old, mem)
	start = time.Now()
	for i := 0; i < reps; i++ {
		if err := tlog.CheckTree(cons, n, root, old, oldRoot); err != nil {
			t.Fatal(err)
		}
	}
	consTime := time.Since(start) / reps

	// A whole export, streamed, verified as `edgeward audit verify` does.
	pr, pw := io.Pipe()
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		for i := int64(1); i <= n; i++ {
			writeLine(bw, "record", rec(i))
		}
		writeLine(bw, "checkpoint", checkpointLine{Note: string(c.Note)})
		bw.Flush()
		pw.Close()
	}()
	start = time.Now()
	rep, err := Verify(pr, VerifyOptions{LogKey: logKey})
	if err != nil || rep.Records != n {
		t.Fatalf("Verify = %+v, %v", rep, err)
	}
	verifyTime := time.Since(start)
	pjson, _ := json.Marshal(&Proof{Record: *rec(seq), Checkpoint: string(cp), Inclusion: inc})
	t.Logf("log of %d records: tree built in memory in %v", n, build.Round(time.Millisecond))
	t.Logf("inclusion proof: %d hashes (%d bytes; %d bytes as 'audit prove' JSON), checked in %v", len(inc), 32*len(inc), len(pjson), incTime)
	t.Logf("consistency proof %d→%d: %d hashes (%d bytes), checked in %v", old, n, len(cons), 32*len(cons), consTime)
	t.Logf("whole export verified (generation included) in %v: %.0f records/s", verifyTime.Round(time.Millisecond), float64(n)/verifyTime.Seconds())
}

// BenchmarkAppendTxOneTransaction appends every record in one transaction: the cost of
// the append itself (tree update, inserts) without the commit's fsync.
func BenchmarkAppendTxOneTransaction(b *testing.B) {
	l, _ := newLog(b, 1000)
	ctx := context.Background()
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Rollback()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.AppendTx(ctx, tx, "device:d", "attestation.verdict", "d-"+strconv.Itoa(i), map[string]any{"verdict": "trusted"}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
}

// preparedTx runs the log's statements prepared, as fleet.txn does (stmtCache).
type preparedTx struct {
	tx    *sql.Tx
	db    *sql.DB
	stmts map[string]*sql.Stmt
}

func (p *preparedTx) stmt(ctx context.Context, q string) *sql.Stmt {
	st, ok := p.stmts[q]
	if !ok {
		st, _ = p.db.PrepareContext(ctx, q)
		p.stmts[q] = st
	}
	return p.tx.StmtContext(ctx, st)
}

func (p *preparedTx) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return p.stmt(ctx, q).ExecContext(ctx, args...)
}
func (p *preparedTx) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return p.stmt(ctx, q).QueryContext(ctx, args...)
}
func (p *preparedTx) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return p.stmt(ctx, q).QueryRowContext(ctx, args...)
}

func cpuNow() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkAppendTxPrepared: AppendTx as the fleet's group commit runs it (statements
// prepared, 32 appends per transaction, on a log of 5,000 records). cpu-us/op is the
// process's CPU time per append (user + system), the figure to compare on a shared machine:
//
//	go test ./repo-server/audit -run '^$' -bench AppendTxPrepared -benchtime 20000x
func BenchmarkAppendTxPrepared(b *testing.B) {
	l, _ := newLog(b, 1000)
	ctx := context.Background()
	stmts := map[string]*sql.Stmt{}
	// a log that is not new
	for i := 0; i < 5000; {
		tx, _ := l.db.BeginTx(ctx, nil)
		p := &preparedTx{tx: tx, db: l.db, stmts: stmts}
		for j := 0; j < 100; j++ {
			if _, err := l.AppendTx(ctx, p, "device:d", "attestation.verdict", "d-"+strconv.Itoa(i), map[string]any{"verdict": "trusted"}); err != nil {
				b.Fatal(err)
			}
			i++
		}
		tx.Commit()
	}
	data := map[string]any{"verdict": "trusted", "reasons": []string{}, "nonce": "0123456789abcdef0123456789abcdef"}
	b.ResetTimer()
	c0 := cpuNow()
	for i := 0; i < b.N; {
		tx, err := l.db.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		p := &preparedTx{tx: tx, db: l.db, stmts: stmts}
		for j := 0; j < 32 && i < b.N; j++ {
			if _, err := l.AppendTx(ctx, p, "device:dev-"+strconv.Itoa(i%1000), "attestation.verdict", "dev-"+strconv.Itoa(i%1000), data); err != nil {
				b.Fatal(err)
			}
			i++
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64((cpuNow()-c0).Microseconds())/float64(b.N), "cpu-us/op")
}
