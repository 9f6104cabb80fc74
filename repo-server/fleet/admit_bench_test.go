package fleet

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/policy"
)

// BenchmarkAdmit measures Store.Admit as the device API runs it at a check-in that
// carries no reports: the nonce used up (its tag stored) and the next one issued, the device row read
// and rewritten, the verdict and the decision recorded, all in group commit on a sqlite
// file (fsynced), 256 check-ins in flight over 1,024 devices, as `make bench`'s
// check-in section drives the server, each with its own cancellable context (as an
// HTTP request's). No audit log (repo-server/audit's own
// benchmarks). cpu-µs/admit is the process's CPU time per check-in: the figure that
// stays meaningful on a loaded machine.
func BenchmarkAdmit(b *testing.B) {
	ctx := context.Background()
	s, err := Open(ctx, filepath.Join(b.TempDir(), "fleet.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const devices, inFlight = 1024, 256
	p := &policy.Policy{}
	nonces := make([][]byte, devices)
	admission := func(i int, now time.Time) Admission {
		id := fmt.Sprintf("bench-%04d", i)
		a := Admission{
			CheckIn: CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0", At: now,
				Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}}},
			Labels: map[string]string{"line": "press"}, Verdict: policy.VerdictTrusted, Policy: p, Now: now,
			Nonce: nonces[i],
		}
		// The next check-in's nonce, as the device API issues it with the answer.
		next, err := s.IssueNonce(ctx, id, now.Add(time.Hour))
		if err != nil {
			b.Fatal(err)
		}
		nonces[i] = next
		return a
	}
	for i := range devices {
		if _, err := s.Admit(ctx, admission(i, time.Now()), nil); err != nil {
			b.Fatal(err)
		}
	}
	locks := make([]sync.Mutex, devices)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	b.ResetTimer()
	cpu0 := benchCPU()
	start := time.Now()
	for range inFlight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n := int(next.Add(1))
				if n > b.N {
					return
				}
				i := n % devices
				locks[i].Lock()
				rctx, cancel := context.WithCancel(ctx)
				_, err := s.Admit(rctx, admission(i, time.Now()), nil)
				cancel()
				locks[i].Unlock()
				if err != nil {
					failed.Store(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "admits/s")
	b.ReportMetric(float64((benchCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/admit")
}

func benchCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
