// Package connlimit bounds the connections a listener keeps open: in all, and per
// source address. A server that accepts every connection runs out of file descriptors
// when a client opens many and sends nothing (each is held until the header timeout):
// then it can open no file, no database connection and no log segment either. With a
// bound below the descriptor limit the process keeps descriptors for its own work, and
// a per-source bound keeps one address from taking all the connections.
//
// A connection over a bound is closed at once, with a reset (it was never served).
package connlimit

import (
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
)

// Config bounds a Listener's connections. The zero value bounds nothing.
type Config struct {
	// Max bounds the connections open at once; 0: no bound.
	Max int
	// PerSource bounds the connections open at once from one source: an IPv4 address,
	// or an IPv6 /64 (what one host or site holds); 0: no bound.
	PerSource int
	// Exempt says which sources PerSource does not bound (trusted proxies, whose
	// connections carry many clients'); nil: none.
	Exempt func(netip.Addr) bool
	// Refused, if set, is called for each connection refused over a bound, before it is
	// closed (a peer that sees the reset finds it counted), with the
	// bound ("total" or "source") and the peer.
	Refused func(bound string, peer net.Addr)
}

// Bounds' names, as Config.Refused gets them.
const (
	BoundTotal  = "total"
	BoundSource = "source"
)

// Limiter holds the bounds' counts, for one or more listeners (which then share them:
// they share the process's descriptors). Safe for concurrent use.
type Limiter struct {
	cfg Config

	mu       sync.Mutex
	open     int
	bySource map[netip.Prefix]int
}

// NewLimiter returns a Limiter with c's bounds.
func NewLimiter(c Config) *Limiter {
	return &Limiter{cfg: c, bySource: map[netip.Prefix]int{}}
}

// Open is the number of connections open now.
func (l *Limiter) Open() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// Listen returns ln with its connections counted against l's bounds.
func (l *Limiter) Listen(ln net.Listener) *Listener {
	return &Listener{Listener: ln, l: l}
}

// Listener is a net.Listener whose Accept returns only connections within its
// Limiter's bounds; the others it closes itself. Its connections count against the
// bounds until they are closed.
type Listener struct {
	net.Listener
	l *Limiter
}

// New bounds ln's connections by c, alone.
func New(ln net.Listener, c Config) *Listener { return NewLimiter(c).Listen(ln) }

// Open is the number of connections open now (on every listener of the Limiter).
func (ln *Listener) Open() int { return ln.l.Open() }

// Accept returns the next connection within the bounds.
func (ln *Listener) Accept() (net.Conn, error) {
	l := ln.l
	for {
		c, err := ln.Listener.Accept()
		if err != nil {
			return nil, err
		}
		src, keyed := Source(c.RemoteAddr())
		if keyed && l.cfg.Exempt != nil && l.cfg.Exempt(src.Addr()) {
			keyed = false
		}
		if bound := l.take(src, keyed); bound != "" {
			// Reported before the close, so a peer that sees its reset finds the
			// refusal already counted.
			if l.cfg.Refused != nil {
				l.cfg.Refused(bound, c.RemoteAddr())
			}
			if tc, ok := c.(interface{ SetLinger(int) error }); ok {
				tc.SetLinger(0) // a reset: no TIME_WAIT left for a flood
			}
			c.Close()
			continue
		}
		return &Conn{Conn: c, l: l, src: src, keyed: keyed}, nil
	}
}

// take counts a connection from src against the bounds, or names the bound it is over.
func (l *Limiter) take(src netip.Prefix, keyed bool) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.cfg.Max > 0 && l.open >= l.cfg.Max {
		return BoundTotal
	}
	if keyed && l.cfg.PerSource > 0 {
		if l.bySource[src] >= l.cfg.PerSource {
			return BoundSource
		}
		l.bySource[src]++
	}
	l.open++
	return ""
}

func (l *Limiter) release(src netip.Prefix, keyed bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if keyed && l.cfg.PerSource > 0 {
		if n := l.bySource[src] - 1; n > 0 {
			l.bySource[src] = n
		} else {
			delete(l.bySource, src)
		}
	}
}

// Source is the source a peer's connections count against: its IPv4 address (an
// IPv4-mapped IPv6 address is one), or its IPv6 /64. false for a peer that is not an
// IP address (a Unix socket's).
func Source(peer net.Addr) (netip.Prefix, bool) {
	var a netip.Addr
	switch p := peer.(type) {
	case *net.TCPAddr:
		a, _ = netip.AddrFromSlice(p.IP)
	default:
		ap, err := netip.ParseAddrPort(peer.String())
		if err != nil {
			return netip.Prefix{}, false
		}
		a = ap.Addr()
	}
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return netip.Prefix{}, false
	case a.Is4():
		return netip.PrefixFrom(a, 32), true
	default:
		p, _ := a.WithZone("").Prefix(64)
		return p, true
	}
}

// Conn is a connection a Listener accepted: it counts against the bounds until it is
// first closed. It keeps what servers look for on a *net.TCPConn: ReadFrom (sendfile
// for files), CloseWrite (a graceful close), and NetConn, the connection itself, for
// writes that want it whole (net.Buffers' writev).
type Conn struct {
	net.Conn
	l      *Limiter
	src    netip.Prefix
	keyed  bool
	closed atomic.Bool
}

// Close closes the connection and, the first time, gives its place back: before the
// connection is closed, so that a peer that sees the close and connects again finds the
// place free (a client at its source's bound whose server closes each connection after
// its answer, Connection: close, could be refused its next one if it came between the
// close and the release).
func (c *Conn) Close() error {
	if c.closed.CompareAndSwap(false, true) {
		c.l.release(c.src, c.keyed)
	}
	return c.Conn.Close()
}

// NetConn is the connection itself.
func (c *Conn) NetConn() net.Conn { return c.Conn }

// ReadFrom is the inner connection's, so that a file goes out by sendfile(2).
func (c *Conn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(struct{ io.Writer }{c.Conn}, r)
}

// CloseWrite shuts the sending side down, when the inner connection can.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SyscallConn is the inner connection's, when it has one.
func (c *Conn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, syscall.EINVAL
}

// FromDescriptors is the Max that leaves room for the process's own files, given its
// descriptor limit (the soft RLIMIT_NOFILE, which Go raises to the hard one at start):
// half of what is left after reserve, since a connection may hold a file open while it
// is served (a download). At least 64; 0 (no bound) if the limit cannot be read or is
// unlimited.
func FromDescriptors(reserve int) int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur == ^uint64(0) || lim.Cur > 1<<40 {
		return 0
	}
	return max(64, (int(lim.Cur)-reserve)/2)
}
