package audit

import (
	"context"
	"crypto/ed25519"
	"path/filepath"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/internal/durable"
)

// TestOpenWhileAnotherProcessAppends: a command that opens the audit log of a running
// server's sqlite database (publish, audit export) while the server appends must not
// fail with SQLITE_BUSY. Both handles are opened as the server and the CLI open them
// (durable.OpenSQLite): the server's with immediate transactions on one connection,
// the command's with sqlite's deferred ones, whose first read pins a snapshot that a
// later write cannot upgrade once the server has committed after it.
func TestOpenWhileAnotherProcessAppends(t *testing.T) {
	ctx := context.Background()
	where := filepath.Join(t.TempDir(), "fleet.db")
	_, key, _ := ed25519.GenerateKey(nil)
	server, err := durable.OpenSQLite(ctx, where, durable.SQLite{MaxOpenConns: 1, ImmediateTx: true})
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	l, err := Open(ctx, Config{DB: server, Key: key, Origin: "audit.test"})
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	var appended int
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := l.Append(ctx, "test", "busy.append", "s", map[string]int{"n": appended}); err != nil {
				t.Errorf("append %d: %v", appended, err)
				return
			}
			appended++
		}
	}()
	for i := range 40 {
		db, err := durable.OpenSQLite(ctx, where, durable.SQLite{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = Open(ctx, Config{DB: db, Key: key, Origin: "audit.test"})
		db.Close()
		if err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("open %d, while the server appended (%d so far): %v", i, appended, err)
		}
	}
	close(stop)
	wg.Wait()
	if appended == 0 {
		t.Fatal("the server appended nothing meanwhile: the test proved nothing")
	}
}
