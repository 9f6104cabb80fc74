package fleet

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// groupStore opens a store with a table of keys and returns it and a function that
// reports whether a key is stored (committed).
func groupStore(t *testing.T, db opener) (*Store, func(k string) bool) {
	t.Helper()
	ctx := context.Background()
	s, _ := openStore(t, db)
	if err := s.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `CREATE TABLE gc (k TEXT PRIMARY KEY)`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return s, func(k string) bool {
		var n int
		if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM gc WHERE k = ?`, k).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
}

// inOneBatch runs fs as concurrent transactions that the committer takes as one batch
// (it is held busy until all are queued), and returns each one's result and the sizes
// of the batches committed meanwhile.
func inOneBatch(t *testing.T, s *Store, fs []func(*txn) error) ([]error, []int) {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	var sizes []int
	s.commit.beforeCommit = func(n int) error {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
		return nil
	}
	hold, held := make(chan struct{}), make(chan struct{})
	go s.tx(ctx, func(*txn) error { close(held); <-hold; return nil })
	<-held
	errs := make([]error, len(fs))
	var wg sync.WaitGroup
	for i, f := range fs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.tx(ctx, f) }()
		for len(s.commit.jobs) < i+1 { // queued in order
			time.Sleep(time.Millisecond)
		}
	}
	close(hold)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	return errs, append([]int(nil), sizes...)
}

func insertKey(k string) func(*txn) error {
	return func(tx *txn) error {
		_, err := tx.ExecContext(context.Background(), `INSERT INTO gc (k) VALUES (?)`, k)
		return err
	}
}

// One failing transaction in a batch (an error from its function, or a statement
// that fails) is rolled back alone: the others of the batch commit, in one commit.
func testGroupCommitFailsAlone(t *testing.T, db opener) {
	s, stored := groupStore(t, db)
	boom := errors.New("boom")
	fs := []func(*txn) error{
		insertKey("a"),
		func(tx *txn) error { // writes, then fails
			if err := insertKey("b")(tx); err != nil {
				return err
			}
			return boom
		},
		insertKey("c"),
		func(tx *txn) error { // writes, then a statement fails (duplicate key)
			if err := insertKey("d")(tx); err != nil {
				return err
			}
			return insertKey("a")(tx)
		},
		insertKey("e"),
	}
	errs, sizes := inOneBatch(t, s, fs)
	if len(sizes) != 2 || sizes[1] != len(fs) {
		t.Errorf("batches = %v; want the holder's, then one of %d", sizes, len(fs))
	}
	for i, k := range []string{"a", "b", "c", "d", "e"} {
		wantOK := k != "b" && k != "d"
		if (errs[i] == nil) != wantOK || stored(k) != wantOK {
			t.Errorf("transaction %s: err %v, stored %v; want ok and stored = %v", k, errs[i], stored(k), wantOK)
		}
	}
	if !errors.Is(errs[1], boom) {
		t.Errorf("err of b = %v; want its own error", errs[1])
	}
}

// A commit that fails fails every transaction of the batch, and none is stored.
func testGroupCommitFailureFailsTheBatch(t *testing.T, db opener) {
	s, stored := groupStore(t, db)
	errs, _ := inOneBatch(t, s, []func(*txn) error{insertKey("x"), insertKey("y")})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("transaction %d: %v", i, err)
		}
	}
	full := errors.New("disk full")
	s.commit.beforeCommit = func(int) error { return full }
	ctx := context.Background()
	var wg sync.WaitGroup
	errs = make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = s.tx(ctx, insertKey(fmt.Sprint("z", i))) }()
	}
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, full) || stored(fmt.Sprint("z", i)) {
			t.Errorf("transaction z%d: err %v, stored %v; want the commit's error and nothing stored", i, err, stored(fmt.Sprint("z", i)))
		}
	}
	if !stored("x") || !stored("y") {
		t.Error("an earlier batch was lost")
	}
}

// When sqlite rolls the whole transaction back (a statement interrupted by its
// cancelled context; PostgreSQL rolls back only the statement), no transaction of the batch reports a success it does not have,
// and the later ones still commit.
func testGroupCommitSurvivesAnInterruptedStatement(t *testing.T, db opener) {
	s, stored := groupStore(t, db)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	interrupted := func(tx *txn) error {
		if _, err := tx.ExecContext(context.Background(), `INSERT INTO gc (k) VALUES ('i')`); err != nil {
			return err
		}
		go func() { time.Sleep(20 * time.Millisecond); cancel() }()
		_, err := tx.ExecContext(ctx, `WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100000000)
			INSERT INTO gc (k) SELECT 'n' || x FROM n`)
		return err
	}
	errs, _ := inOneBatch(t, s, []func(*txn) error{insertKey("before"), interrupted, insertKey("after")})
	if errs[1] == nil {
		t.Fatal("the interrupted statement succeeded")
	}
	for i, k := range []string{"before", "i", "after"} {
		if (errs[i] == nil) != stored(k) {
			t.Errorf("transaction %s: err %v, but stored = %v", k, errs[i], stored(k))
		}
	}
	t.Logf("errors: %v", errs)
	if stored("n1") {
		t.Error("the interrupted statement left rows")
	}
	if err := s.tx(context.Background(), insertKey("later")); err != nil || !stored("later") {
		t.Errorf("a later transaction: %v", err)
	}
}

// TestGroupCommitCrash kills a process that commits transactions from 32 goroutines
// (SIGKILL, after some 300 were acknowledged): every transaction it acknowledged is in
// the database afterwards. (A power cut is sqlite's side of the contract: with
// synchronous=FULL a commit returns after the write-ahead log is fsynced.)
func TestGroupCommitCrash(t *testing.T) {
	if dir := os.Getenv("EDGEWARD_GROUP_COMMIT_CHILD"); dir != "" {
		groupCommitChild(dir)
		return
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestGroupCommitCrash$")
	cmd.Env = append(os.Environ(), "EDGEWARD_GROUP_COMMIT_CHILD="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var acked []string
	sc := bufio.NewScanner(out)
	for sc.Scan() && len(acked) < 300 {
		if k, ok := strings.CutPrefix(sc.Text(), "ok "); ok {
			acked = append(acked, k)
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	if len(acked) < 300 {
		t.Fatalf("the child acknowledged %d transactions", len(acked))
	}
	s, err := Open(context.Background(), filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM gc`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	for _, k := range acked {
		var one int
		if err := s.db.QueryRow(`SELECT 1 FROM gc WHERE k = ?`, k).Scan(&one); err != nil {
			t.Errorf("acknowledged %s is not stored: %v", k, err)
		}
	}
	t.Logf("%d acknowledged before the kill, %d stored", len(acked), n)
}

func groupCommitChild(dir string) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := s.tx(ctx, func(tx *txn) error {
		_, err := tx.ExecContext(context.Background(), `CREATE TABLE gc (k TEXT PRIMARY KEY)`)
		return err
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var mu sync.Mutex
	w := bufio.NewWriter(os.Stdout)
	for g := range 32 {
		go func() {
			for i := 0; ; i++ {
				k := fmt.Sprintf("g%d-%d", g, i)
				if err := s.tx(ctx, insertKey(k)); err != nil {
					continue
				}
				mu.Lock()
				fmt.Fprintln(w, "ok", k)
				w.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// testWaitingForATurnIsBounded: while the committer is stuck (a database that stopped
// answering), a transaction that waited queueTimeout for its turn fails with
// ErrUnavailable, and never runs afterwards; one that started is waited for, whatever
// its wait. Before, a caller waited as long as the database stayed away.
func testWaitingForATurnIsBounded(t *testing.T, db opener) {
	ctx := context.Background()
	s, has := groupStore(t, db)
	s.commit.queueTimeout = 200 * time.Millisecond
	hold, held := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- s.tx(ctx, func(tx *txn) error {
			close(held)
			<-hold // stuck, as behind a database that does not answer
			return insertKey("started")(tx)
		})
	}()
	<-held
	start := time.Now()
	err := s.tx(ctx, insertKey("queued"))
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("a transaction queued behind a stuck one = %v; want ErrUnavailable", err)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Fatalf("it waited %v", waited)
	}
	// With the queue full of abandoned jobs, a caller waiting to enter it is bounded too.
	var wg sync.WaitGroup
	var bounded atomic.Int32
	for i := range maxBatch + 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.tx(ctx, insertKey(fmt.Sprint("flood-", i))); errors.Is(err, ErrUnavailable) {
				bounded.Add(1)
			}
		}()
	}
	wg.Wait()
	if n := bounded.Load(); n != maxBatch+10 {
		t.Fatalf("%d of %d callers behind a stuck committer got ErrUnavailable; want all, within the bound", n, maxBatch+10)
	}
	// A caller gone before its turn is not waited for either, and its job never runs.
	cctx, cancel := context.WithCancel(ctx)
	gone := make(chan error, 1)
	go func() { gone <- s.tx(cctx, insertKey("gone")) }()
	for len(s.commit.jobs) == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-gone; !errors.Is(err, context.Canceled) {
		t.Fatalf("a queued transaction whose caller went away = %v; want context.Canceled", err)
	}
	close(hold)
	if err := <-first; err != nil {
		t.Fatalf("the started transaction (waited for past the bound) = %v", err)
	}
	if err := s.tx(ctx, insertKey("after")); err != nil {
		t.Fatal(err)
	}
	if !has("started") || has("queued") || has("gone") || !has("after") {
		t.Fatalf("started %v, queued %v, gone %v, after %v; want the abandoned ones never run", has("started"), has("queued"), has("gone"), has("after"))
	}
}
