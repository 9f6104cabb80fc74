package runtime

import (
	"context"
	goruntime "runtime"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func TestProcsPolicyNext(t *testing.T) {
	p := ProcsPolicy{Max: 4} // 10 % to raise, under 5 % for 2 s to go back
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	w := 100 * time.Millisecond
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	for _, c := range []struct {
		name     string
		from     ProcsState
		now      time.Time
		window   time.Duration
		longBusy time.Duration
		want     ProcsState
	}{
		{"zero state is one thread", ProcsState{}, at(0), w, 0, ProcsState{Procs: 1}},
		{"short runs stay at one", ProcsState{Procs: 1}, at(0), w, 9 * time.Millisecond, ProcsState{Procs: 1}},
		{"a tenth of the time in long runs raises", ProcsState{Procs: 1}, at(0), w, 10 * time.Millisecond, ProcsState{Procs: 4}},
		{"concurrent long runs count twice", ProcsState{Procs: 1}, at(0), w, 2 * w, ProcsState{Procs: 4}},
		{"between the thresholds stays raised", ProcsState{Procs: 4}, at(0), w, 6 * time.Millisecond, ProcsState{Procs: 4}},
		{"quiet starts the hold", ProcsState{Procs: 4}, at(time.Second), w, 0, ProcsState{Procs: 4, Quiet: at(time.Second)}},
		{"still holding", ProcsState{Procs: 4, Quiet: at(time.Second)}, at(2900 * time.Millisecond), w, time.Millisecond, ProcsState{Procs: 4, Quiet: at(time.Second)}},
		{"hold over: back to one", ProcsState{Procs: 4, Quiet: at(time.Second)}, at(3 * time.Second), w, 0, ProcsState{Procs: 1}},
		{"long runs again reset the hold", ProcsState{Procs: 4, Quiet: at(time.Second)}, at(2 * time.Second), w, 20 * time.Millisecond, ProcsState{Procs: 4}},
		{"above half the threshold resets it too", ProcsState{Procs: 4, Quiet: at(time.Second)}, at(2 * time.Second), w, 5 * time.Millisecond, ProcsState{Procs: 4}},
		{"an empty window changes nothing", ProcsState{Procs: 4, Quiet: at(time.Second)}, at(5 * time.Second), 0, time.Second, ProcsState{Procs: 4, Quiet: at(time.Second)}},
	} {
		if got := p.Next(c.from, c.now, c.window, c.longBusy); got != c.want {
			t.Errorf("%s: Next(%+v, %v, %v) = %+v; want %+v", c.name, c.from, c.window, c.longBusy, got, c.want)
		}
	}
	if got := (ProcsPolicy{}).Next(ProcsState{Procs: 1}, t0, w, w); got.Procs != goruntime.NumCPU() {
		t.Errorf("zero policy raises to %d; want NumCPU %d", got.Procs, goruntime.NumCPU())
	}
}

func TestRunMeterCountsLongRunsOnly(t *testing.T) {
	var m runMeter
	if m.ran(999 * time.Microsecond) { // under the default 1 ms
		t.Error("ran(999µs) reported long")
	}
	if got := m.longBusy.Load(); got != 0 {
		t.Errorf("a short run counted: %v", time.Duration(got))
	}
	if !m.ran(3 * time.Millisecond) {
		t.Error("ran(3ms) reported short")
	}
	m.longRun.Store(int64(10 * time.Microsecond))
	if !m.ran(20 * time.Microsecond) {
		t.Error("ran(20µs) reported short with a 10µs threshold")
	}
	if got := time.Duration(m.longBusy.Load()); got != 3*time.Millisecond+20*time.Microsecond {
		t.Errorf("long runs summed to %v; want 3.02ms", got)
	}
}

// TestTuneProcs runs real inferences through a Runtime whose policy counts every run as
// long, and checks that GOMAXPROCS goes to the policy's Max while they run and back to
// one when they stop.
func TestTuneProcs(t *testing.T) {
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(0))
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	ctx, cancel := context.WithCancel(context.Background())
	changes := make(chan int, 16)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.TuneProcs(ctx, ProcsPolicy{Max: 3, LongRun: time.Nanosecond, Raise: 0.0001, Hold: 50 * time.Millisecond}, 10*time.Millisecond,
			func(n int) { changes <- n })
	}()
	defer func() { cancel(); wg.Wait() }()

	in := []Input{NewInput("X", runtimeapi.FP32, []int64{1, 4}, []float64{5.1, 3.5, 1.4, 0.2})}
	deadline := time.After(20 * time.Second)
	var raised bool
	for !raised {
		if _, err := r.Infer(context.Background(), "iris", "", in, nil); err != nil {
			t.Fatal(err)
		}
		select {
		case n := <-changes:
			if n != 3 {
				t.Fatalf("GOMAXPROCS changed to %d while runs go on; want 3", n)
			}
			raised = true
		case <-deadline:
			t.Fatal("GOMAXPROCS not raised while every run counts as long")
		default:
		}
	}
	if got := goruntime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS = %d after the raise; want 3", got)
	}
	select { // no runs now: back to one after the hold
	case n := <-changes:
		if n != 1 {
			t.Errorf("GOMAXPROCS changed to %d with no runs; want 1", n)
		}
	case <-deadline:
		t.Fatal("GOMAXPROCS not lowered with no runs")
	}
	if got := goruntime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d after the hold; want 1", got)
	}
}

// TestLongRunMarksTheModel checks that a model remembers whether its last run was long,
// which makes the next run yield its P first (Model.runWith).
func TestLongRunMarksTheModel(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	in := []Input{NewInput("X", runtimeapi.FP32, []int64{1, 4}, []float64{5.1, 3.5, 1.4, 0.2})}
	m, err := r.acquire("iris", "")
	if err != nil {
		t.Fatal(err)
	}
	m.inflight.Done()
	for _, c := range []struct {
		longRun time.Duration
		want    bool
	}{{time.Hour, false}, {time.Nanosecond, true}, {time.Hour, false}} {
		r.meter.longRun.Store(int64(c.longRun))
		if _, err := r.Infer(context.Background(), "iris", "", in, nil); err != nil {
			t.Fatal(err)
		}
		if got := m.lastLong.Load(); got != c.want {
			t.Errorf("long run threshold %v: lastLong %v; want %v", c.longRun, got, c.want)
		}
	}
}
