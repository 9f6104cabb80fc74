package runtime

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/peer"
)

// enterAsync starts g.enter for a call on conn and returns where its ticket arrives.
func enterAsync(g *readGate, ctx context.Context, conn string, stop context.CancelCauseFunc) <-chan *readTicket {
	ch := make(chan *readTicket, 1)
	go func() {
		t, err := g.enter(onConn(ctx, conn), stop)
		if err != nil {
			close(ch)
			return
		}
		ch <- t
	}()
	return ch
}

// onConn returns ctx as a gRPC call's on the connection named conn (its peer address).
func onConn(ctx context.Context, conn string) context.Context {
	return peer.NewContext(ctx, &peer.Peer{Addr: &net.UnixAddr{Name: conn, Net: "unix"}})
}

// TestReadGateServesConnectionsInTurn: with one slot, connection a queues three calls
// and then b one; as the slot frees it goes to a, then to b, then back to a: b does not
// wait behind all of a's calls.
func TestReadGateServesConnectionsInTurn(t *testing.T) {
	g := newReadGate(1, 10, time.Hour)
	ctx := context.Background()
	first, err := g.enter(onConn(ctx, "a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	type pending struct {
		conn string
		ch   <-chan *readTicket
	}
	var queue []pending
	for _, c := range []string{"a", "a", "a", "b"} {
		queue = append(queue, pending{c, enterAsync(g, ctx, c, nil)})
		waitFor(t, "the call queued", func() bool { return g.waitingCalls() == len(queue) })
	}
	var order []string
	held := first
	for range 4 {
		g.leave(held) // grants the next call before it returns
		deadline := time.Now().Add(10 * time.Second)
		for held = nil; held == nil; {
			for i, p := range queue {
				select {
				case held = <-p.ch:
					order = append(order, p.conn)
					queue = append(queue[:i:i], queue[i+1:]...)
				default:
					continue
				}
				break
			}
			if held == nil && time.Now().After(deadline) {
				t.Fatalf("no call granted after %v", order)
			}
			time.Sleep(time.Millisecond)
		}
	}
	if got := order; got[0] != "a" || got[1] != "b" || got[2] != "a" || got[3] != "a" {
		t.Fatalf("slots went to %v; want [a b a a]", got)
	}
	g.leave(held)
	if g.running() != 0 || g.waitingCalls() != 0 {
		t.Fatalf("at rest: %d reading, %d waiting", g.running(), g.waitingCalls())
	}
}

// TestReadGateRefusesAndForgets: beyond maxWaiting a call is refused with errBusy and
// counted; a waiting call whose context ends leaves the queue, and the slot it would
// have had goes to the next.
func TestReadGateRefusesAndForgets(t *testing.T) {
	g := newReadGate(1, 2, time.Hour)
	held, err := g.enter(onConn(context.Background(), "a"), nil)
	if err != nil {
		t.Fatal(err)
	}
	gone, cancel := context.WithCancel(context.Background())
	ch1 := enterAsync(g, gone, "b", nil)
	waitFor(t, "b waiting", func() bool { return g.waitingCalls() == 1 })
	ch2 := enterAsync(g, context.Background(), "c", nil)
	waitFor(t, "c waiting", func() bool { return g.waitingCalls() == 2 })
	if _, err := g.enter(onConn(context.Background(), "d"), nil); !errors.Is(err, errBusy) || g.refused.Load() != 1 {
		t.Fatalf("a third waiter: %v (refused %d); want errBusy", err, g.refused.Load())
	}
	cancel()
	if _, ok := <-ch1; ok {
		t.Fatal("a call whose context ended was granted")
	}
	waitFor(t, "b gone from the queue", func() bool { return g.waitingCalls() == 1 })
	g.leave(held)
	select {
	case next := <-ch2:
		g.leave(next)
	case <-time.After(10 * time.Second):
		t.Fatal("c not granted")
	}
	if g.running() != 0 || g.waitingCalls() != 0 || len(g.conns) != 0 || len(g.turns) != 0 {
		t.Fatalf("at rest: %d reading, %d waiting, %d queues", g.running(), g.waitingCalls(), len(g.conns))
	}
}

// TestReadGatePreemptsOnlyWhileOthersWait: a read that outlasts the grace is left alone
// while nobody waits; once a call waits it is stopped (once), and when it leaves the
// waiter reads. A young read is not stopped before it reaches the grace.
func TestReadGatePreemptsOnlyWhileOthersWait(t *testing.T) {
	const grace = 100 * time.Millisecond
	g := newReadGate(1, 10, grace)
	var stops atomic.Int32
	held, err := g.enter(onConn(context.Background(), "a"), func(error) { stops.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * grace)
	if stops.Load() != 0 {
		t.Fatal("a read was stopped while nobody waited")
	}
	ch := enterAsync(g, context.Background(), "b", func(error) { stops.Add(100) })
	waitFor(t, "the old read stopped", func() bool { return stops.Load() == 1 })
	if !g.wasPreempted(held) || g.preempted.Load() != 1 {
		t.Fatal("the stopped read is not marked preempted")
	}
	g.leave(held)
	next := <-ch
	// A young read with a waiter behind it is stopped only at the grace.
	start := time.Now()
	ch2 := enterAsync(g, context.Background(), "c", nil)
	waitFor(t, "the second read stopped", func() bool { return stops.Load() == 101 })
	if d := time.Since(start); d < grace/2 {
		t.Errorf("a read %v old was stopped; the grace is %v", d, grace)
	}
	g.leave(next)
	g.leave(<-ch2)
	if stops.Load() != 101 {
		t.Fatalf("stops %d; want each preempted read stopped once (101)", stops.Load())
	}
}
