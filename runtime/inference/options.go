package inference

import (
	goruntime "runtime"

	"google.golang.org/grpc"
)

// Flow-control windows of ServerOptions: static, so grpc-go does not estimate the
// bandwidth-delay product.
//
// The stream window is HTTP/2's smallest that grpc-go accepts, 64 KiB: it is what a
// client may send on a stream before the server starts reading the stream's message,
// so it bounds what a request waiting to be read holds (edgeward-runtime bounds the
// messages being read at once). Once a read starts, grpc-go opens the stream's window
// to the message's length, so a large tensor still streams without waiting for
// WINDOW_UPDATEs. The connection's window is decoupled from reads (grpc-go returns it
// as frames arrive).
const (
	streamWindow = 64 << 10
	connWindow   = 2 << 20
)

// ServerOptions are the transport options of edgeward-runtime's gRPC server. The
// benchmark's gRPC floor (bench/httpfloor) uses the same ones, so that the floor and the
// runtime are compared over the same transport.
//
//   - Static flow-control windows. With BDP estimation (grpc-go's default) the server
//     sends a BDP ping whenever a DATA frame arrives and no ping is outstanding: for
//     unary calls of a few hundred bytes, one PING frame written and one ack read per
//     request, on top of the call itself.
//   - Stream workers, as many as GOMAXPROCS: a call runs on a reused goroutine whose
//     stack has already grown, instead of on a new goroutine that grows its stack
//     (copying it) through protobuf, the handler and the cgo call on every request. A
//     call that finds every worker busy gets its own goroutine, as without workers.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StaticStreamWindowSize(streamWindow),
		grpc.StaticConnWindowSize(connWindow),
		grpc.NumStreamWorkers(uint32(goruntime.GOMAXPROCS(0))),
	}
}
