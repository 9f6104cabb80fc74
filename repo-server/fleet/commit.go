package fleet

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrClosed is returned for a transaction submitted to a closed store.
var ErrClosed = errors.New("fleet store closed")

// ErrUnavailable is returned for a transaction that waited its turn longer than
// queueTimeout: the database is not committing (unreachable, stopped, out of space).
// Nothing of it ran; the caller may answer "retry later".
var ErrUnavailable = errors.New("the fleet database is not answering: try again later")

// queueTimeout bounds how long a transaction waits for its turn. Batches commit in
// milliseconds; one stuck behind a database that stopped answering was held, with its
// request and connection, for as long as the database stayed away (found from outside,
// 2 Dec: 582 goroutines and 698 descriptors on one replica during an outage).
const queueTimeout = 15 * time.Second

// batchTimeout bounds how long one batch (its transaction, from BEGIN to COMMIT, and
// the preparing of new statements after it) may take. Batches take milliseconds; a
// turn of the PostgreSQL writer lock waits at most about IdleInTransactionTimeout
// behind a replica that went quiet holding it. Without a bound, one connection that
// stayed open but never answered again (a stalled proxy or connection pooler between
// the replica and PostgreSQL, a backend hung on its storage: TCP keepalives and
// TCP_USER_TIMEOUT are answered by the kernel) held the committer for good, and the
// replica answered every write 503 until it was restarted, long after the database
// was back (found from outside, 2 Dec). At the bound the connection is closed and the
// batch fails with ErrUnavailable; the next batch takes a fresh connection.
const batchTimeout = 2 * time.Minute

// maxBatch bounds how many transactions share one commit.
const maxBatch = 128

// committer runs the store's write transactions with group commit: one goroutine takes
// every transaction waiting at that moment (up to maxBatch), runs each inside its own
// SAVEPOINT of one database transaction, and commits them together, with one fsync of
// the write-ahead log for the whole batch. No transaction waits for a batch to fill: a
// lone one is committed at once, and under load the transactions that arrive during a
// commit form the next batch.
//
// Each transaction still succeeds or fails alone. One whose function returns an error
// is rolled back to its savepoint; the others of the batch are not touched. One that
// succeeded returns only after the batch's COMMIT returned, i.e. after sqlite
// (journal_mode=WAL, synchronous=FULL, durable.OpenSQLite) has fsynced the log with its
// frames: a caller that answers its client after tx returns nil never answers for a
// change a power cut can take back. If the commit fails, every transaction of the batch
// gets the error and none was answered. A power cut before the commit loses the whole
// batch, all of it unanswered; the clients retry (check-in report IDs make retries
// idempotent).
//
// Transactions of one batch run one after another on one connection, each seeing the
// writes of those before it: the same as running them serially, as the single
// connection did before.
//
// If sqlite rolls the whole transaction back on its own (a statement interrupted by a
// cancelled context, an I/O error, a full disk), the savepoints are gone; the committer
// notices (releasing the savepoint fails) and fails every transaction of the batch,
// none of which was answered. A transaction whose context is already done when its turn
// comes is not run.
type committer struct {
	db   *sqlDB
	jobs chan *txJob

	mu     sync.RWMutex // held for reading by senders, for writing by close
	closed bool
	done   chan struct{} // closed when run has returned

	// beforeCommit, for tests, runs before each batch's COMMIT; an error fails the
	// batch. nil in production.
	beforeCommit func(batch int) error
	// queueTimeout is queueTimeout, batchTimeout batchTimeout (tests shorten them).
	queueTimeout time.Duration
	batchTimeout time.Duration
}

type txJob struct {
	ctx context.Context
	f   func(*txn) error
	// unbounded: its batch runs without batchTimeout (doUnbounded).
	unbounded bool
	err       error
	done      chan struct{}
	// state: jobQueued until the committer starts it (jobStarted) or its caller gives up
	// waiting for its turn (jobAbandoned), whichever comes first.
	state atomic.Int32
}

const (
	jobQueued int32 = iota
	jobStarted
	jobAbandoned
)

func newCommitter(db *sqlDB) *committer {
	c := &committer{db: db, jobs: make(chan *txJob, maxBatch), done: make(chan struct{}), queueTimeout: queueTimeout, batchTimeout: batchTimeout}
	go c.run()
	return c
}

// do runs f in a transaction that is committed (durably) before do returns nil.
func (c *committer) do(ctx context.Context, f func(*txn) error) error {
	return c.run1(ctx, f, false)
}

// doUnbounded is do for a transaction that may legitimately run longer than
// batchTimeout (a schema migration and its backfill on a large database, at start):
// its batch has no deadline.
func (c *committer) doUnbounded(ctx context.Context, f func(*txn) error) error {
	return c.run1(ctx, f, true)
}

func (c *committer) run1(ctx context.Context, f func(*txn) error, unbounded bool) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	j := &txJob{ctx: ctx, f: f, unbounded: unbounded, done: make(chan struct{})}
	// The bound starts now: with the committer stuck its queue fills, and a caller
	// waiting to enter it (a check-in's context never ends) waited for good.
	timer := time.NewTimer(c.queueTimeout)
	defer timer.Stop()
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return ErrClosed
	}
	select {
	case c.jobs <- j:
		c.mu.RUnlock()
	case <-ctx.Done():
		c.mu.RUnlock()
		return ctx.Err()
	case <-timer.C:
		c.mu.RUnlock()
		return ErrUnavailable
	}
	// Once queued, the job is run (or failed) by the committer, which always closes
	// done: waiting for it even if ctx ends keeps f from running after do returned. Only
	// a job not started within c.queueTimeout, or whose ctx ended before it started, is
	// given up, and then never runs.
	select {
	case <-j.done:
	case <-timer.C:
		if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
			return ErrUnavailable
		}
		<-j.done
	case <-ctx.Done():
		// Its caller is gone before its turn: it would not be run (runBatch1).
		if j.state.CompareAndSwap(jobQueued, jobAbandoned) {
			return ctx.Err()
		}
		<-j.done
	}
	return j.err
}

// close stops the committer after the transactions already queued.
func (c *committer) close() {
	c.mu.Lock()
	if !c.closed {
		c.closed = true
		close(c.jobs)
	}
	c.mu.Unlock()
	<-c.done
}

func (c *committer) run() {
	defer close(c.done)
	for j := range c.jobs {
		batch := []*txJob{j}
	fill:
		for len(batch) < maxBatch {
			select {
			case j, ok := <-c.jobs:
				if !ok {
					break fill
				}
				batch = append(batch, j)
			default:
				break fill
			}
		}
		c.runBatch(batch)
		for _, j := range batch {
			close(j.done)
		}
		// Statements first seen in this batch are prepared now, with no transaction
		// open (stmtCache).
		if c.db.stmts.pending() {
			ctx, cancel := context.WithTimeout(context.Background(), c.batchTimeout)
			c.db.stmts.prepare(ctx, c.db.DB)
			cancel()
		}
	}
}

// runBatch runs batch in one transaction and sets each job's err. A commit that
// PostgreSQL refuses to stay serialisable runs the whole batch again (txRetries).
func (c *committer) runBatch(batch []*txJob) {
	wait := retryBackoff
	for attempt := 0; ; attempt++ {
		for _, j := range batch {
			j.err = nil
		}
		err := c.runBatch1(batch)
		if err == nil {
			c.noteFaults(batch)
			return
		}
		if !retryable(err) || attempt == txRetries {
			for _, j := range batch {
				if j.err == nil {
					j.err = err
				}
			}
			c.noteFaults(batch)
			return
		}
		time.Sleep(wait)
		wait *= 2
	}
}

// noteFaults remembers the storage fault a job of batch failed with, if any
// (sqlDB.fault).
func (c *committer) noteFaults(batch []*txJob) {
	for _, j := range batch {
		if c.db.noteFault(j.err) {
			return
		}
	}
}

// runBatch1 runs batch in one transaction: each job's own failure is its err; the
// error returned (the transaction's) is every other job's.
func (c *committer) runBatch1(batch []*txJob) (err error) {
	// The batch's own context: one caller going away must not abort the others. Its
	// deadline (batchTimeout) bounds every statement of the batch, the jobs' own too
	// (txn.bound): a connection that stopped answering is closed there.
	timeout := c.batchTimeout
	for _, j := range batch {
		if j.unbounded {
			timeout = 0
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	if timeout > 0 {
		ctx, cancel = context.WithTimeout(context.Background(), timeout)
	}
	defer cancel()
	deadline, _ := ctx.Deadline() // zero without a bound: txn.bound then changes nothing
	// past says the bound was reached (the statements' own contexts, made from it by
	// txn.bound, may end a moment before ctx does).
	past := func() bool { return !deadline.IsZero() && !time.Now().Before(deadline) }
	defer func() {
		if err != nil && past() {
			err = fmt.Errorf("%w: a transaction got no answer from the database for %v: %w", ErrUnavailable, c.batchTimeout, err)
			c.db.dropIdle()
		}
	}()
	tx, err := c.db.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	t := &txn{Tx: tx, dialect: c.db.dialect, stmts: c.db.stmts, deadline: deadline}
	defer t.release()
	if c.db.dialect == postgresDialect {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, writerLock); err != nil {
			tx.Rollback()
			return fmt.Errorf("fleet writer lock: %w", err)
		}
	}
	ok := 0
	for _, j := range batch {
		// One savepoint at a time, released before the next: one name serves them all
		// (and its statements stay prepared).
		const sp = "job"
		wait := retryBackoff
		for attempt := 0; ; attempt++ {
			if attempt == 0 && !j.state.CompareAndSwap(jobQueued, jobStarted) && j.state.Load() != jobStarted {
				j.err = ErrUnavailable // its caller gave up waiting: not run
				break
			}
			if err := j.ctx.Err(); err != nil {
				j.err = err
				break
			}
			if _, err := t.ExecContext(ctx, "SAVEPOINT "+sp); err != nil {
				tx.Rollback()
				return fmt.Errorf("group commit: %w", err)
			}
			j.err = j.f(t)
			if j.err != nil && past() {
				j.err = fmt.Errorf("%w: a transaction got no answer from the database for %v: %w", ErrUnavailable, c.batchTimeout, j.err)
			}
			if j.err != nil {
				if _, err := t.ExecContext(ctx, "ROLLBACK TO SAVEPOINT "+sp); err != nil {
					tx.Rollback()
					return fmt.Errorf("group commit: the transaction was rolled back (%v) by: %w", err, j.err)
				}
			}
			// RELEASE fails if sqlite rolled the whole transaction back behind f's
			// back (then the savepoint is gone, and later statements would run
			// outside any transaction).
			if _, err := t.ExecContext(ctx, "RELEASE SAVEPOINT "+sp); err != nil {
				tx.Rollback()
				return fmt.Errorf("group commit: the transaction was rolled back: %w", err)
			}
			if j.err == nil {
				ok++
			}
			if j.err == nil || !retryable(j.err) || attempt == txRetries {
				break
			}
			time.Sleep(wait) // PostgreSQL aborted it to stay serialisable: again
			wait *= 2
		}
	}
	if ok == 0 {
		return tx.Rollback()
	}
	if c.beforeCommit != nil {
		if err := c.beforeCommit(len(batch)); err != nil {
			tx.Rollback()
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
