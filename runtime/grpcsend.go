package runtime

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// A gRPC answer handed to grpc-go (SendMsg) waits in its transport until the client's
// flow-control window takes it: SendMsg returns at once, and a client that never reads
// its answers grew the runtime by one answer per call, uncounted and for as long as it
// wished (found from outside, 2 Dec: 64 calls of 15.6 MB, 1.1 GB live). So each
// accepted connection is wrapped (sendCreds, the server's insecure transport
// credentials) in a sendConn that counts the bytes it writes to the socket; an answer
// is charged to the byte budget (unrefused, as over HTTP) until the connection has
// written past it, and a connection whose answer has not left within WriteTimeout is
// closed, which gives back all it held.

// sendCreds are insecure transport credentials whose handshake wraps the connection in a
// sendConn and names it in the peer's AuthInfo, where the ModelInfer handler finds it.
type sendCreds struct{ r *Runtime }

func (c sendCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	sc := &sendConn{Conn: conn, r: c.r}
	return sc, sendAuth{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, conn: sc}, nil
}

func (sendCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("runtime: server-side credentials only")
}

func (sendCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (c sendCreds) Clone() credentials.TransportCredentials { return c }

func (sendCreds) OverrideServerName(string) error { return nil }

// sendAuth is a connection's AuthInfo: no security, and its sendConn.
type sendAuth struct {
	credentials.CommonAuthInfo
	conn *sendConn
}

func (sendAuth) AuthType() string { return "insecure" }

// sendConn is an accepted gRPC connection that releases the answers charged to it
// (hold) as its writes to the socket pass them.
type sendConn struct {
	net.Conn
	r *Runtime

	mu      sync.Mutex
	written int64  // bytes written to the socket
	last    int64  // the mark of the last answer held
	held    []sent // answers not yet written past, in order
	closed  bool
}

// sent is an answer held on a connection: its bytes, the count of written bytes past
// which it has left, and the timer that closes the connection if it has not by then.
type sent struct {
	n, mark int64
	timer   *time.Timer
}

// answerConn is the sendConn of the call whose context is ctx (nil for a server
// without sendCreds).
func answerConn(ctx context.Context) *sendConn {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.AuthInfo.(sendAuth); ok {
			return a.conn
		}
	}
	return nil
}

// hold charges an answer of n bytes to the budget until the connection has written n
// bytes beyond what it owed before (the answers held ahead of it, or what it had
// written), closing the connection if that takes longer than WriteTimeout.
func (c *sendConn) hold(n int64) {
	c.r.bodies.charge(n)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		c.r.bodies.give(n)
		return
	}
	c.last = max(c.last, c.written) + n
	mark := c.last
	c.held = append(c.held, sent{n: n, mark: mark, timer: time.AfterFunc(c.r.cfg.writeTimeout(), func() {
		c.mu.Lock()
		late := !c.closed && c.written < mark
		c.mu.Unlock()
		if late {
			c.r.log.Warn("gRPC client did not take its answer within the write timeout: connection closed",
				"peer", c.RemoteAddr().String(), "timeout", c.r.cfg.writeTimeout())
			c.Close()
		}
	})})
}

func (c *sendConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.mu.Lock()
		c.written += int64(n)
		var give int64
		i := 0
		for ; i < len(c.held) && c.held[i].mark <= c.written; i++ {
			c.held[i].timer.Stop()
			give += c.held[i].n
		}
		c.held = c.held[i:]
		c.mu.Unlock()
		c.r.bodies.give(give)
	}
	return n, err
}

// Close closes the connection and gives back every answer still held on it.
func (c *sendConn) Close() error {
	c.mu.Lock()
	var give int64
	for _, s := range c.held {
		s.timer.Stop()
		give += s.n
	}
	c.held, c.closed = nil, true
	c.mu.Unlock()
	c.r.bodies.give(give)
	return c.Conn.Close()
}
