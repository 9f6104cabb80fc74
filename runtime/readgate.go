package runtime

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// readGate bounds the gRPC ModelInfer messages being read at once (grpc-go opens a
// stream's flow-control window to its message's length once the read begins, so each
// read may come to hold MaxRequestBytes), and keeps those slots from being held by
// messages that do not arrive.
//
// A slot is held from the read's start to its end, whatever the message's size: grpc-go
// tells the handler neither the announced length nor what has arrived. So a client
// could hold every slot with a few bytes per stream (a 5-byte prefix announcing 100
// bytes, then nothing) for the whole read timeout: four such streams on one connection
// stalled every other gRPC inference call 14 s, until the attacker let go (found from
// outside, 1 Dec). Two rules make that cheap hold short:
//
//   - Waiting calls are served by connection, in turn: a slot that frees goes to the
//     next connection with a call waiting, not to the next call, so a connection that
//     queued many calls ahead of others gets one slot per turn.
//   - While calls wait, a read that has lasted grace is preempted: its stream ends with
//     DEADLINE_EXCEEDED and its slot goes to a waiting call. A message of
//     MaxRequestBytes (16 MiB) arriving at 8 MiB/s, as any local or LAN client sends it,
//     reads within the default grace of 2 s; nobody is preempted while nobody waits.
//
// Beyond maxWaiting calls waiting, one more is refused at once with errBusy.
type readGate struct {
	slots, maxWaiting int
	grace             time.Duration

	mu      sync.Mutex
	held    []*readTicket         // reads in progress, oldest first
	conns   map[string]*readQueue // connections with calls waiting
	turns   []*readQueue          // the same, in the order they are served
	waiting int                   // calls waiting, over every queue
	timer   *time.Timer           // the next preemption check, while calls wait

	reading   atomic.Int64 // len(held), for metrics without the lock
	queued    atomic.Int64 // waiting, for metrics without the lock
	refused   atomic.Int64 // calls refused with errBusy, for metrics
	preempted atomic.Int64 // reads preempted, for metrics
}

// readTicket is one call's place: waiting, then reading.
type readTicket struct {
	conn      string
	granted   chan struct{}           // closed when the call may read
	start     time.Time               // when the read began
	stop      context.CancelCauseFunc // ends the read (cancels the stream's context)
	preempted bool                    // stop was called while others waited
}

// readQueue is one connection's waiting calls, in arrival order.
type readQueue struct {
	conn    string
	waiting []*readTicket
}

func newReadGate(slots, maxWaiting int, grace time.Duration) *readGate {
	return &readGate{slots: slots, maxWaiting: maxWaiting, grace: grace, conns: map[string]*readQueue{}}
}

// enter takes a read slot for the call of ctx, waiting its connection's turn (connOf)
// if every slot is busy; stop ends the call's read if it is preempted (nil: it is
// marked only). The returned ticket is given back with leave, and only after a nil
// error.
func (g *readGate) enter(ctx context.Context, stop context.CancelCauseFunc) (*readTicket, error) {
	t := &readTicket{stop: stop}
	g.mu.Lock()
	if len(g.held) < g.slots && g.waiting == 0 {
		g.grantLocked(t)
		g.mu.Unlock()
		return t, nil
	}
	if g.waiting >= g.maxWaiting {
		g.mu.Unlock()
		g.refused.Add(1)
		return nil, errBusy
	}
	t.granted = make(chan struct{})
	t.conn = connOf(ctx)
	q := g.conns[t.conn]
	if q == nil {
		q = &readQueue{conn: t.conn}
		g.conns[t.conn] = q
		g.turns = append(g.turns, q)
	}
	q.waiting = append(q.waiting, t)
	g.waiting++
	g.queued.Store(int64(g.waiting))
	g.checkLocked()
	g.mu.Unlock()

	select {
	case <-t.granted:
		return t, nil
	case <-ctx.Done():
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	select {
	case <-t.granted: // granted as the call went away: give the slot on
		g.leaveLocked(t)
	default:
		g.dropLocked(t)
	}
	return nil, fmt.Errorf("waiting for a gRPC read slot: %w", ctx.Err())
}

// leave ends t's read and gives its slot to the next connection in turn.
func (g *readGate) leave(t *readTicket) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.leaveLocked(t)
}

// running and queued are the reads in progress and the calls waiting, for metrics.
func (g *readGate) running() int      { return int(g.reading.Load()) }
func (g *readGate) waitingCalls() int { return int(g.queued.Load()) }

// wasPreempted reports whether t's read was ended for a waiting call.
func (g *readGate) wasPreempted(t *readTicket) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return t.preempted
}

func (g *readGate) grantLocked(t *readTicket) {
	t.start = time.Now()
	g.held = append(g.held, t)
	g.reading.Store(int64(len(g.held)))
	if t.granted != nil {
		close(t.granted)
	}
}

func (g *readGate) leaveLocked(t *readTicket) {
	if i := slices.Index(g.held, t); i >= 0 {
		g.held = slices.Delete(g.held, i, i+1)
		g.reading.Store(int64(len(g.held)))
	}
	for len(g.held) < g.slots && len(g.turns) > 0 {
		q := g.turns[0]
		next := q.waiting[0]
		q.waiting = q.waiting[1:]
		g.waiting--
		g.turns = g.turns[1:]
		if len(q.waiting) > 0 {
			g.turns = append(g.turns, q) // its next call waits for its next turn
		} else {
			delete(g.conns, q.conn)
		}
		g.grantLocked(next)
	}
	g.queued.Store(int64(g.waiting))
	g.checkLocked()
}

// dropLocked removes t, which was not granted, from its connection's queue.
func (g *readGate) dropLocked(t *readTicket) {
	q := g.conns[t.conn]
	if q == nil {
		return
	}
	if i := slices.Index(q.waiting, t); i >= 0 {
		q.waiting = slices.Delete(q.waiting, i, i+1)
		g.waiting--
		g.queued.Store(int64(g.waiting))
	}
	if len(q.waiting) == 0 {
		delete(g.conns, q.conn)
		if i := slices.Index(g.turns, q); i >= 0 {
			g.turns = slices.Delete(g.turns, i, i+1)
		}
	}
}

// checkLocked preempts, while calls wait, as many reads that have lasted grace as there
// are waiting calls not already promised a preempted slot, oldest first, and arms the
// timer for the next read to reach grace.
func (g *readGate) checkLocked() {
	if g.timer != nil {
		g.timer.Stop()
		g.timer = nil
	}
	if g.waiting == 0 {
		return
	}
	now := time.Now()
	freeing := 0
	for _, h := range g.held {
		if h.preempted {
			freeing++
		}
	}
	var next time.Duration
	for _, h := range g.held {
		if freeing >= g.waiting {
			return
		}
		if h.preempted {
			continue
		}
		if age := now.Sub(h.start); age < g.grace {
			next = g.grace - age
			break // held is oldest first
		}
		h.preempted = true
		freeing++
		g.preempted.Add(1)
		if h.stop != nil {
			h.stop(errReadPreempted)
		}
	}
	if next > 0 {
		g.timer = time.AfterFunc(next, func() {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.checkLocked()
		})
	}
}
