package runtime

import (
	"context"
	goruntime "runtime"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func TestProcsPolicyNext(t *testing.T) {
	p := ProcsPolicy{Max: 4, TrialFor: 200 * time.Millisecond} // 10 %; 2 s hold; a 200 ms trial every 2 s at most
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	ms := time.Millisecond
	win := func(runs int64, long, met time.Duration) ProcsWindow {
		return ProcsWindow{Length: 100 * ms, Runs: runs, LongBusy: long, MetBusy: met}
	}
	s := time.Second
	for _, c := range []struct {
		name string
		from ProcsState
		now  time.Time
		w    ProcsWindow
		want ProcsState
	}{
		{"zero state is one thread", ProcsState{}, at(0), win(0, 0, 0), ProcsState{Procs: 1}},
		{"short runs stay at one", ProcsState{Procs: 1}, at(10 * s), win(500, 9*ms, 0), ProcsState{Procs: 1}},
		{"long runs alone: a trial", ProcsState{Procs: 1}, at(10 * s), win(40, 90*ms, 0), ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}},
		{"no second trial within 2 s", ProcsState{Procs: 1, LastTrial: at(9 * s)}, at(10 * s), win(40, 90*ms, 0), ProcsState{Procs: 1, LastTrial: at(9 * s)}},
		{"overlap seen with one P raises at once", ProcsState{Procs: 1, LastTrial: at(9 * s)}, at(10 * s), win(40, 90*ms, 10*ms), ProcsState{Procs: 4, LastTrial: at(9 * s)}},
		{"a trial that sees overlap keeps Max", ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}, at(10*s + 100*ms), win(80, 180*ms, 150*ms), ProcsState{Procs: 4, LastTrial: at(10 * s)}},
		{"a trial goes on until 200 ms", ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}, at(10*s + 100*ms), win(40, 90*ms, 0), ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}},
		{"a trial without overlap ends", ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}, at(10*s + 200*ms), win(40, 90*ms, 0), ProcsState{Procs: 1, LastTrial: at(10 * s)}},
		{"a trial without runs ends", ProcsState{Procs: 4, Trial: at(10 * s), LastTrial: at(10 * s)}, at(10*s + 100*ms), win(0, 0, 0), ProcsState{Procs: 1, LastTrial: at(10 * s)}},
		{"idle keeps Max", ProcsState{Procs: 4}, at(20 * s), win(0, 0, 0), ProcsState{Procs: 4}},
		{"between the thresholds stays raised", ProcsState{Procs: 4, Quiet: at(19 * s)}, at(20 * s), win(40, 90*ms, 6*ms), ProcsState{Procs: 4}},
		{"no overlap starts the hold", ProcsState{Procs: 4}, at(20 * s), win(40, 90*ms, 0), ProcsState{Procs: 4, Quiet: at(20 * s)}},
		{"short runs start it too", ProcsState{Procs: 4}, at(20 * s), win(900, 0, 0), ProcsState{Procs: 4, Quiet: at(20 * s)}},
		{"still holding", ProcsState{Procs: 4, Quiet: at(20 * s)}, at(21*s + 900*ms), win(40, 90*ms, ms), ProcsState{Procs: 4, Quiet: at(20 * s)}},
		{"hold over: back to one", ProcsState{Procs: 4, Quiet: at(20 * s)}, at(22 * s), win(40, 90*ms, 0), ProcsState{Procs: 1, LastTrial: at(22 * s)}},
		{"overlap again ends the hold", ProcsState{Procs: 4, Quiet: at(20 * s)}, at(21 * s), win(80, 180*ms, 20*ms), ProcsState{Procs: 4}},
		{"an empty window changes nothing", ProcsState{Procs: 4, Quiet: at(20 * s)}, at(25 * s), ProcsWindow{}, ProcsState{Procs: 4, Quiet: at(20 * s)}},
	} {
		if got := p.Next(c.from, c.now, c.w); got != c.want {
			t.Errorf("%s: Next(%+v, %+v) = %+v; want %+v", c.name, c.from, c.w, got, c.want)
		}
	}
	if got := (ProcsPolicy{}).Next(ProcsState{Procs: 1}, t0, win(10, 0, 10*ms)); got.Procs != goruntime.NumCPU() {
		t.Errorf("zero policy raises to %d; want NumCPU %d", got.Procs, goruntime.NumCPU())
	}
	// The zero policy's trial lasts 500 ms.
	trial := ProcsState{Procs: 2, Trial: t0, LastTrial: t0}
	if got := (ProcsPolicy{Max: 2}).Next(trial, t0.Add(400*ms), win(40, 90*ms, 0)); got != trial {
		t.Errorf("zero policy ended a trial after 400 ms: %+v", got)
	}
	if got := (ProcsPolicy{Max: 2}).Next(trial, t0.Add(500*ms), win(40, 90*ms, 0)); got.Procs != 1 {
		t.Errorf("zero policy kept a trial without overlap past 500 ms: %+v", got)
	}
}

func TestRunMeter(t *testing.T) {
	ms := time.Millisecond
	var m runMeter
	if m.ran(999*time.Microsecond, true) { // under the default 1 ms
		t.Error("ran(999µs) reported long")
	}
	if got := m.longBusy.Load() + m.metBusy.Load(); got != 0 {
		t.Errorf("a short run counted: %v", time.Duration(got))
	}
	if !m.ran(3*ms, false) {
		t.Error("ran(3ms) reported short")
	}
	m.longRun.Store(int64(10 * time.Microsecond))
	if !m.ran(20*time.Microsecond, false) {
		t.Error("ran(20µs) reported short with a 10µs threshold")
	}
	if got := time.Duration(m.longBusy.Load()); got != 3*ms+20*time.Microsecond {
		t.Errorf("long runs summed to %v; want 3.02ms", got)
	}
	if m.metBusy.Load() != 0 {
		t.Errorf("runs alone counted %v as overlapping", time.Duration(m.metBusy.Load()))
	}
	m.ran(2*ms, true)
	if got := time.Duration(m.metBusy.Load()); got != 2*ms {
		t.Errorf("an overlapping run counted %v; want 2ms", got)
	}
}

// TestTuneProcs runs real inferences, one at a time, through a Runtime whose policy
// counts every run as long, and checks that GOMAXPROCS goes to the policy's Max for a
// trial and back to one when the trial sees no runs overlap.
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
		r.TuneProcs(ctx, ProcsPolicy{Max: 3, LongRun: time.Nanosecond, Raise: 0.0001, Hold: 50 * time.Millisecond, TrialFor: 50 * time.Millisecond}, 10*time.Millisecond,
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
			t.Fatal("GOMAXPROCS not tried at Max while every run counts as long")
		default:
		}
	}
	if got := goruntime.GOMAXPROCS(0); got != 3 {
		t.Errorf("GOMAXPROCS = %d after the raise; want 3", got)
	}
	select { // no overlap: back to one after the trial
	case n := <-changes:
		if n != 1 {
			t.Errorf("GOMAXPROCS changed to %d with no runs; want 1", n)
		}
	case <-deadline:
		t.Fatal("GOMAXPROCS not lowered after a trial without overlap")
	}
	if got := goruntime.GOMAXPROCS(0); got != 1 {
		t.Errorf("GOMAXPROCS = %d after the hold; want 1", got)
	}
}

// TestTuneProcsKeepsMaxForOverlappingRuns: two clients running a model whose runs take
// milliseconds, at once, make a trial see overlapping runs and keep Max for as long as
// they go on (no flapping back to one P, which would serve them one after the other).
func TestTuneProcsKeepsMaxForOverlappingRuns(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a model for a second")
	}
	defer goruntime.GOMAXPROCS(goruntime.GOMAXPROCS(0))
	const n, k = 128, 40 // about 170 MFLOP a run: milliseconds
	r := newTestRuntime(t)
	loadBytes(t, r, "chain", modelgen.MatMulChain(n, k))
	ctx, cancel := context.WithCancel(context.Background())
	var changes []int
	var mu sync.Mutex
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		r.TuneProcs(ctx, ProcsPolicy{Max: 2, TrialEvery: 100 * time.Millisecond, TrialFor: 50 * time.Millisecond, Hold: 50 * time.Millisecond},
			10*time.Millisecond, func(p int) { mu.Lock(); changes = append(changes, p); mu.Unlock() })
	}()
	defer func() { cancel(); wg.Wait() }()

	x := []Input{NewInput("x", runtimeapi.FP32, []int64{n, n}, make([]float64, n*n))}
	stop := time.Now().Add(1500 * time.Millisecond)
	var clients sync.WaitGroup
	for range 2 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for time.Now().Before(stop) {
				if _, err := r.Infer(context.Background(), "chain", "", x, nil); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	clients.Wait()
	mu.Lock()
	defer mu.Unlock()
	// One P at first, then a trial that sees overlap: Max, kept for the rest.
	if len(changes) == 0 || changes[len(changes)-1] != 2 {
		t.Fatalf("GOMAXPROCS changes while two clients ran: %v; want to end at 2", changes)
	}
	if len(changes) > 3 {
		t.Errorf("GOMAXPROCS flapped while two clients ran: %v", changes)
	}
	t.Logf("changes: %v", changes)
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
