package fleet

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"
)

// testStatementsStayPrepared: a query first run in one transaction is prepared after
// its batch and reused by the transactions after it, which still read what the ones
// before them wrote; nonces prepared that way stay single-use.
func testStatementsStayPrepared(t *testing.T, db opener) {
	ctx := context.Background()
	s, err := Open(ctx, db(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	const q = `SELECT count(*) FROM devices WHERE id >= ?`
	for i := range 4 {
		if err := s.Enroll(ctx, fmt.Sprintf("dev-%d", i), nil, t0); err != nil {
			t.Fatal(err)
		}
		var n int
		prepared := false
		err := s.tx(ctx, func(tx *txn) error {
			prepared = tx.stmt(ctx, tx.dialect.rebind(q)) != nil
			return tx.QueryRowContext(ctx, q, "dev-").Scan(&n)
		})
		if err != nil {
			t.Fatal(err)
		}
		if n != i+1 {
			t.Errorf("after %d enrollments the transaction counts %d devices", i+1, n)
		}
		if want := i > 0; prepared != want {
			t.Errorf("transaction %d: query prepared = %v; want %v", i, prepared, want)
		}
	}
	for i := range 3 {
		nonce, err := s.IssueNonce(ctx, "dev-0", t0.Add(2*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ConsumeNonce(ctx, "dev-0", nonce, t0.Add(time.Minute)); err != nil {
			t.Fatalf("round %d: ConsumeNonce = %v", i, err)
		}
		if err := s.ConsumeNonce(ctx, "dev-0", nonce, t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
			t.Fatalf("round %d: ConsumeNonce(replay) = %v; want ErrNonceUnknown", i, err)
		}
	}
	if s.db.stmts.pending() {
		t.Errorf("statements still waiting to be prepared after the batches")
	}
}
