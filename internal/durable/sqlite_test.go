package durable

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestOpenSQLitePragmas(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		cfg               SQLite
		busy              int
		cache, checkpoint string
	}{
		{SQLite{}, 10000, "-2000", "1000"},
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
