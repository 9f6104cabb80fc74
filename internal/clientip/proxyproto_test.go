package clientip

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// v2 builds a version 2 header: command, family, addresses and ports, then extra
// bytes (TLVs) counted in the length.
func v2(cmd, fam byte, src, dst []byte, sport, dport uint16, tlv string) string {
	body := append(append([]byte{}, src...), dst...)
	body = binary.BigEndian.AppendUint16(body, sport)
	body = binary.BigEndian.AppendUint16(body, dport)
	body = append(body, tlv...)
	h := append(append([]byte{}, v2Signature...), 0x20|cmd, fam)
	h = binary.BigEndian.AppendUint16(h, uint16(len(body)))
	return string(append(h, body...))
}

func TestParseProxyHeader(t *testing.T) {
	ip4 := []byte{192, 0, 2, 7}
	ip6 := netip.MustParseAddr("2001:db8::7").AsSlice()
	for _, tc := range []struct {
		in   string
		want string // "" with ok false; "error" for an error
	}{
		{"PROXY TCP4 192.0.2.7 10.0.0.1 4711 443\r\n", "192.0.2.7:4711"},
		{"PROXY TCP6 2001:db8::7 2001:db8::1 4711 443\r\n", "[2001:db8::7]:4711"},
		{"PROXY UNKNOWN\r\n", ""},
		{"PROXY UNKNOWN 192.0.2.7 10.0.0.1 4711 443\r\n", ""},
		{v2(1, 0x11, ip4, []byte{10, 0, 0, 1}, 4711, 443, ""), "192.0.2.7:4711"},
		{v2(1, 0x11, ip4, []byte{10, 0, 0, 1}, 4711, 443, "\x03\x00\x04abcd"), "192.0.2.7:4711"}, // a TLV is skipped
		{v2(1, 0x21, ip6, netip.MustParseAddr("2001:db8::1").AsSlice(), 4711, 443, ""), "[2001:db8::7]:4711"},
		{v2(0, 0x00, nil, nil, 0, 0, ""), ""},                             // LOCAL
		{v2(1, 0x31, make([]byte, 108), make([]byte, 108), 0, 0, ""), ""}, // a unix socket: no TCP client

		{"", "error"},
		{"\x16\x03\x01\x02\x00", "error"},                                      // a TLS ClientHello: no header
		{"GET / HTTP/1.1\r\n", "error"},                                        // no header
		{"PROXY TCP4 192.0.2.7 10.0.0.1 4711 443\n", "error"},                  // LF only
		{"PROXY TCP4 192.0.2.7 10.0.0.1 4711\r\n", "error"},                    // a field missing
		{"PROXY TCP4 2001:db8::7 10.0.0.1 4711 443\r\n", "error"},              // family and address disagree
		{"PROXY TCP6 192.0.2.7 2001:db8::1 4711 443\r\n", "error"},             // family and address disagree
		{"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n", "error"},               // port out of range
		{"PROXY TCP4 192.0.2.7 10.0.0.1 04711 443\r\n", "error"},               // leading zero
		{"PROXY TCP4 192.0.2.7 10.0.0.1 4711 443 extra\r\n", "error"},          // too many fields
		{"PROXY TCP4 192.0.2.7 " + strings.Repeat("1", 120) + "\r\n", "error"}, // longer than 107 bytes
		{"PROXYTCP4 192.0.2.7 10.0.0.1 4711 443\r\n", "error"},
		{v2(1, 0x11, ip4, nil, 0, 0, "")[:20], "error"},                                  // truncated
		{v2(1, 0x11, ip4, []byte{10, 0, 0, 1}, 4711, 443, "")[:15], "error"},             // truncated fixed part
		{v2(2, 0x11, ip4, []byte{10, 0, 0, 1}, 4711, 443, ""), "error"},                  // unknown command
		{"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c" + strings.Repeat("\x00", 12), "error"}, // bad signature
		{"\r\n\r\n\x00\r\nQUIT\n\x11\x11\x00\x0c" + strings.Repeat("\x00", 12), "error"}, // version 1 in binary
		{"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x04\x00\x00\x00\x00", "error"},              // too short for TCP4
		{"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff", "error"},                              // longer than maxV2
	} {
		// What follows the header is the client's: a valid header leaves it unread.
		// (Nothing follows a malformed one, so that a truncated header cannot be
		// completed by these bytes.)
		after := "\x16\x03\x01 the client's own bytes"
		if tc.want == "error" {
			after = ""
		}
		r := bufio.NewReader(strings.NewReader(tc.in + after))
		src, ok, err := ParseProxyHeader(r)
		switch {
		case tc.want == "error":
			if err == nil || !errors.Is(err, ErrProxyHeader) {
				t.Errorf("ParseProxyHeader(%q) = %v, %v, %v; want an ErrProxyHeader", tc.in, src, ok, err)
			}
			continue
		case err != nil:
			t.Errorf("ParseProxyHeader(%q) = %v", tc.in, err)
			continue
		case tc.want == "" && ok, tc.want != "" && (!ok || src.String() != tc.want):
			t.Errorf("ParseProxyHeader(%q) = %v, %v; want %q", tc.in, src, ok, tc.want)
		}
		// Not a byte after the header was taken.
		if rest, _ := io.ReadAll(r); string(rest) != after {
			t.Errorf("ParseProxyHeader(%q) left %q; want %q", tc.in, rest, after)
		}
	}
}

// TestProxyListener over loopback: the listener trusts 127.0.0.1 only. A trusted
// connection's PROXY header is read and names the connection's source; an untrusted
// peer's header is not read, its bytes are the client's own; a trusted connection
// without a header is closed and never accepted; a trusted proxy that sends nothing
// does not hold up other connections.
func TestProxyListener(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rejected := make(chan error, 4)
	pl := New([]netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}).ProxyListener(ln, 2*time.Second, func(_ net.Addr, err error) { rejected <- err })
	defer pl.Close()
	dial := func(from string, send string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Skipf("dial from %s: %v (no 127.0.0.0/8 on loopback?)", from, err)
		}
		t.Cleanup(func() { c.Close() })
		if send != "" {
			if _, err := io.WriteString(c, send); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	accept := func() net.Conn {
		t.Helper()
		type res struct {
			c   net.Conn
			err error
		}
		ch := make(chan res, 1)
		go func() { c, err := pl.Accept(); ch <- res{c, err} }()
		select {
		case r := <-ch:
			if r.err != nil {
				t.Fatal(r.err)
			}
			t.Cleanup(func() { r.c.Close() })
			return r.c
		case <-time.After(10 * time.Second):
			t.Fatal("Accept: nothing in 10 s")
			return nil
		}
	}
	read := func(c net.Conn, n int) string {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b := make([]byte, n)
		if _, err := io.ReadFull(c, b); err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	// A trusted proxy that sends nothing yet, then a trusted proxy's connection with a
	// header: the second is accepted first.
	silent := dial("127.0.0.1", "")
	dial("127.0.0.1", "PROXY TCP4 192.0.2.7 127.0.0.1 4711 8443\r\nhello")
	c := accept()
	if got := c.RemoteAddr().String(); got != "192.0.2.7:4711" {
		t.Errorf("RemoteAddr after a trusted proxy's header = %s; want 192.0.2.7:4711", got)
	}
	if got := read(c, 5); got != "hello" {
		t.Errorf("read after the header = %q; want hello", got)
	}

	// An untrusted peer: the header is its own bytes, and its address stays.
	forged := "PROXY TCP4 10.6.6.6 127.0.0.1 4711 8443\r\n"
	dial("127.0.0.2", forged)
	c = accept()
	if host, _, _ := net.SplitHostPort(c.RemoteAddr().String()); host != "127.0.0.2" {
		t.Errorf("RemoteAddr of an untrusted peer sending a header = %s; want 127.0.0.2", c.RemoteAddr())
	}
	if got := read(c, len(forged)); got != forged {
		t.Errorf("an untrusted peer's first bytes = %q; want its own %q", got, forged)
	}

	// A trusted peer without a header: closed, reported, never accepted.
	bare := dial("127.0.0.1", "\x16\x03\x01 a ClientHello")
	select {
	case err := <-rejected:
		if !errors.Is(err, ErrProxyHeader) {
			t.Errorf("rejected with %v; want ErrProxyHeader", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a trusted connection without a header was not rejected")
	}
	bare.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := bare.Read(make([]byte, 1)); err == nil {
		t.Error("the headerless trusted connection is still open")
	}
	// The silent one times out the same way.
	select {
	case err := <-rejected:
		if !errors.Is(err, ErrProxyHeader) {
			t.Errorf("silent proxy rejected with %v; want ErrProxyHeader", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a silent trusted connection was not timed out")
	}
	silent.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := silent.Read(make([]byte, 1)); err == nil {
		t.Error("the silent trusted connection is still open")
	}

	// Close ends Accept.
	pl.Close()
	if _, err := pl.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close = %v; want net.ErrClosed", err)
	}
}

func TestProxyListenerWithoutTrustedProxies(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if got := (Proxies{}).ProxyListener(ln, time.Second, nil); got != ln {
		t.Errorf("ProxyListener with no trusted proxies = %T; want the listener itself", got)
	}
}
