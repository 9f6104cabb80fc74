package pgtest

import (
	"context"
	"database/sql"
	"os"
	"testing"
)

func TestClusterLifecycle(t *testing.T) {
	c := New()
	var dir string
	t.Run("databases", func(t *testing.T) {
		ctx := context.Background()
		u1, u2 := c.Database(t), c.Database(t)
		if u1 == u2 {
			t.Fatalf("two tests share database %s", u1)
		}
		db, err := sql.Open("pgx", u1)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		var v string
		if err := db.QueryRowContext(ctx, `SHOW server_version`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, `CREATE TABLE x (a BIGINT)`); err != nil {
			t.Fatal(err)
		}
		t.Logf("PostgreSQL %s on port %d", v, c.Port())
		c.mu.Lock()
		dir = c.dir
		c.mu.Unlock()
	})
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if dir != "" {
		if _, err := os.Stat(dir); !os.IsNotExist(err) {
			t.Fatalf("cluster directory %s left behind (%v)", dir, err)
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
