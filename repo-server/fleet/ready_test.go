package fleet

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/disktest"
)

// testReadyWhileWritesFail: Ready says whether the store takes writes, not only whether
// the database answers. The database is made read-only under the store (sqlite's
// query_only, PostgreSQL's default_transaction_read_only, on the store's one
// connection): reads still commit, and before, Ready (a SELECT 1) said ready while
// every write failed. Now a write failing for its storage makes Ready probe with a
// write, and say ErrCannotWrite until one commits; once the database takes writes
// again Ready says so without any other write (nothing else may be writing: a load
// balancer stopped sending requests).
func testReadyWhileWritesFail(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready = %v; want nil", err)
	}
	s.db.DB.SetMaxOpenConns(1) // the one connection the setting below applies to
	readOnly := func(on bool) {
		t.Helper()
		q := map[bool]string{true: `PRAGMA query_only = 1`, false: `PRAGMA query_only = 0`}
		if s.Engine() == "postgres" {
			q = map[bool]string{true: `SET default_transaction_read_only = on`, false: `SET default_transaction_read_only = off`}
		}
		if _, err := s.db.ExecContext(ctx, q[on]); err != nil {
			t.Fatal(err)
		}
	}
	readOnly(true)
	err := s.Enroll(ctx, "dev-1", nil, time.Now())
	if err == nil || !writeFault(err) {
		t.Fatalf("Enroll on a read-only database = %v; want a storage fault", err)
	}
	for range 2 {
		if err := s.Ready(ctx); !errors.Is(err, ErrCannotWrite) {
			t.Fatalf("Ready while writes fail = %v; want ErrCannotWrite", err)
		}
	}
	readOnly(false)
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready once the database takes writes again = %v; want nil", err)
	}
	if f := s.db.fault.Load(); f != nil {
		t.Errorf("fault after a probe committed = %v; want none (Ready back to a read)", *f)
	}
	if err := s.Enroll(ctx, "dev-1", nil, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestReadyOnAFullDisk: on a file system that fills up under a running sqlite store,
// its writes fail ("database or disk is full") and Ready says ErrCannotWrite, naming no
// space (NoSpace); once space is freed Ready is nil again, without another write. Before,
// Ready (a SELECT 1, which commits on a full disk) was nil throughout, and /readyz
// said 200 while every check-in failed (found from outside). Root only (tmpfs).
func TestReadyOnAFullDisk(t *testing.T) {
	dir := t.TempDir()
	disktest.Mount(t, dir, "8m")
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
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
	// Check-ins' worth of writes until they fail for want of space.
	labels := map[string]string{"a": strings.Repeat("x", 250), "b": strings.Repeat("y", 250), "c": strings.Repeat("z", 250)}
	var werr error
	for i := 0; werr == nil && i < 10000; i++ {
		werr = s.Enroll(ctx, "dev-"+strings.Repeat("0", i%7)+string(rune('a'+i%26))+time.Now().Format("150405.000000000"), labels, time.Now())
	}
	if !NoSpace(werr) {
		t.Fatalf("writes on a full disk ended with %v; want no space", werr)
	}
	for range 3 {
		if err := s.Ready(ctx); !errors.Is(err, ErrCannotWrite) || !NoSpace(err) {
			t.Fatalf("Ready on a full disk = %v; want ErrCannotWrite, no space", err)
		}
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if err := s.Ready(ctx); err != nil {
		t.Fatalf("Ready once space is freed = %v; want nil", err)
	}
}
