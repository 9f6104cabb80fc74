// Package testport hands out TCP ports on 127.0.0.1 for the processes tests start
// themselves with an address to listen on (a server told --listen 127.0.0.1:PORT,
// swtpm, PostgreSQL, nginx).
//
// A port found free by listening on port 0 and closing again is in the kernel's
// ephemeral range, which every outgoing connection on the machine draws from too: under
// a loaded `make test` (packages in parallel, tests opening thousands of connections)
// one of them took such a port before the process meant to bind it had started, which
// then failed with "address already in use". The ports handed out here lie outside that
// range (/proc/sys/net/ipv4/ip_local_port_range), so no outgoing connection and no
// listener on port 0 can take them, and each is reserved across the machine's test
// processes by an flock(2) on a file of its own, held until the process that took it
// exits. A port something else listens on is skipped.
package testport

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// held keeps the reservations' lock files open, and so locked, for the life of the
// process: a port handed out stays reserved until the test binary exits, which is the
// point (the process given it may bind it at any time). It is the package's only state.
var held sync.Map // port -> *os.File

// Take returns a port on 127.0.0.1 that is free and reserved for this process.
func Take() (int, error) { return take(false) }

// TakePair returns a port p with p and p+1 free and reserved (swtpm's server and
// control ports).
func TakePair() (int, error) { return take(true) }

func take(pair bool) (int, error) {
	lo, hi := span()
	if hi-lo < 100 {
		return anyPort(pair)
	}
	dir := filepath.Join(os.TempDir(), "edgeward-testports")
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return 0, fmt.Errorf("testport: %w", err)
	}
	for range 500 {
		p := lo + rand.IntN(hi-lo-1)
		if !reserve(dir, p) {
			continue
		}
		if !free(p) {
			continue // kept reserved: something listens there
		}
		if pair && (!reserve(dir, p+1) || !free(p+1)) {
			continue
		}
		return p, nil
	}
	return 0, errors.New("testport: no free port outside the ephemeral range in 500 tries")
}

// span is the range ports are taken from, [lo, hi): below the ephemeral range (from
// 10000, clear of well-known services), or above it when it starts too low.
func span() (lo, hi int) {
	elo, ehi := 32768, 60999 // Linux's default
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			a, err1 := strconv.Atoi(f[0])
			b, err2 := strconv.Atoi(f[1])
			if err1 == nil && err2 == nil {
				elo, ehi = a, b
			}
		}
	}
	if elo-10000 >= 1000 {
		return 10000, elo
	}
	return ehi + 1, 65535
}

// reserve takes port p's lock for the life of the process: false if another process
// (or this one, before) holds it.
func reserve(dir string, p int) bool {
	if _, ok := held.Load(p); ok {
		return false
	}
	f, err := os.OpenFile(filepath.Join(dir, strconv.Itoa(p)), os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return false
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return false
	}
	if _, loaded := held.LoadOrStore(p, f); loaded {
		f.Close()
		return false
	}
	return true
}

// free reports whether nothing listens on 127.0.0.1:p (or on every address at p).
func free(p int) bool {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// anyPort is the fallback when the ephemeral range leaves no room: a port the kernel
// found free a moment ago.
func anyPort(pair bool) (int, error) {
	for range 50 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, fmt.Errorf("testport: %w", err)
		}
		p := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !pair || free(p+1) {
			return p, nil
		}
	}
	return 0, errors.New("testport: no free port pair")
}
