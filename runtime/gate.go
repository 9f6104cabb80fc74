package runtime

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// runGate bounds the ONNX Runtime runs in flight across one Runtime, and the serving
// requests waiting for one.
//
// Every run is a cgo call that holds an OS thread for its length, and its intermediate
// tensors come from the session's arena, which grows to serve the most runs ever in
// flight at once and never shrinks. Unbounded, 3,000 concurrent requests of 256 rows to
// the wide bench model left the runtime at 259 threads and 1.78 GB resident (it was
// 250 MB before them), for no more throughput than two runs at a time on two cores.
//
// A request that finds every slot busy waits, in no particular order, until a slot
// frees or its context ends. Serving requests (HTTP, gRPC, Infer) may wait only while
// fewer than maxWaiting others do; one more is refused at once with errBusy (503, gRPC
// UNAVAILABLE), so that a flood costs a goroutine and a refusal per request rather than
// memory. Probes are never refused: the agent's verdict on a version must not depend
// on how busy the device was.
type runGate struct {
	slots      chan struct{} // one element per run in flight
	maxWaiting int64
	waiting    atomic.Int64
	refused    atomic.Int64 // serving requests refused with errBusy, for metrics
}

// errBusy refuses a serving request that found every run slot busy and the wait full.
var errBusy = fmt.Errorf("%w: busy: every inference slot is running and the wait for one is full; retry later", runtimeapi.ErrUnavailable)

func newRunGate(runs, maxWaiting int) *runGate {
	return &runGate{slots: make(chan struct{}, runs), maxWaiting: int64(maxWaiting)}
}

// enter takes a run slot, waiting for one if it must. A serving request is refused
// with errBusy when maxWaiting others already wait; any wait ends with ctx. The caller
// must call leave after a nil return, and only then.
func (g *runGate) enter(ctx context.Context, serving bool) error {
	select {
	case g.slots <- struct{}{}:
		return nil
	default:
	}
	if n := g.waiting.Add(1); serving && n > g.maxWaiting {
		g.waiting.Add(-1)
		g.refused.Add(1)
		return errBusy
	}
	defer g.waiting.Add(-1)
	select {
	case g.slots <- struct{}{}:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("waiting for an inference slot: %w", ctx.Err())
	}
}

// leave frees the slot enter took.
func (g *runGate) leave() { <-g.slots }

// running and queued are the runs in flight and the requests waiting, for metrics.
func (g *runGate) running() int { return len(g.slots) }
func (g *runGate) queued() int  { return int(g.waiting.Load()) }

// isBusy reports whether err is a refusal for want of a run slot or of memory, or
// because no model has loaded yet (errStarting) (answered
// with Retry-After).
func isBusy(err error) bool {
	return errors.Is(err, errBusy) || errors.Is(err, errNoRoom) || errors.Is(err, errStarting)
}

// byteBudget bounds the bytes of inference requests the runtime holds at once: bodies
// being read, decoded tensors, requests waiting for a run slot and running. Without it,
// 100 clients each sending a 16 MiB body (the per-request limit) took the runtime from
// 250 MB to 3.9 GB resident; the run gate alone would let 256 such requests wait.
//
// Memory is taken before it is allocated (a body's buffer as it grows, so a client that
// announces a large body and trickles it holds only what it sent) and given back when
// the request is answered. A request that would pass the bound is refused with
// errNoRoom, or errTooLarge when it alone would (refuse). An HTTP answer is taken as it
// is encoded, each piece ahead at its longest form (answerBuf), and a gRPC answer once
// it is marshalled (holdAnswer), until written: before 2 Dec answers were not counted,
// and four clients that never read their JSON answers held 735 MB under a 64 MiB bound.
// What it does not count: a request's JSON being decoded before its tensors' size is
// known (transient, one request per running goroutine) and ONNX Runtime's own memory
// (bounded by the run gate).
type byteBudget struct {
	max     int64
	used    atomic.Int64
	refused atomic.Int64 // requests refused for want of room, for metrics
}

// take reserves n bytes, or reports false when they do not fit now.
func (b *byteBudget) take(n int64) bool {
	if n <= 0 {
		return true
	}
	if b.used.Add(n) > b.max {
		b.used.Add(-n)
		return false
	}
	return true
}

// takeFor reserves n more bytes for a request that already holds own, or says why not
// (refuse).
func (b *byteBudget) takeFor(own, n int64) error {
	if b.take(n) {
		return nil
	}
	return b.refuse(own, n)
}

// roomFor is what a decoder asks before it allocates what it cannot bound as it goes (a
// BYTES tensor's strings) for a request that holds own: nil when n more bytes would fit
// now, otherwise why not (refuse). It takes nothing: the caller takes what it holds
// once it knows.
func (b *byteBudget) roomFor(own int64) func(n int64) error {
	return func(n int64) error {
		if b.used.Load()+n <= b.max {
			return nil
		}
		return b.refuse(own, n)
	}
}

// refuse is the error for a request holding own that was refused n more bytes: one that
// could never fit (own+n past the bound however idle the runtime) is too large, 413
// (gRPC RESOURCE_EXHAUSTED), since a retry cannot help it; any other waits for room
// (errNoRoom, 503, counted for metrics).
func (b *byteBudget) refuse(own, n int64) error {
	if own+n > b.max {
		return fmt.Errorf("%w: the request needs %d bytes held in memory while it is served, more than the runtime's bound of %d (--max-held-bytes)", errTooLarge, own+n, b.max)
	}
	b.refused.Add(1)
	return errNoRoom
}

// give returns n reserved bytes.
func (b *byteBudget) give(n int64) {
	if n > 0 {
		b.used.Add(-n)
	}
}

// errNoRoom refuses a request whose bytes would pass the byteBudget.
var errNoRoom = fmt.Errorf("%w: busy: the request bodies held in memory are at their bound; retry later", runtimeapi.ErrUnavailable)
