package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// The fleet rollout (row 5): N simulated devices check in against the real fleet store
// and policy on the server's check-in path (fleet.Store.Admit: one transaction per
// check-in, group commit, 256 devices at a time; PlanRollouts over policy.Evaluate and
// policy.Plan, sqlite on disk), once per simulated hour, wave after wave until every
// device runs the new model; a device that installs reports at a check-in a minute
// later. One child process per size, so its CPU and RSS are the server's alone.

const fleetPolicy = `
rollouts:
  - id: vib-3.1.0
    target: {kind: model, name: vib, version: 3.1.0}
    selector: {labels: {line: press}}
    waves:
      - {percent: 2, soak: 1h, max_failure_ratio: 0.2, min_reports: 3}
      - {percent: 10, soak: 1h}
      - {percent: 50, soak: 1h}
      - {percent: 100}
  - id: vib-3.0.0
    target: {kind: model, name: vib, version: 3.0.0}
`

const fleetNotMeasured = "agents over the network and their downloads: each simulated device here is in-process calls on the fleet store; a real device is a swtpm, an agent and a runtime (about 50 MiB together, row 6), so a 1k-10k fleet over the device API needs a load generator with software TPMs (attesttest.NewSoftDevice), not processes"

// fleetRun is what fleet-child prints (JSON) for one size.
type fleetRun struct {
	Devices        int     `json:"devices"`
	EnrollSeconds  float64 `json:"enroll_s"`
	RolloutSeconds float64 `json:"rollout_wall_s"`
	RolloutCPU     float64 `json:"rollout_cpu_s"`
	CheckIns       int     `json:"check_ins"`
	Plans          int     `json:"plans"`
	Steps          int     `json:"steps"`
	Done           int     `json:"devices_on_target"`
	SimTimeTo100   string  `json:"simulated_time_to_100_percent"`
	PeakRSSMiB     float64 `json:"peak_rss_mib"`
}

func cpuSelf() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// fleetChild is `driver fleet-child -n N -dir DIR`.
func fleetChild(args []string) int {
	fs := flag.NewFlagSet("fleet-child", flag.ExitOnError)
	n := fs.Int("n", 1000, "devices")
	dir := fs.String("dir", os.TempDir(), "directory for fleet.db")
	fs.Parse(args)
	r, err := simulateRollout(context.Background(), *n, *dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fleet-child:", err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(r)
	return 0
}

// fleetWorkers is how many simulated devices check in at once: the store's group
// commit shares one commit among the check-ins in flight, as on a server.
const fleetWorkers = 256

func simulateRollout(ctx context.Context, n int, dir string) (*fleetRun, error) {
	st, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(fleetPolicy)})
	if err != nil {
		return nil, err
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &fleetRun{Devices: n}
	slots := make([]policy.Slot, n)
	ids := make([]string, n)
	for i := range n {
		ids[i] = fmt.Sprintf("dev-%06d", i)
		slots[i] = policy.Slot{Name: "vib", Version: "3.0.0"}
	}
	// checkIn is one device's whole check-in on the server's path (fleet.Store.Admit:
	// enrollment on first sight, facts, reports, verdict, re-plan, decision, in one
	// transaction) carrying reps.
	var checkIns, done atomic.Int64
	checkIn := func(i int, now time.Time, reps []wire.Report) (policy.Decision, error) {
		res, err := st.Admit(ctx, fleet.Admission{
			CheckIn: fleet.CheckIn{ID: ids[i], Hardware: "x86_64", AgentVersion: "0.1.0",
				Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: slots[i]}, At: now},
			Labels: map[string]string{"line": "press"}, Reports: reps, Verdict: policy.VerdictTrusted,
			Policy: pol, Quarantine: true, Now: now,
		}, nil)
		checkIns.Add(1)
		return res.Decision, err
	}
	// each runs f for every device, fleetWorkers at a time.
	each := func(f func(i int) error) error {
		var next atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, fleetWorkers)
		for range fleetWorkers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
					if err := f(i); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		return <-errs
	}
	start := time.Now()
	if err := each(func(i int) error { _, err := checkIn(i, t0, nil); return err }); err != nil {
		return nil, err
	}
	r.EnrollSeconds = time.Since(start).Seconds()
	start, cpu0 := time.Now(), cpuSelf()
	now := t0
	for step := 0; int(done.Load()) < n && step < 12; step++ {
		now = now.Add(time.Hour)
		if _, err := st.PlanRollouts(ctx, pol, now); err != nil {
			return nil, err
		}
		r.Plans++
		err := each(func(i int) error {
			dec, err := checkIn(i, now, nil)
			if err != nil || len(dec.Slots) == 0 || dec.Slots[0].Action != policy.ActionInstall {
				return err
			}
			// The device installs, commits and reports at its next check-in, a minute
			// later.
			sd := dec.Slots[0]
			slots[i] = policy.Slot{Name: sd.Target.Name, Version: sd.Target.Version}
			rep := wire.Report{ID: fmt.Sprintf("%s-%d", ids[i], step), Kind: sd.Kind, Name: sd.Target.Name,
				Version: sd.Target.Version, At: now.Add(time.Minute), Outcome: wire.OutcomeCommitted, Bytes: 1 << 20}
			if _, err := checkIn(i, now.Add(time.Minute), []wire.Report{rep}); err != nil {
				return err
			}
			if sd.Target.Version == "3.1.0" {
				done.Add(1)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if _, err := st.PlanRollouts(ctx, pol, now.Add(2*time.Minute)); err != nil {
			return nil, err
		}
		r.Plans++
		r.Steps = step + 1
	}
	r.Done, r.CheckIns = int(done.Load()), int(checkIns.Load())
	r.RolloutSeconds = time.Since(start).Seconds()
	r.RolloutCPU = (cpuSelf() - cpu0).Seconds()
	reps, err := st.Reports(ctx, fleet.ReportFilter{RolloutID: "vib-3.1.0"})
	if err != nil {
		return nil, err
	}
	if d, ok := fleet.TimeToPercent("vib-3.1.0", t0, n, reps, 100); ok {
		r.SimTimeTo100 = d.String()
	} else {
		r.SimTimeTo100 = "not reached"
	}
	if v, err := procStatus(os.Getpid(), "VmHWM"); err == nil {
		r.PeakRSSMiB = round(mib(v), 1)
	}
	return r, nil
}

// FleetResult is row 5.
type FleetResult struct {
	Policy string      `json:"policy"`
	Runs   []*fleetRun `json:"runs"`
	// Per 1,000 devices, from the largest run.
	CPUPer1k float64 `json:"rollout_cpu_s_per_1k"`
	// Marginal RSS per 1,000 devices between the smallest and the largest run.
	RSSPer1kMiB  float64 `json:"rss_mib_per_1k_marginal"`
	CheckInsPerS float64 `json:"check_ins_per_s_largest"`
	NotMeasured  string  `json:"not_measured"`
}

func benchFleet(ctx context.Context, cfg *config) (*FleetResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	res := &FleetResult{Policy: "waves 2 % (soak 1h, failure gate), 10 % (1h), 50 % (1h), 100 %; every device checks in once per simulated hour",
		NotMeasured: fleetNotMeasured}
	for _, n := range cfg.fleetSizes {
		dir, err := os.MkdirTemp(cfg.work, "fleet-")
		if err != nil {
			return nil, err
		}
		cr, err := runChild(ctx, self, []string{"fleet-child", "-n", fmt.Sprint(n), "-dir", dir}, nil)
		os.RemoveAll(dir)
		if err != nil {
			return nil, err
		}
		var r fleetRun
		if err := json.Unmarshal([]byte(lastLine(cr.Output)), &r); err != nil {
			return nil, fmt.Errorf("fleet-child output %q: %w", cr.Output, err)
		}
		r.PeakRSSMiB = round(mib(cr.PeakRSS), 1)
		r.RolloutSeconds, r.RolloutCPU, r.EnrollSeconds = round(r.RolloutSeconds, 2), round(r.RolloutCPU, 2), round(r.EnrollSeconds, 2)
		res.Runs = append(res.Runs, &r)
		logf("fleet %5d devices: enroll %.1fs, rollout %.1fs wall %.1fs CPU, %d check-ins, %d/%d on target, simulated time to 100%% %s, peak RSS %.1f MiB",
			n, r.EnrollSeconds, r.RolloutSeconds, r.RolloutCPU, r.CheckIns, r.Done, n, r.SimTimeTo100, r.PeakRSSMiB)
	}
	if k := len(res.Runs); k > 0 {
		big, small := res.Runs[k-1], res.Runs[0]
		res.CPUPer1k = round(big.RolloutCPU/float64(big.Devices)*1000, 3)
		res.CheckInsPerS = round(float64(big.CheckIns)/big.RolloutSeconds, 0)
		if big.Devices > small.Devices {
			res.RSSPer1kMiB = round((big.PeakRSSMiB-small.PeakRSSMiB)/float64(big.Devices-small.Devices)*1000, 2)
		}
	}
	return res, nil
}

func lastLine(s string) string {
	for len(s) > 0 && s[len(s)-1] == '\n' {
		s = s[:len(s)-1]
	}
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			return s[i+1:]
		}
	}
	return s
}
