// Command driver is Edgeward's benchmark suite (`make bench`): each comparison of
// docs/BENCHMARKS.md runs the systems under test in one run, interleaved round by round,
// so that their ratio holds on a noisy shared machine. It writes bench/results.json and
// the generated part of docs/BENCHMARKS.md. It reports; it never fails on a missed target.
//
//	go run ./bench/driver [-only infer,install,metadata,checkin,fleet,footprint,delta] [-quick]
//
// It expects `make deps build` and bench/deps.sh to have run (bin/, ONNX Runtime, nginx,
// wrk, curl, bench/node/node_modules).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"
)

type config struct {
	root, bin, work, benchDir, ortLib string
	rounds                            int
	inferWindow                       time.Duration
	wrkDuration                       time.Duration
	installSizes                      []int64
	fleetSizes                        []int
	checkins                          int
	// checkinSetups names the check-in over HTTP setups to run ("sqlite", "postgres",
	// "replicas"); checkinHTTPOnly skips the in-process rows before them. Both are for
	// profiling one setup: a partial section is kept out of bench/history (-quick).
	checkinSetups   string
	checkinHTTPOnly bool
}

// Results is bench/results.json.
type Results struct {
	Machine   Machine          `json:"machine"`
	Infer     *InferResult     `json:"inference,omitempty"`
	Install   *InstallResult   `json:"install,omitempty"`
	Metadata  *MetadataResult  `json:"metadata_serving,omitempty"`
	CheckIn   *CheckInResult   `json:"check_in,omitempty"`
	Fleet     *FleetResult     `json:"fleet,omitempty"`
	Footprint *FootprintResult `json:"footprint,omitempty"`
	Delta     *DeltaResult     `json:"delta,omitempty"`
	Targets   []Target         `json:"targets"`
	// Runs are, per section, the runs its figures are medians of (bench/history).
	Runs map[string][]RunInfo `json:"runs"`
}

type Machine struct {
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	Go     string `json:"go"`
	MemMiB int64  `json:"mem_mib"`
}

// RunInfo says when a section was measured and how loaded the machine was.
type RunInfo struct {
	At         string `json:"at"`
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
	Seconds    int    `json:"seconds"`
}

func main() {
	root, _ := os.Getwd()
	only := flag.String("only", "infer,install,metadata,checkin,fleet,footprint,delta", "sections to run (comma-separated); the others keep their previous results")
	quick := flag.Bool("quick", false, "short windows and small sizes (to try the suite, not to quote)")
	out := flag.String("out", "bench/results.json", "results file")
	doc := flag.String("doc", "docs/BENCHMARKS.md", "document whose generated section is rewritten")
	rounds := flag.Int("rounds", 5, "rounds per comparison (medians are over rounds, then over the last 3 runs in bench/history)")
	checkins := flag.Int("checkins", 0, "check-ins per round in the checkin section (0: 2,000, or 300 with -quick)")
	setups := flag.String("checkin-setups", "sqlite,postgres,replicas", "check-in over HTTP setups to run; with fewer than all three, or -checkin-http-only, only with -quick (a partial section is not history)")
	httpOnly := flag.Bool("checkin-http-only", false, "run only the check-in over HTTP rows of the checkin section (needs -quick)")
	cpuProfile := flag.String("cpuprofile", "", "write the driver's own CPU profile (the load generator's, in the checkin section) to this file")
	flag.Parse()
	if (*httpOnly || *setups != "sqlite,postgres,replicas") && !*quick {
		fatal(fmt.Errorf("-checkin-setups and -checkin-http-only run part of a section: use them with -quick"))
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	cfg := &config{root: root, bin: filepath.Join(root, "bin"), work: filepath.Join(root, "bench", ".work"),
		benchDir: filepath.Join(root, "bench"), ortLib: os.Getenv("ONNXRUNTIME_LIB"), rounds: *rounds,
		inferWindow: 2 * time.Second, wrkDuration: 5 * time.Second, installSizes: []int64{256 << 20, 1 << 30},
		fleetSizes: []int{1000, 100000}, checkins: 2000}
	if cfg.ortLib == "" {
		cfg.ortLib = filepath.Join(root, ".deps", "onnxruntime", "lib", "libonnxruntime.so.1")
		os.Setenv("ONNXRUNTIME_LIB", cfg.ortLib) // for the processes the lab starts
	}
	if *quick {
		cfg.rounds, cfg.inferWindow, cfg.wrkDuration = 2, 500*time.Millisecond, 2*time.Second
		cfg.installSizes, cfg.fleetSizes, cfg.checkins = []int64{64 << 20}, []int{200, 1000}, 300
	}
	if *checkins > 0 {
		cfg.checkins = *checkins
	}
	cfg.checkinSetups, cfg.checkinHTTPOnly = *setups, *httpOnly
	// Child modes (run by the driver itself as separate processes, for their own RSS).
	if len(os.Args) > 1 && os.Args[1] == "fleet-child" {
		os.Exit(fleetChild(os.Args[2:]))
	}

	if err := os.MkdirAll(cfg.work, 0o755); err != nil {
		fatal(err)
	}
	res := &Results{Runs: map[string][]RunInfo{}, Machine: machine()}
	history := filepath.Join(cfg.benchDir, "history")
	if *quick {
		history = filepath.Join(cfg.work, "history-quick")
	}
	ctx := context.Background()
	sections := []struct {
		name string
		run  func() (any, error)
		agg  func(es []historyEntry) (err error)
	}{
		{"infer", func() (any, error) { return benchInfer(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Infer, err = aggregate[InferResult](es); return }},
		{"install", func() (any, error) { return benchInstall(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Install, err = aggregate[InstallResult](es); return }},
		{"metadata", func() (any, error) { return benchMetadata(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Metadata, err = aggregate[MetadataResult](es); return }},
		{"checkin", func() (any, error) { return benchCheckIn(ctx, cfg) },
			func(es []historyEntry) (err error) { res.CheckIn, err = aggregate[CheckInResult](es); return }},
		{"fleet", func() (any, error) { return benchFleet(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Fleet, err = aggregate[FleetResult](es); return }},
		{"footprint", func() (any, error) { return benchFootprint(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Footprint, err = aggregate[FootprintResult](es); return }},
		{"delta", func() (any, error) { return benchDelta(ctx, cfg) },
			func(es []historyEntry) (err error) { res.Delta, err = aggregate[DeltaResult](es); return }},
	}
	failed := false
	for _, s := range sections {
		if !strings.Contains(","+*only+",", ","+s.name+",") {
			continue
		}
		info := RunInfo{At: time.Now().UTC().Format(time.RFC3339), LoadBefore: loadavg()}
		logf("%s: start (load %s)", s.name, info.LoadBefore)
		t := time.Now()
		r, err := s.run()
		if err != nil {
			logf("%s: FAILED: %v", s.name, err)
			failed = true
			continue
		}
		info.LoadAfter, info.Seconds = loadavg(), int(time.Since(t).Seconds())
		if err := saveHistory(history, s.name, info, r); err != nil {
			fatal(err)
		}
		logf("%s: done in %ds (load %s)", s.name, info.Seconds, info.LoadAfter)
	}
	for _, s := range sections {
		es, err := loadHistory(history, s.name, historyRuns)
		if err != nil {
			fatal(err)
		}
		if err := s.agg(es); err != nil {
			fatal(fmt.Errorf("aggregate %s: %w", s.name, err))
		}
		for _, e := range es {
			res.Runs[s.name] = append(res.Runs[s.name], e.Run)
		}
	}
	res.Targets = targets(res)
	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		fatal(err)
	}
	if err := writeDoc(*doc, res); err != nil {
		fatal(err)
	}
	logf("wrote %s and %s", *out, *doc)
	if failed {
		os.Exit(1)
	}
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "model name"); ok {
				m.CPU = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	if out, err := exec.Command("uname", "-r").Output(); err == nil {
		m.Kernel = strings.TrimSpace(string(out))
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimSpace(strings.TrimPrefix(strings.Split(string(b), "\n")[0], "MemTotal:")), "%d", &kb)
		m.MemMiB = kb >> 10
	}
	return m
}

func fatal(err error) {
	fmt.Fprintln(os.Stderr, "bench:", err)
	os.Exit(1)
}
