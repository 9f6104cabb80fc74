package runtime

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// startedCtx is a cancellable context that reports the first call of Done: runWith asks
// for it only on its way into the ORT run (after validating and copying the inputs).
type startedCtx struct {
	context.Context
	once    sync.Once
	started chan struct{}
}

func (c *startedCtx) Done() <-chan struct{} {
	c.once.Do(func() { close(c.started) })
	return c.Context.Done()
}

// TestCancelTerminatesALongRun: cancelling a request's context stops ONNX Runtime inside
// the run (RunOptions.Terminate, checked between operators), not after it. The chain of
// 5,000 MatMuls of 1024×1024 takes minutes on one thread (about 10 TFLOP); the request
// must come back within seconds of the cancel, with the context's error.
func TestCancelTerminatesALongRun(t *testing.T) {
	if testing.Short() {
		t.Skip("loads a 5,000-operator model")
	}
	const n, k = 1024, 5000
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sc := &startedCtx{Context: ctx, started: make(chan struct{})}
	x := NewInput("x", runtimeapi.FP32, []int64{n, n}, make([]float64, n*n))
	done := make(chan error, 1)
	go func() {
		_, err := r.Infer(sc, "chain", "", []Input{x}, nil)
		done <- err
	}()
	select {
	case <-sc.started:
	case err := <-done:
		t.Fatalf("Infer returned %v before running", err)
	}
	time.Sleep(200 * time.Millisecond) // well inside the run: one MatMul is milliseconds
	cancel()
	cancelled := time.Now()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Infer after cancel = %v; want context.Canceled", err)
		}
		t.Logf("returned %v after the cancel", time.Since(cancelled))
	case <-time.After(30 * time.Second):
		t.Fatal("the run went on for 30 s after its context was cancelled: it was not terminated")
	}

	// The terminated run's options were dropped: the next run of the model is not
	// stopped at once by a stale terminate flag.
	ctx2, cancel2 := context.WithCancel(context.Background())
	sc2 := &startedCtx{Context: ctx2, started: make(chan struct{})}
	done2 := make(chan error, 1)
	go func() {
		_, err := r.Infer(sc2, "chain", "", []Input{x}, nil)
		done2 <- err
	}()
	<-sc2.started
	select {
	case err := <-done2:
		t.Fatalf("the next run ended at once (%v): stale run options", err)
	case <-time.After(500 * time.Millisecond):
	}
	cancel2()
	if err := <-done2; !errors.Is(err, context.Canceled) {
		t.Fatalf("second run after cancel = %v; want context.Canceled", err)
	}
}
