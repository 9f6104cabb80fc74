package fleet

import (
	"context"
	"database/sql"
	"sync"
)

// maxStmts bounds the prepared statements a store keeps: the store's own queries, the
// audit log's (whose IN lists and VALUES rows vary with the tree's size, a few dozen
// shapes), and room to spare. Beyond it, queries are prepared for each use, as before.
const maxStmts = 512

// stmtCache keeps the statements the store's transactions run prepared, so that a
// check-in's twenty-odd statements are not parsed and planned by sqlite each time (a
// tenth of the server's CPU per check-in before it). Statements are prepared on the
// database, outside any transaction: a query first seen inside a transaction runs
// unprepared and is noted, and the committer prepares the noted ones after its batch
// (on sqlite the store has one connection, held by the transaction while it runs).
// Transactions then use them through sql.Tx.StmtContext, which reuses the statement
// already prepared on the transaction's connection. Safe for concurrent use.
//
// A prepared statement is the same SQL with the same arguments: nothing about what a
// transaction reads, writes or commits changes. One restriction: a query's rows must
// be read to the end (or closed) before the same query runs again in the transaction,
// since both would use one prepared statement; every multi-row read of the store and of
// the audit log is a loop that does nothing else.
type stmtCache struct {
	mu     sync.Mutex
	stmts  map[string]*sql.Stmt // nil value: could not be prepared, never retried
	missed map[string]bool
	closed bool
}

func newStmtCache() *stmtCache {
	return &stmtCache{stmts: map[string]*sql.Stmt{}, missed: map[string]bool{}}
}

// get returns the prepared statement for query (in the store's dialect), or nil when
// it is not prepared yet (it is noted for prepare) or will not be.
func (c *stmtCache) get(query string) *sql.Stmt {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.stmts[query]
	if !ok && !c.closed && len(c.stmts)+len(c.missed) < maxStmts {
		c.missed[query] = true
	}
	return st
}

// prepare prepares the queries noted since the last call. The caller holds no
// transaction of db (see stmtCache). A query that fails to prepare is not retried: it
// keeps running unprepared, and its error shows where it runs.
func (c *stmtCache) prepare(ctx context.Context, db *sql.DB) {
	if c == nil {
		return
	}
	c.mu.Lock()
	var todo []string
	for q := range c.missed {
		todo = append(todo, q)
	}
	clear(c.missed)
	c.mu.Unlock()
	for _, q := range todo {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			st = nil
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			if st != nil {
				st.Close()
			}
			return
		}
		c.stmts[q] = st
		c.mu.Unlock()
	}
}

// pending reports whether queries are waiting to be prepared.
func (c *stmtCache) pending() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.missed) > 0
}

// close closes the prepared statements; the cache prepares nothing more.
func (c *stmtCache) close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	for _, st := range c.stmts {
		if st != nil {
			st.Close()
		}
	}
	clear(c.stmts)
	clear(c.missed)
}

// stmt returns query prepared for this transaction (nil: run it unprepared), one
// sql.Stmt per query and transaction.
func (t *txn) stmt(ctx context.Context, query string) *sql.Stmt {
	st := t.stmts.get(query)
	if st == nil {
		return nil
	}
	if s, ok := t.local[st]; ok {
		return s
	}
	if t.local == nil {
		t.local = map[*sql.Stmt]*sql.Stmt{}
	}
	s := t.Tx.StmtContext(ctx, st)
	t.local[st] = s
	return s
}
