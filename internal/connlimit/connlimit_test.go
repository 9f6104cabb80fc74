package connlimit

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"
)

// served accepts from l until it is closed, handing each connection to conns.
func served(t *testing.T, l *Listener) <-chan net.Conn {
	t.Helper()
	conns := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
		}
	}()
	t.Cleanup(func() { l.Close() })
	return conns
}

// dial connects to l from the loopback address from and waits (up to 10 s, however
// loaded the machine) for the listener to serve the connection (server set) or close it
// unserved (server nil).
func dial(t *testing.T, l *Listener, from string, conns <-chan net.Conn) (client, server net.Conn) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", l.Addr().String())
	if errors.Is(err, syscall.ECONNRESET) {
		return nil, nil // refused before the dial returned
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		select {
		case s := <-conns:
			return c, s
		default:
		}
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		var ne net.Error
		if err != nil && !(errors.As(err, &ne) && ne.Timeout()) {
			return c, nil // closed unserved
		}
	}
	t.Fatalf("a connection from %s was neither served nor closed in 10 s", from)
	return nil, nil
}

// refused says whether the server closed c without serving it (nil: at the dial).
func refused(t *testing.T, c net.Conn) bool {
	t.Helper()
	if c == nil {
		return true
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err := c.Read(make([]byte, 1))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return false
	}
	return err != nil // EOF or reset
}

// TestBounds: the per-source bound refuses a source's connection over it while another
// source is still served; the total bound refuses everyone; a closed connection (closed
// twice, too) gives back exactly its one place; an exempt source is bounded only in
// total; the refusals are reported with their bound.
func TestBounds(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []string
	l := New(inner, Config{Max: 4, PerSource: 2,
		Exempt: func(a netip.Addr) bool { return a == netip.MustParseAddr("127.0.0.9") },
		Refused: func(bound string, peer net.Addr) {
			mu.Lock()
			got = append(got, bound)
			mu.Unlock()
		}})
	conns := served(t, l)
	_, a1 := dial(t, l, "127.0.0.1", conns)
	_, a2 := dial(t, l, "127.0.0.1", conns)
	c3, a3 := dial(t, l, "127.0.0.1", conns)
	if a1 == nil || a2 == nil || a3 != nil || !refused(t, c3) {
		t.Fatalf("three connections from one source under PerSource 2: served %v %v %v; want the first two", a1 != nil, a2 != nil, a3 != nil)
	}
	_, b1 := dial(t, l, "127.0.0.2", conns)
	if b1 == nil {
		t.Fatal("another source was refused while the first was at its bound")
	}
	if n := l.Open(); n != 3 {
		t.Fatalf("Open = %d; want 3", n)
	}
	a1.Close()
	a1.Close() // gives its place back once
	_, a4 := dial(t, l, "127.0.0.1", conns)
	if a4 == nil {
		t.Fatal("a place given back by a closed connection was not taken")
	}
	// The exempt source is bounded in total only: one more fills the total of 4.
	_, e1 := dial(t, l, "127.0.0.9", conns)
	c, e2 := dial(t, l, "127.0.0.9", conns)
	if e1 == nil || e2 != nil || !refused(t, c) {
		t.Fatalf("exempt source at the total bound: served %v, %v; want the first only", e1 != nil, e2 != nil)
	}
	c, b2 := dial(t, l, "127.0.0.2", conns)
	if b2 != nil || !refused(t, c) {
		t.Fatal("a connection over the total bound was served")
	}
	if n := l.Open(); n != 4 {
		t.Fatalf("Open = %d; want 4", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{BoundSource, BoundTotal, BoundTotal}; !equal(got, want) {
		t.Fatalf("refusals reported: %v; want %v", got, want)
	}
}

// closeSpy is a connection whose Close calls onClose.
type closeSpy struct {
	net.Conn
	onClose func()
}

func (c closeSpy) Close() error {
	c.onClose()
	return nil
}

// TestPlaceGivenBackBeforeClose: a connection's place is given back before the
// connection is closed, so that a peer that sees the close (and connects again at once,
// as a client at its source's bound does after a Connection: close answer) finds it
// free; once, however often it is closed.
func TestPlaceGivenBackBeforeClose(t *testing.T) {
	l := NewLimiter(Config{Max: 1, PerSource: 1})
	src := netip.MustParsePrefix("192.0.2.7/32")
	if bound := l.take(src, true); bound != "" {
		t.Fatalf("take = %q; want the place", bound)
	}
	var atClose []int
	c := &Conn{Conn: closeSpy{onClose: func() { atClose = append(atClose, l.Open()) }}, l: l, src: src, keyed: true}
	c.Close()
	c.Close()
	if !slices.Equal(atClose, []int{0, 0}) {
		t.Fatalf("connections open as the connection was closed (twice): %v; want [0 0], its place given back first", atClose)
	}
	if bound := l.take(src, true); bound != "" {
		t.Fatalf("take after the close = %q; want the place given back (per source too)", bound)
	}
	if n := l.Open(); n != 1 {
		t.Fatalf("Open = %d; want 1", n)
	}
}

// TestZeroConfigBoundsNothing: 100 connections from one source, all served.
func TestZeroConfigBoundsNothing(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := New(inner, Config{})
	conns := served(t, l)
	for i := range 100 {
		if _, s := dial(t, l, "127.0.0.1", conns); s == nil {
			t.Fatalf("connection %d refused with no bound", i)
		}
	}
}

// TestConnKeepsWhatServersLookFor: ReadFrom (sendfile), CloseWrite, NetConn.
func TestConnKeepsWhatServersLookFor(t *testing.T) {
	var c net.Conn = &Conn{}
	if _, ok := c.(io.ReaderFrom); !ok {
		t.Error("no ReadFrom: files would not go out by sendfile")
	}
	if _, ok := c.(interface{ CloseWrite() error }); !ok {
		t.Error("no CloseWrite")
	}
	if _, ok := c.(interface{ NetConn() net.Conn }); !ok {
		t.Error("no NetConn")
	}
}

func TestSource(t *testing.T) {
	for _, tt := range []struct {
		peer net.Addr
		want string // "": not keyed
	}{
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:192.0.2.7"), Port: 1}, "192.0.2.7/32"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:3:4:5:6"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8:1:2:ffff::1"), Port: 1}, "2001:db8:1:2::/64"},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, ""},
	} {
		p, ok := Source(tt.peer)
		if got := map[bool]string{true: p.String(), false: ""}[ok]; got != tt.want {
			t.Errorf("Source(%v) = %q; want %q", tt.peer, got, tt.want)
		}
	}
}

func TestFromDescriptors(t *testing.T) {
	if n := FromDescriptors(256); n != 0 && n < 64 {
		t.Fatalf("FromDescriptors = %d; want 0 or at least 64", n)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
