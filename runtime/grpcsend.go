package runtime

import (
	"context"
	"errors"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/edgeward/edgeward/runtime/inference"
)

// A gRPC answer handed to grpc-go (SendMsg) returns at once and waits in its transport
// until the client's flow-control window takes it: a client that never read its answers
// grew the runtime by one answer per call, uncounted and for as long as it wished (found
// from outside, 2 Dec: 64 calls of 15.6 MB, 1.1 GB live). So an answer larger than
// grpc-go's pooling threshold (1 KiB) is taken from the byte budget (refused as over
// HTTP when it does not fit) and sent as a heldAnswer: the inferCodec marshals it into a buffer whose pool is
// the answer itself, and grpc-go returns the buffer (Put) when its transport has written
// the last byte, or dropped it (the call cancelled, the stream reset, the connection
// closed). Put gives the bytes back. An answer not gone within WriteTimeout closes its
// connection, which drops it, and is released then (grpc-go returns the buffers of a
// stream still queued when its connection ends to no pool).
//
// The first version of this counted the bytes each connection wrote instead: another
// call's answers on the same connection, read, moved the count past an unread one,
// which was released and its timer stopped (found from outside, 2 Dec: 8 MB more held
// per round, without end, with the budget reading 0).

// heldAnswerMin is the smallest answer held: below it grpc-go copies the bytes and does
// not return a pooled buffer (mem.IsBelowBufferPoolingThreshold).
const heldAnswerMin = 1 << 10

// heldAnswer is a ModelInfer answer whose bytes count under the byte budget until grpc-go
// has written or dropped them. It is the mem.BufferPool of its own buffer.
type heldAnswer struct {
	msg   *inference.ModelInferResponse
	n     int64
	r     *Runtime
	timer *time.Timer
	once  sync.Once
}

// holdAnswer takes resp's bytes from the budget when it is larger than heldAnswerMin
// and returns it as a heldAnswer to send; nil for a smaller answer, which grpc-go copies.
func (g *grpcService) holdAnswer(resp *inference.ModelInferResponse) (*heldAnswer, error) {
	n := proto.Size(resp)
	if n <= heldAnswerMin {
		return nil, nil
	}
	h := &heldAnswer{msg: resp, n: int64(n), r: g.r}
	if err := g.r.bodies.takeFor(0, h.n); err != nil {
		return nil, err // the answer must fit, as any request's bytes
	}
	return h, nil
}

// send sends resp on ss: as h, held under the budget while grpc-go has it, when
// holdAnswer held it. conn, if not nil, is closed should a held answer not be gone
// within WriteTimeout.
func (g *grpcService) send(ss interface{ SendMsg(any) error }, resp *inference.ModelInferResponse, h *heldAnswer, conn net.Conn) error {
	if h == nil {
		return ss.SendMsg(resp)
	}
	timeout := g.r.cfg.writeTimeout()
	h.timer = time.AfterFunc(timeout, func() {
		// Closed, the connection drops the answer, but grpc-go does not return the
		// buffers of a stream still queued when its transport ends (only those of
		// items not yet handed to its writer): released here, as after a Put.
		if conn != nil {
			g.r.log.Warn("gRPC client did not take its answer within the write timeout: connection closed",
				"peer", conn.RemoteAddr().String(), "bytes", h.n, "timeout", timeout)
			conn.Close()
		}
		h.give()
	})
	err := ss.SendMsg(h)
	if err != nil {
		h.release() // not queued (or dropped already): nothing holds it
	}
	return err
}

// release stops the answer's timer and gives its bytes back, once. Its callers come
// after send set the timer: SendMsg's return, and grpc-go's Put, which follows the
// answer's hand-over to the transport under its lock.
func (h *heldAnswer) release() {
	h.timer.Stop()
	h.give()
}

// give gives the answer's bytes back, once (the timer's own path, which must not read
// h.timer: it may run before send has stored it).
func (h *heldAnswer) give() { h.once.Do(func() { h.r.bodies.give(h.n) }) }

// marshal encodes the answer into a buffer of which h is the pool.
func (h *heldAnswer) marshal() (mem.BufferSlice, error) {
	b, err := proto.MarshalOptions{}.MarshalAppend(make([]byte, 0, h.n), h.msg)
	if err != nil {
		return nil, err
	}
	// The buffer is what grpc-go holds (and h, its pool): the decoded outputs go now,
	// or an unread answer kept them alive beside it, twice what it counts (found in
	// review, 2 Dec).
	h.msg = nil
	return mem.BufferSlice{mem.NewBuffer(&b, h)}, nil
}

// Get is never called: the buffer is made by marshal.
func (h *heldAnswer) Get(length int) *[]byte {
	b := make([]byte, length)
	return &b
}

// Put is grpc-go's return of the answer's buffer: written, or dropped.
func (h *heldAnswer) Put(*[]byte) { h.release() }

// sendCreds are insecure transport credentials whose handshake names the connection in
// the peer's AuthInfo, so that a call can close its own connection (heldAnswer's timer).
type sendCreds struct{}

func (sendCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, sendAuth{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, conn: conn}, nil
}

func (sendCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("runtime: server-side credentials only")
}

func (sendCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (c sendCreds) Clone() credentials.TransportCredentials { return c }

func (sendCreds) OverrideServerName(string) error { return nil }

// sendAuth is a connection's AuthInfo: no security, and the connection.
type sendAuth struct {
	credentials.CommonAuthInfo
	conn net.Conn
}

func (sendAuth) AuthType() string { return "insecure" }

// answerConn is the connection of the call whose context is ctx (nil for a server
// without sendCreds).
func answerConn(ctx context.Context) net.Conn {
	if p, ok := peer.FromContext(ctx); ok {
		if a, ok := p.AuthInfo.(sendAuth); ok {
			return a.conn
		}
	}
	return nil
}
