package durable

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"syscall"
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
	// last connection closes (SQLITE_FCNTL_PERSIST_WAL): sqlite otherwise deletes them
	// then and creates them again at the next open, which needs free blocks, so a
	// device whose disk had filled up could not open its state after a restart ("disk
	// I/O error", SQLITE_IOERR_SHMSIZE) and stopped serving, and a server stopped
	// cleanly could not start again on a full disk (not even to serve TUF metadata).
	// Kept, they are reused in place. With WALAutoCheckpoint 1 (the default with
	// KeepLog, a device's) the open checkpoints the kept log (RESTART), and every commit
	// is checkpointed, so the next commit writes the
	// log from its start again, over blocks it already has: a commit that rewrites pages
	// the database has (a device's status rows) succeeds on a full disk for as long as
	// the agent runs. With sqlite's default the log grew a page or so per commit until
	// 1,000 pages, and on a full disk a running agent's outbox failed every write
	// ("database or disk is full") once the log outgrew its blocks, some 20 check-ins
	// after a restart. A kept log belongs to its database: sqlite deletes one it finds
	// beside a missing or empty database (a wiped state starts empty), but one beside
	// an older copy of the database would be replayed over it, so whoever copies or
	// restores the database copies or removes its -wal and -shm with it
	// (docs/OPERATORS.md, "Backups and restore", says so for the server's fleet.db).
	// With a larger WALAutoCheckpoint (the server's databases) the open does not
	// checkpoint, and the log is written from its start again once it reached that size
	// and was checkpointed: until then a commit on a full disk fails once the log
	// outgrows the blocks it had.
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
		return nil, fmt.Errorf("open sqlite %s: %w", path, namedCause(path, err))
	}
	if mode != "wal" {
		db.Close()
		return nil, fmt.Errorf("open sqlite %s: journal mode %q, want wal", path, mode)
	}
	if cfg.KeepLog && autoCheckpoint == 1 {
		// A kept log's frames were copied into the database before it closed, but the
		// index rebuilt at this open does not know it, and the next commit would append
		// to the log, growing it (on a full disk: "database or disk is full"). A RESTART
		// checkpoint marks them copied, so the next commit writes the log from its
		// start, over blocks it already has. Best effort: if another process holds a
		// read, the log is left as it is and grows as before. Only when every commit is
		// checkpointed: a RESTART blocks the other processes' writers while it copies
		// the log, and a larger log (the server's) is written from its start again
		// anyway once it reached its size and was checkpointed.
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

// sqlite's primary result codes that a storage fault gives (the extended codes keep
// them in their low byte).
const (
	sqliteReadOnly = 8  // SQLITE_READONLY: a read-only file or file system
	sqliteIOErr    = 10 // SQLITE_IOERR: a read, write, fsync or -shm mapping failed
	sqliteFull     = 13 // SQLITE_FULL: "database or disk is full"
	sqliteCantOpen = 14 // SQLITE_CANTOPEN: a file (the -wal, the -shm) cannot be created
)

// sqliteCode is err's sqlite primary result code, or 0 if it has none.
func sqliteCode(err error) int {
	var e *sqlite.Error
	if errors.As(err, &e) {
		return e.Code() & 0xff
	}
	return 0
}

// lowSpace is the free space below which an I/O error of sqlite's is taken to be for
// want of space: creating the -shm file takes 32 KiB, a commit a few pages of log.
const lowSpace = 1 << 20

// namedCause is err, of an operation on the database at path, joined with
// syscall.ENOSPC when its file system is full and the error is one a full disk gives:
// sqlite says "disk I/O error (4874)" (SQLITE_IOERR_SHMSIZE) when it cannot create
// the -shm file, which says nothing of the cause to an operator.
func namedCause(path string, err error) error {
	if errors.Is(err, syscall.ENOSPC) {
		return err
	}
	switch sqliteCode(err) {
	case sqliteIOErr, sqliteFull, sqliteCantOpen:
	default:
		return err
	}
	dir := filepath.Dir(path)
	free, ok := freeBytes(dir)
	if !ok || free >= lowSpace {
		return err
	}
	return fmt.Errorf("%w: %w (%d bytes free in %s)", err, syscall.ENOSPC, free, dir)
}

// NoSpace reports whether err says a write failed for want of space: ENOSPC, sqlite's
// "database or disk is full" (SQLITE_FULL), or an error OpenSQLite named so.
func NoSpace(err error) bool {
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || sqliteCode(err) == sqliteFull
}

// StorageFault reports whether err says the storage under a database cannot take
// writes: NoSpace, an I/O error (EIO, SQLITE_IOERR) or a read-only file or file
// system (EROFS, SQLITE_READONLY). A lock, a constraint or a bad query is not one.
func StorageFault(err error) bool {
	if err == nil {
		return false
	}
	if NoSpace(err) || errors.Is(err, syscall.EIO) || errors.Is(err, syscall.EROFS) {
		return true
	}
	switch sqliteCode(err) {
	case sqliteIOErr, sqliteReadOnly:
		return true
	}
	return false
}
