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
// it. With one P, runs are cheapest: no idle P to wake, no thread spinning to find work,
// the fewest context switches per request (docs/BENCHMARKS.md). That holds for long runs
// too while one request comes at a time (the wide bench model at concurrency 1: 363–425
// req/s with one P against 330–361 with two). But with one P, long runs that overlap
// wait for each other: while one run holds the only P, nothing else in the process runs
// until sysmon retakes the P (with sysmon kept awake, not before its 10 ms tick), so two
// clients are served one after the other.
//
// With more than one P, overlapping runs are seen: another run in flight when a run
// begins or ends. With one P they mostly are not, since the second
// request is not even read until the first run ends (nor, measured, by the gap between
// runs: one P's runs begin 160–640 µs after the previous one ends whether one client or
// two are waiting). So while long runs take a noticeable share of the time, the process
// tries more P's now and then (a trial): if runs overlap during the trial it keeps them;
// if not, it goes back to one P. ProcsPolicy decides; TuneProcs applies it.

// defaultLongRun is the shortest long run unless ProcsPolicy.LongRun says otherwise.
const defaultLongRun = time.Millisecond

// runMeter counts the time the runtime's models spend inside long ONNX Runtime runs.
// It is shared by every model of one Runtime and safe for concurrent use. (Every run is
// counted by its model, Model.runs: a counter here would be one more cache line that
// every run writes, shared by every core.)
type runMeter struct {
	longRun  atomic.Int64 // nanoseconds: a run at least this long counts; 0: defaultLongRun
	longBusy atomic.Int64 // nanoseconds inside runs of at least longRun, summed
	// metBusy is the part of longBusy in runs that overlapped another run: one was in
	// flight when they began or when they ended.
	metBusy atomic.Int64
}

// ran records one run that took d; overlapped is whether another run was in flight when
// it began or ended. It reports whether the run was long.
func (m *runMeter) ran(d time.Duration, overlapped bool) bool {
	long := time.Duration(m.longRun.Load())
	if long <= 0 {
		long = defaultLongRun
	}
	if d < long {
		return false
	}
	m.longBusy.Add(int64(d))
	if overlapped {
		m.metBusy.Add(int64(d))
	}
	return true
}

// ProcsPolicy decides GOMAXPROCS from the share of wall time spent inside long runs,
// and inside long runs that overlapped others. The zero value is usable: one to NumCPU
// threads, runs of 1 ms or more are long.
type ProcsPolicy struct {
	// Max is the most threads: what the process runs with while overlapping long runs
	// take a noticeable share of its time. Zero means runtime.NumCPU().
	Max int
	// LongRun is the shortest run that counts as long. Zero means 1 ms: about fifty
	// of sysmon's shortest ticks, so a run that long is retaken, with one P, on every
	// call once the monitor is busy.
	LongRun time.Duration
	// Raise is the share of wall time inside long runs (with one P) or inside
	// overlapping long runs (with Max) that calls for Max threads. Zero means 10 %.
	Raise float64
	// Hold is how long the share of overlapping long runs must stay under Raise/2, while
	// runs go on, before the process goes back to one thread. Zero means 2 s. While no
	// run at all happens the threads stay as they are.
	Hold time.Duration
	// TrialEvery is how often, at most, one P tries Max while long runs take Raise of
	// the time; TrialFor is how long a trial lasts without seeing runs overlap. Zero
	// means 2 s and 500 ms: a single client of a long-running model spends a quarter of
	// its time on Max, and a second client waits at most about 2 s to be served beside
	// the first. A trial shorter than 500 ms often missed two clients: going from one P
	// to two does not at once break the alternation one P imposed on them (the idle P's
	// thread sees the second request only at sysmon's next network poll, up to 10 ms
	// later, by when the first run has often ended); two 200 ms trials in a row saw no
	// overlap on the wide bench model at concurrency 2.
	TrialEvery, TrialFor time.Duration
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

func (p ProcsPolicy) hold() time.Duration       { return orDuration(p.Hold, 2*time.Second) }
func (p ProcsPolicy) trialEvery() time.Duration { return orDuration(p.TrialEvery, 2*time.Second) }
func (p ProcsPolicy) trialFor() time.Duration   { return orDuration(p.TrialFor, 500*time.Millisecond) }

func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// ProcsState is where ProcsPolicy.Next left off.
type ProcsState struct {
	Procs int // the threads decided; 0 before the first window means 1
	// Quiet is when the share of overlapping long runs last fell under Raise/2 while
	// Procs > 1 (not in a trial); zero while it is above.
	Quiet time.Time
	// Trial is when the current trial of Max began; zero when none is under way.
	Trial time.Time
	// LastTrial is when the last trial began, or the process last went back to one P.
	LastTrial time.Time
}

// ProcsWindow is what the runtime's runs did in one window of wall time.
type ProcsWindow struct {
	Length time.Duration
	Runs   int64
	// LongBusy and MetBusy are the time inside long runs, and inside long runs that
	// overlapped others, summed over concurrent runs (so they may exceed Length).
	LongBusy, MetBusy time.Duration
}

// Next returns the state after window w, ending at now.
//
//   - With one P: Max at once when overlapping long runs reach Raise (sysmon let two
//     runs overlap); a trial of Max when long runs reach Raise and the last trial began
//     TrialEvery ago or more.
//   - In a trial: kept (the trial ends) as soon as overlapping long runs reach Raise;
//     back to one P after TrialFor, or at once when no run happens.
//   - With Max: back to one only after Hold with runs going on and overlapping long
//     runs under Raise/2, so that a workload near the threshold does not flap and an
//     idle spell between bursts of concurrent requests keeps the threads.
func (p ProcsPolicy) Next(s ProcsState, now time.Time, w ProcsWindow) ProcsState {
	if s.Procs < 1 {
		s.Procs = 1
	}
	if w.Length <= 0 {
		return s
	}
	long := float64(w.LongBusy) / float64(w.Length)
	met := float64(w.MetBusy) / float64(w.Length)
	raise := p.raise()
	if s.Procs == 1 {
		switch {
		case met >= raise:
			return ProcsState{Procs: max(p.max(), 1), LastTrial: s.LastTrial}
		case long >= raise && now.Sub(s.LastTrial) >= p.trialEvery() && p.max() > 1:
			return ProcsState{Procs: p.max(), Trial: now, LastTrial: now}
		}
		return s
	}
	switch {
	case met >= raise:
		return ProcsState{Procs: s.Procs, LastTrial: s.LastTrial}
	case !s.Trial.IsZero():
		if w.Runs == 0 || now.Sub(s.Trial) >= p.trialFor() {
			return ProcsState{Procs: 1, LastTrial: s.LastTrial}
		}
		return s
	case w.Runs == 0:
		return s
	case met >= raise/2:
		s.Quiet = time.Time{}
		return s
	case s.Quiet.IsZero():
		s.Quiet = now
		return s
	case now.Sub(s.Quiet) >= p.hold():
		return ProcsState{Procs: 1, LastTrial: now}
	}
	return s
}

// TuneProcs sets GOMAXPROCS by policy every interval (zero: 100 ms) from the runtime's
// runs, starting from one thread, until ctx ends. It calls changed (if not nil) with
// each new value. The runtime's models must have been loaded through this Runtime, so
// that their runs are counted.
func (r *Runtime) TuneProcs(ctx context.Context, policy ProcsPolicy, interval time.Duration, changed func(procs int)) {
	if interval <= 0 {
		interval = 100 * time.Millisecond
	}
	r.meter.longRun.Store(int64(policy.longRun()))
	state := ProcsState{Procs: 1}
	goruntime.GOMAXPROCS(1)
	t := time.NewTicker(interval)
	defer t.Stop()
	read := func() (int64, int64, int64) {
		return r.runs(), r.meter.longBusy.Load(), r.meter.metBusy.Load()
	}
	last := time.Now()
	lastRuns, lastLong, lastMet := read()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			runs, long, met := read()
			next := policy.Next(state, now, ProcsWindow{Length: now.Sub(last), Runs: runs - lastRuns,
				LongBusy: time.Duration(long - lastLong), MetBusy: time.Duration(met - lastMet)})
			last, lastRuns, lastLong, lastMet = now, runs, long, met
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

// runs is the number of runs of the loaded models so far (for TuneProcs: whether any
// run happened in a window).
func (r *Runtime) runs() int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	var n int64
	for _, mv := range r.models {
		for _, m := range mv.versions {
			n += m.runs.Load()
		}
	}
	return n
}
