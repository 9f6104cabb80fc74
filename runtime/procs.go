package runtime

import (
	"context"
	goruntime "runtime"
	"sync/atomic"
	"time"
)

// Go scheduler threads (GOMAXPROCS) for a process that serves ONNX models.
//
// A session.Run is a cgo call: the goroutine's thread leaves Go and keeps the scheduler
// slot (P) it ran on until the call returns, unless Go's monitor thread (sysmon) retakes
// it. With one P, short runs are cheapest: no idle P to wake, no thread spinning to find
// work, the fewest context switches per request (docs/BENCHMARKS.md). With one P and
// long runs, requests wait behind each other: while one run holds the only P, nothing
// else in the process runs until sysmon retakes the P, and every retake hands the P to
// another thread that spins, finds no work and sleeps again. So the process runs with
// one P while runs are short, and with more when a noticeable share of its time goes to
// long runs. ProcsPolicy decides which; TuneProcs applies it.

// defaultLongRun is the shortest long run unless ProcsPolicy.LongRun says otherwise.
const defaultLongRun = time.Millisecond

// runMeter counts the time the runtime's models spend inside long ONNX Runtime runs.
// It is shared by every model of one Runtime and safe for concurrent use.
type runMeter struct {
	longRun  atomic.Int64 // nanoseconds: a run at least this long counts; 0: defaultLongRun
	longBusy atomic.Int64 // nanoseconds inside runs of at least longRun, summed
}

// ran records one run that took d and reports whether it was long.
func (m *runMeter) ran(d time.Duration) bool {
	long := time.Duration(m.longRun.Load())
	if long <= 0 {
		long = defaultLongRun
	}
	if d < long {
		return false
	}
	m.longBusy.Add(int64(d))
	return true
}

// ProcsPolicy decides GOMAXPROCS from the share of wall time spent inside long runs.
// The zero value is usable: one to NumCPU threads, runs of 1 ms or more are long.
type ProcsPolicy struct {
	// Max is the most threads: what the process runs with while long runs take a
	// noticeable share of its time. Zero means runtime.NumCPU().
	Max int
	// LongRun is the shortest run that counts as long. Zero means 1 ms: about fifty
	// of sysmon's shortest ticks, so a run that long is retaken, with one P, on every
	// call once the monitor is busy.
	LongRun time.Duration
	// Raise is the share of wall time inside long runs at which the process goes to
	// Max threads. Zero means 10 %.
	Raise float64
	// Hold is how long the share must stay under Raise/2 before the process goes back
	// to one thread. Zero means 2 s.
	Hold time.Duration
}

func (p ProcsPolicy) max() int {
	if p.Max > 0 {
		return p.Max
	}
	return goruntime.NumCPU()
}

func (p ProcsPolicy) longRun() time.Duration {
	if p.LongRun > 0 {
		return p.LongRun
	}
	return defaultLongRun
}

func (p ProcsPolicy) raise() float64 {
	if p.Raise > 0 {
		return p.Raise
	}
	return 0.10
}

func (p ProcsPolicy) hold() time.Duration {
	if p.Hold > 0 {
		return p.Hold
	}
	return 2 * time.Second
}

// ProcsState is where ProcsPolicy.Next left off.
type ProcsState struct {
	Procs int // the threads decided; 0 before the first window means 1
	// Quiet is when the share of long runs last fell under Raise/2 while Procs > 1;
	// zero while it is above.
	Quiet time.Time
}

// Next returns the state after a window of wall time window, ending at now, in which
// longBusy was spent inside long runs (summed over concurrent runs, so it may exceed
// window). It goes to Max at once when the share reaches Raise, so that requests do not
// queue behind a long run for more than a window, and back to 1 only after Hold under
// Raise/2, so that a workload near the threshold does not flap.
func (p ProcsPolicy) Next(s ProcsState, now time.Time, window, longBusy time.Duration) ProcsState {
	if s.Procs < 1 {
		s.Procs = 1
	}
	if window <= 0 {
		return s
	}
	share := float64(longBusy) / float64(window)
	switch {
	case share >= p.raise():
		return ProcsState{Procs: max(p.max(), 1)}
	case s.Procs == 1 || share >= p.raise()/2:
		return ProcsState{Procs: s.Procs}
	case s.Quiet.IsZero():
		s.Quiet = now
		return s
	case now.Sub(s.Quiet) >= p.hold():
		return ProcsState{Procs: 1}
	}
	return s
}

// TuneProcs sets GOMAXPROCS by policy every interval (zero: 100 ms) from the runtime's
// long runs, starting from one thread, until ctx ends. It calls changed (if not nil)
// with each new value. The runtime's models must have been loaded through this Runtime,
// so that their runs are counted.
func (r *Runtime) TuneProcs(ctx context.Context, policy ProcsPolicy, interval time.Duration, changed func(procs int)) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	r.meter.longRun.Store(int64(policy.longRun()))
	state := ProcsState{Procs: 1}
	goruntime.GOMAXPROCS(1)
	t := time.NewTicker(interval)
	defer t.Stop()
	last, lastBusy := time.Now(), r.meter.longBusy.Load()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			busy := r.meter.longBusy.Load()
			next := policy.Next(state, now, now.Sub(last), time.Duration(busy-lastBusy))
			last, lastBusy = now, busy
			if next.Procs != state.Procs {
				goruntime.GOMAXPROCS(next.Procs)
				if changed != nil {
					changed(next.Procs)
				}
			}
			state = next
		}
	}
}
