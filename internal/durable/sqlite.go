package durable

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/url"
	"time"

	"modernc.org/sqlite"
)

// SQLite configures OpenSQLite. The zero value is the house default.
//
// Every database OpenSQLite returns is in WAL mode with synchronous=FULL (a transaction
// is durable when its commit returns, and readers do not block the writer) and has
// foreign key enforcement on. Its temporary files live in memory (temp_store=MEMORY):
// above all the statement and savepoint journals, which only a rollback within an open
// transaction reads (a crash recovers from the WAL, never from them), so writing them
// to a file bought nothing and cost a write(2) per page a savepoint touched (the fleet
// store's group commit runs every check-in in a savepoint).
type SQLite struct {
	// BusyTimeout is how long a statement waits for another connection's (or
	// process's) lock before it fails with SQLITE_BUSY. Zero means 10 s.
	BusyTimeout time.Duration
	// MaxOpenConns bounds the pool (sql.DB.SetMaxOpenConns). Zero means no bound; 1
	// serialises every use of the database in this process, so no statement ever
	// waits on another connection of the same process.
	MaxOpenConns int
	// ImmediateTx makes every transaction take the write lock when it begins (BEGIN
	// IMMEDIATE) instead of at its first write, so a read-then-write transaction
	// cannot fail half-way on a lock upgrade. Zero means deferred transactions.
	ImmediateTx bool
	// CacheMiB is each connection's page cache (cache_size) in MiB. Zero means sqlite's
	// default, 2 MiB.
	CacheMiB int
	// WALAutoCheckpoint is the size of the write-ahead log, in pages, at which a commit
	// copies it back into the database file (wal_autocheckpoint). Zero means sqlite's
	// default, 1,000 pages (4 MiB), or 1 with KeepLog. A larger log is checkpointed less
	// often, and a page that many commits rewrote is then written to the database file
	// once instead of once per checkpoint; each commit is still fsynced
	// (synchronous=FULL) before it returns.
	WALAutoCheckpoint int
	// KeepLog keeps the write-ahead log and shared-memory index (-wal, -shm) when the
	// last connection closes (SQLITE_FCNTL_PERSIST_WAL), for a device's databases:
	// sqlite otherwise deletes them then and creates them again at the next open, which
	// needs free blocks, so a device whose disk had filled up could not open its state
	// after a restart ("disk I/O error", SQLITE_IOERR_SHMSIZE) and stopped serving.
	// Kept, they are reused in place: the open checkpoints the kept log (RESTART), and
	// every commit is checkpointed (WALAutoCheckpoint 1), so the next commit writes the
	// log from its start again, over blocks it already has: a commit that rewrites pages
	// the database has (a device's status rows) succeeds on a full disk for as long as
	// the agent runs. With sqlite's default the log grew a page or so per commit until
	// 1,000 pages, and on a full disk a running agent's outbox failed every write
	// ("database or disk is full") once the log outgrew its blocks, some 20 check-ins
	// after a restart. A kept log belongs to its database: sqlite deletes one it finds
	// beside a missing or empty database (a wiped state starts empty), but one beside
	// an older copy of the database would be replayed over it, so whoever copies or
	// restores the database copies or removes its -wal and -shm with it. The server's
	// databases, which operators back up and restore, do not keep theirs.
	KeepLog bool
}

// OpenSQLite opens (creating if needed) the sqlite database at path with the pragmas
// above and checks that it really is in WAL mode (a database on a file system without
// shared memory would silently fall back to another journal).
func OpenSQLite(ctx context.Context, path string, cfg SQLite) (*sql.DB, error) {
	busy := cfg.BusyTimeout
	if busy == 0 {
		busy = 10 * time.Second
	}
	q := url.Values{}
	for _, p := range []string{
		"journal_mode(WAL)",
		"synchronous(FULL)",
		fmt.Sprintf("busy_timeout(%d)", busy.Milliseconds()),
		"foreign_keys(1)",
		"temp_store(MEMORY)",
	} {
		q.Add("_pragma", p)
	}
	if cfg.CacheMiB > 0 {
		q.Add("_pragma", fmt.Sprintf("cache_size(%d)", -cfg.CacheMiB<<10))
	}
	autoCheckpoint := cfg.WALAutoCheckpoint
	if autoCheckpoint == 0 && cfg.KeepLog {
		autoCheckpoint = 1
	}
	if autoCheckpoint > 0 {
		q.Add("_pragma", fmt.Sprintf("wal_autocheckpoint(%d)", autoCheckpoint))
	}
	if cfg.ImmediateTx {
		q.Set("_txlock", "immediate")
	}
	c, err := sqlite.NewConnector("file:" + path + "?" + q.Encode())
	if err != nil {
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	var db *sql.DB
	if cfg.KeepLog {
		db = sql.OpenDB(persistWAL{c})
	} else {
		db = sql.OpenDB(c)
	}
	if cfg.MaxOpenConns > 0 {
		db.SetMaxOpenConns(cfg.MaxOpenConns)
	}
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: %w", path, err)
	}
	if mode != "wal" {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: journal mode %q, want wal", path, mode)
	}
	if cfg.KeepLog {
		// A kept log's frames were copied into the database before it closed, but the
		// index rebuilt at this open does not know it, and the next commit would append
		// to the log, growing it (on a full disk: "database or disk is full"). A RESTART
		// checkpoint marks them copied, so the next commit writes the log from its
		// start, over blocks it already has. Best effort: if another process holds a
		// read, the log is left as it is and grows as before.
		db.ExecContext(ctx, "PRAGMA wal_checkpoint(RESTART)")
	}
	return db, nil
}

// persistWAL is a connector whose connections keep the WAL and -shm files when they
// close (SQLite.KeepLog).
type persistWAL struct{ driver.Connector }

func (p persistWAL) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := p.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	fc, ok := conn.(sqlite.FileControl)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("sqlite connection %T has no file control", conn)
	}
	if _, err := fc.FileControlPersistWAL("main", 1); err != nil {
		conn.Close()
		return nil, fmt.Errorf("sqlite: keep the write-ahead log: %w", err)
	}
	return conn, nil
}
