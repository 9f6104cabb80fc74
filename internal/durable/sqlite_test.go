package durable

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/disktest"
)

func TestOpenSQLitePragmas(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cfg               SQLite
		busy              int
		cache, checkpoint string
	}{
		{SQLite{}, 10000, "-2000", "1000"},
		{SQLite{KeepLog: true}, 10000, "-2000", "1"},
		{SQLite{BusyTimeout: 250 * time.Millisecond, MaxOpenConns: 1, ImmediateTx: true, CacheMiB: 48, WALAutoCheckpoint: 6000}, 250, "-49152", "6000"},
	} {
		path := filepath.Join(t.TempDir(), "x.db")
		db, err := OpenSQLite(ctx, path, tc.cfg)
		if err != nil {
			t.Fatalf("OpenSQLite(%+v) = %v", tc.cfg, err)
		}
		for _, p := range []struct {
			pragma string
			want   string
		}{{"journal_mode", "wal"}, {"synchronous", "2"}, {"foreign_keys", "1"}, {"temp_store", "2"}, {"busy_timeout", strconv.Itoa(tc.busy)},
			{"cache_size", tc.cache}, {"wal_autocheckpoint", tc.checkpoint}} {
			var got string
			if err := db.QueryRowContext(ctx, "PRAGMA "+p.pragma).Scan(&got); err != nil || got != p.want {
				t.Errorf("OpenSQLite(%+v): PRAGMA %s = %q, %v; want %q", tc.cfg, p.pragma, got, err, p.want)
			}
		}
		if got := db.Stats().MaxOpenConnections; got != tc.cfg.MaxOpenConns {
			t.Errorf("OpenSQLite(%+v): MaxOpenConnections = %d", tc.cfg, got)
		}
		db.Close()
	}
}

func TestOpenSQLiteForeignKeysAndDurability(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "x.db")
	db, err := OpenSQLite(ctx, path, SQLite{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE p (id INTEGER PRIMARY KEY);
CREATE TABLE c (id INTEGER PRIMARY KEY, p INTEGER NOT NULL REFERENCES p(id));
INSERT INTO p VALUES (1); INSERT INTO c VALUES (1, 1)`); err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `INSERT INTO c VALUES (2, 99)`); err == nil || !strings.Contains(err.Error(), "FOREIGN KEY") {
		t.Errorf("insert with a dangling reference = %v; want a FOREIGN KEY error", err)
	}
	db.Close()
	db, err = OpenSQLite(ctx, path, SQLite{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM c`).Scan(&n); err != nil || n != 1 {
		t.Errorf("after reopen: %d rows, %v; want 1", n, err)
	}
}

func TestOpenSQLiteErrors(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "missing", "x.db")
	if db, err := OpenSQLite(ctx, path, SQLite{}); err == nil {
		db.Close()
		t.Fatalf("OpenSQLite(%s) = nil error; want one", path)
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("OpenSQLite error %q does not name the path", err)
	}
}

// TestOpenSQLiteOnAFullDisk: a database written, closed, and then left on a file system
// that has filled up opens again, reads and takes small commits, as many as come: its
// -wal and -shm files were kept at close and are reused in place. Before, sqlite deleted them at close
// and could not create them again ("disk I/O error", SQLITE_IOERR_SHMSIZE), so a device
// whose disk had filled could not open its state after a restart. Root only (tmpfs).
func TestOpenSQLiteOnAFullDisk(t *testing.T) {
	dir := t.TempDir()
	disktest.Mount(t, dir, "4m")
	ctx := context.Background()
	path := filepath.Join(dir, "state.db")
	db, err := OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1, KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)`, `INSERT INTO kv VALUES ('slot', 'a')`} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()
	for _, f := range []string{path + "-wal", path + "-shm"} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("after close: %v; want the file kept", err)
		}
	}
	// Fill the file system.
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	for _, chunk := range [][]byte{make([]byte, 64<<10), make([]byte, 512)} {
		for {
			if _, err := f.Write(chunk); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatal(err)
				}
				break
			}
		}
	}
	f.Close()

	db, err = OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1, KeepLog: true})
	if err != nil {
		t.Fatalf("open on a full disk: %v", err)
	}
	defer db.Close()
	var v string
	if err := db.QueryRowContext(ctx, `SELECT v FROM kv WHERE k = 'slot'`).Scan(&v); err != nil || v != "a" {
		t.Fatalf("read on a full disk: %q, %v", v, err)
	}
	// Every commit is checkpointed, and the next writes the log from its start: commits
	// that rewrite the database's pages go on succeeding, as a running device's status
	// rows must (with sqlite's default, 1,000 pages, the log outgrew its blocks after a
	// few commits: "database or disk is full").
	for i := range 200 {
		if _, err := db.ExecContext(ctx, `UPDATE kv SET v = ? WHERE k = 'slot'`, strconv.Itoa(i)); err != nil {
			t.Fatalf("commit %d on a full disk (into the kept log): %v", i, err)
		}
	}
}

// TestKeptLogWithoutItsDatabase: a kept log whose database was deleted (a wiped state)
// is not replayed into the new database, which starts empty (sqlite deletes a log it
// finds beside a missing or empty database); and without KeepLog the log is gone at
// close, as sqlite does by default.
func TestKeptLogWithoutItsDatabase(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	write := func(keep bool) {
		t.Helper()
		db, err := OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1, KeepLog: keep})
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		for _, q := range []string{`CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT)`, `INSERT OR REPLACE INTO kv VALUES ('slot', 'a')`} {
			if _, err := db.ExecContext(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(true)
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Fatalf("KeepLog: %v; want the log kept", err)
	}
	if err := os.Remove(path); err != nil { // the database wiped, its log left behind
		t.Fatal(err)
	}
	db, err := OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1, KeepLog: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	err = db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE name = 'kv'`).Scan(&n)
	db.Close()
	if err != nil || n != 0 {
		t.Fatalf("a new database beside an old kept log has %d kv tables (%v); want none (the log not replayed)", n, err)
	}
	os.Remove(path)
	os.Remove(path + "-wal")
	os.Remove(path + "-shm")
	write(false)
	if _, err := os.Stat(path + "-wal"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("without KeepLog the log after close: %v; want it deleted", err)
	}
}

// TestOpenSQLiteNamesAFullDisk: a database that cannot be opened because its file
// system is full says so: its -wal and -shm were not kept (no KeepLog), and sqlite's
// "disk I/O error (4874)" (SQLITE_IOERR_SHMSIZE: the -shm could not be created) is
// joined with ENOSPC, naming the directory and its free space. Before, the error said
// only "disk I/O error (4874)". Root only (tmpfs).
func TestOpenSQLiteNamesAFullDisk(t *testing.T) {
	dir := t.TempDir()
	disktest.Mount(t, dir, "4m")
	ctx := context.Background()
	path := filepath.Join(dir, "fleet.db")
	db, err := OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if err := os.WriteFile(filepath.Join(dir, "filler"), make([]byte, 8<<20), 0o600); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("filling the disk = %v; want ENOSPC", err)
	}
	_, err = OpenSQLite(ctx, path, SQLite{MaxOpenConns: 1})
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "no space left on device") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("open on a full disk without a kept log = %v; want it to say no space left on device in %s", err, dir)
	}
	if !NoSpace(err) || !StorageFault(err) {
		t.Errorf("NoSpace, StorageFault(%v) = %v, %v; want true, true", err, NoSpace(err), StorageFault(err))
	}
}

// TestStorageFault: the errors of a storage that cannot take writes are told from
// others.
func TestStorageFault(t *testing.T) {
	ctx := context.Background()
	db, err := OpenSQLite(ctx, filepath.Join(t.TempDir(), "x.db"), SQLite{MaxOpenConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, constraint := db.ExecContext(ctx, `CREATE TABLE t (k INTEGER PRIMARY KEY CHECK (k > 0)); INSERT INTO t VALUES (0)`)
	// sqlite's own "database or disk is full" (SQLITE_FULL), here from a page limit.
	_, full := db.ExecContext(ctx, `PRAGMA max_page_count = 3; CREATE TABLE big (v BLOB); INSERT INTO big VALUES (zeroblob(100000))`)
	if full == nil || !strings.Contains(full.Error(), "database or disk is full") {
		t.Fatalf("an insert past max_page_count = %v; want database or disk is full", full)
	}
	for _, c := range []struct {
		err              error
		noSpace, storage bool
	}{
		{nil, false, false},
		{errors.New("database is locked"), false, false},
		{constraint, false, false},
		{full, true, true},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, true, true},
		{fmt.Errorf("commit: %w", syscall.EIO), false, true},
		{fmt.Errorf("commit: %w", syscall.EROFS), false, true},
	} {
		if got := NoSpace(c.err); got != c.noSpace {
			t.Errorf("NoSpace(%v) = %v; want %v", c.err, got, c.noSpace)
		}
		if got := StorageFault(c.err); got != c.storage {
			t.Errorf("StorageFault(%v) = %v; want %v", c.err, got, c.storage)
		}
	}
}
