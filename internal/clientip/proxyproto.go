package clientip

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The PROXY protocol (HAProxy's proxy-protocol.txt, versions 1 and 2) is how a TCP
// proxy that passes TLS through untouched (nginx's stream module with
// `proxy_protocol on`) tells its upstream who the client is: a header before the first
// byte of the client's stream. Nothing authenticates that header, so it is read only
// from trusted proxies: from any other peer the first bytes are the client's own and a
// PROXY header there is not believed (the TLS handshake that follows fails on it).

// ErrProxyHeader is a trusted proxy's connection that does not start with a valid
// PROXY protocol header.
var ErrProxyHeader = errors.New("PROXY protocol header")

// v2Signature starts a version 2 header.
var v2Signature = []byte("\r\n\r\n\x00\r\nQUIT\n")

// maxV1 is the longest version 1 header, CRLF included; maxV2 bounds the address and
// TLV part of a version 2 header that is read (nginx sends 12 or 36 bytes).
const (
	maxV1 = 107
	maxV2 = 4096
)

// ParseProxyHeader reads one PROXY protocol header (version 1 or 2) from r, and not a
// byte more, and returns the client's address and port it names. ok is false for a
// header that names no client (v1 UNKNOWN, v2 LOCAL or an address family other than
// TCP over IPv4 or IPv6): the connection's peer is then the source. Anything that is
// not a well-formed header is an error wrapping ErrProxyHeader.
func ParseProxyHeader(r *bufio.Reader) (src netip.AddrPort, ok bool, err error) {
	first, err := r.Peek(1)
	if err != nil {
		return src, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	switch first[0] {
	case 'P':
		return parseV1(r)
	case v2Signature[0]:
		return parseV2(r)
	}
	return src, false, fmt.Errorf("%w: missing (the connection starts with %q)", ErrProxyHeader, first)
}

func parseV1(r *bufio.Reader) (netip.AddrPort, bool, error) {
	var line []byte
	for len(line) < maxV1 {
		b, err := r.ReadByte()
		if err != nil {
			return netip.AddrPort{}, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
		}
		line = append(line, b)
		if b == '\n' {
			break
		}
	}
	s, found := strings.CutSuffix(string(line), "\r\n")
	if !found {
		return netip.AddrPort{}, false, fmt.Errorf("%w: version 1 line not ended by CRLF within %d bytes", ErrProxyHeader, maxV1)
	}
	f := strings.Split(s, " ")
	if f[0] != "PROXY" || len(f) < 2 {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %q", ErrProxyHeader, s)
	}
	if f[1] == "UNKNOWN" {
		return netip.AddrPort{}, false, nil
	}
	if len(f) != 6 || (f[1] != "TCP4" && f[1] != "TCP6") {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %q", ErrProxyHeader, s)
	}
	addr, err := netip.ParseAddr(f[2])
	if err != nil || addr.Zone() != "" || addr.Is4() != (f[1] == "TCP4") {
		return netip.AddrPort{}, false, fmt.Errorf("%w: source address in %q", ErrProxyHeader, s)
	}
	if _, err := netip.ParseAddr(f[3]); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("%w: destination address in %q", ErrProxyHeader, s)
	}
	port, err := strconv.ParseUint(f[4], 10, 16)
	if err != nil || (len(f[4]) > 1 && f[4][0] == '0') {
		return netip.AddrPort{}, false, fmt.Errorf("%w: source port in %q", ErrProxyHeader, s)
	}
	if _, err := strconv.ParseUint(f[5], 10, 16); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("%w: destination port in %q", ErrProxyHeader, s)
	}
	return netip.AddrPortFrom(addr, uint16(port)), true, nil
}

func parseV2(r *bufio.Reader) (netip.AddrPort, bool, error) {
	head := make([]byte, 16)
	if _, err := io.ReadFull(r, head); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	if !bytes.Equal(head[:12], v2Signature) {
		return netip.AddrPort{}, false, fmt.Errorf("%w: bad version 2 signature", ErrProxyHeader)
	}
	if head[12]>>4 != 2 {
		return netip.AddrPort{}, false, fmt.Errorf("%w: version %d", ErrProxyHeader, head[12]>>4)
	}
	cmd, fam := head[12]&0xf, head[13]
	n := int(binary.BigEndian.Uint16(head[14:]))
	if n > maxV2 {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %d bytes of addresses and TLVs (at most %d)", ErrProxyHeader, n, maxV2)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %w", ErrProxyHeader, err)
	}
	switch cmd {
	case 0: // LOCAL: the proxy's own connection (a health check)
		return netip.AddrPort{}, false, nil
	case 1: // PROXY
	default:
		return netip.AddrPort{}, false, fmt.Errorf("%w: command %d", ErrProxyHeader, cmd)
	}
	var size int
	switch fam {
	case 0x11: // TCP over IPv4
		size = 4
	case 0x21: // TCP over IPv6
		size = 16
	default: // UNSPEC, UDP, unix sockets: no TCP client to name
		return netip.AddrPort{}, false, nil
	}
	if n < 2*size+4 {
		return netip.AddrPort{}, false, fmt.Errorf("%w: %d bytes for family 0x%02x", ErrProxyHeader, n, fam)
	}
	addr, _ := netip.AddrFromSlice(body[:size])
	port := binary.BigEndian.Uint16(body[2*size:])
	return netip.AddrPortFrom(addr, port), true, nil
}

// ProxyListener returns ln with the PROXY protocol read from trusted proxies: a
// connection whose peer is a trusted proxy must begin with a PROXY header (version 1
// or 2) within timeout, and its RemoteAddr is then the client the header names (the
// proxy's own address for a header that names none); one without a valid header is
// closed and never returned. A connection from any other peer is returned as it is,
// nothing of it read. With no trusted proxies it returns ln unchanged.
//
// Headers are read off the accepting goroutine, so a slow proxy delays only its own
// connection. Accept and Close are safe for concurrent use; rejected is called (if
// set) with each trusted connection refused and why.
func (p Proxies) ProxyListener(ln net.Listener, timeout time.Duration, rejected func(peer net.Addr, err error)) net.Listener {
	if len(p.prefixes) == 0 {
		return ln
	}
	l := &proxyListener{Listener: ln, p: p, timeout: timeout, rejected: rejected,
		conns: make(chan net.Conn), errs: make(chan error), done: make(chan struct{})}
	go l.run()
	return l
}

type proxyListener struct {
	net.Listener
	p        Proxies
	timeout  time.Duration
	rejected func(net.Addr, error)

	conns chan net.Conn
	errs  chan error
	done  chan struct{}
	once  sync.Once
}

func (l *proxyListener) run() {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			select {
			case l.errs <- err:
			case <-l.done:
				return
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		peer, perr := netip.ParseAddrPort(c.RemoteAddr().String())
		if perr != nil || !l.p.Trusted(peer.Addr()) {
			l.deliver(c)
			continue
		}
		go func() {
			pc, err := l.readHeader(c)
			if err != nil {
				c.Close()
				if l.rejected != nil {
					l.rejected(c.RemoteAddr(), err)
				}
				return
			}
			l.deliver(pc)
		}()
	}
}

func (l *proxyListener) deliver(c net.Conn) {
	select {
	case l.conns <- c:
	case <-l.done:
		c.Close()
	}
}

func (l *proxyListener) readHeader(c net.Conn) (net.Conn, error) {
	if l.timeout > 0 {
		c.SetReadDeadline(time.Now().Add(l.timeout))
	}
	br := bufio.NewReaderSize(c, 256)
	src, ok, err := ParseProxyHeader(br)
	if err != nil {
		return nil, err
	}
	c.SetReadDeadline(time.Time{})
	pc := &proxiedConn{Conn: c, r: br, remote: c.RemoteAddr()}
	if ok {
		pc.remote = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src.Addr().Unmap(), src.Port()))
	}
	return pc, nil
}

// Accept returns the next connection: as accepted, or, from a trusted proxy, after its
// PROXY header.
func (l *proxyListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case err := <-l.errs:
		return nil, err
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close closes the listener; connections whose headers are still being read are
// closed as they finish.
func (l *proxyListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// proxiedConn is a connection whose PROXY header was read: reads continue from the
// buffer the header was read through, and RemoteAddr is the client it named.
type proxiedConn struct {
	net.Conn
	r      *bufio.Reader
	remote net.Addr
}

func (c *proxiedConn) Read(b []byte) (int, error) { return c.r.Read(b) }
func (c *proxiedConn) RemoteAddr() net.Addr       { return c.remote }
