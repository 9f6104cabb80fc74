package testport

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
)

// TestTake: ports are outside the ephemeral range, free, never handed out twice, and
// reserved against other processes (a second flock on the port's file fails, as another
// test binary's would); a pair is two free ports.
func TestTake(t *testing.T) {
	lo, hi := span()
	seen := map[int]bool{}
	for range 50 {
		p, err := Take()
		if err != nil {
			t.Fatal(err)
		}
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
		if hi-lo >= 100 && (p < lo || p >= hi) {
			t.Fatalf("port %d outside [%d, %d)", p, lo, hi)
		}
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d handed out but not free: %v", p, err)
		}
		l.Close()
		f, err := os.Open(filepath.Join(os.TempDir(), "edgeward-testports", strconv.Itoa(p)))
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			t.Fatalf("port %d's reservation could be taken again", p)
		}
		f.Close()
	}
	p, err := TakePair()
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []int{p, p + 1} {
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(q))
		if err != nil {
			t.Fatalf("pair port %d not free: %v", q, err)
		}
		l.Close()
	}
	// Something listening on a port: not free, so never handed out.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if free(l.Addr().(*net.TCPAddr).Port) {
		t.Fatal("free() says a listened-on port is free")
	}
}
