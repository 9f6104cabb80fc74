package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
)

// InstallRow is one (size, system) line: medians over rounds.
type InstallRow struct {
	SizeMiB    int64   `json:"size_mib"`
	System     string  `json:"system"`
	Seconds    float64 `json:"seconds"`
	MiBPerSec  float64 `json:"mib_per_s"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	CPUSeconds float64 `json:"cpu_s"`
	// VsCurl is this system's throughput over curl's in the same round, median of rounds.
	VsCurl      float64    `json:"throughput_vs_curl"`
	VsCurlRange [2]float64 `json:"throughput_vs_curl_range"`
	// VsCurlSync is the same against curl followed by `sync FILE` (the durability the
	// agent pays), round by round.
	VsCurlSync      float64    `json:"throughput_vs_curl_sync"`
	VsCurlSyncRange [2]float64 `json:"throughput_vs_curl_sync_range"`
	Rounds          int        `json:"rounds"`
}

type InstallResult struct {
	Server string       `json:"server"`
	Rows   []InstallRow `json:"rows"`
}

// installer is one way of getting a target from the server onto the disk.
type installer struct {
	name string
	// prepare (untimed) and run (timed, one child process whose rusage is its own).
	prepare func(ctx context.Context, dir string) error
	run     func(dir string) (bin string, args []string)
	out     func(dir string) string // the file it leaves (checked, then removed)
	// then, if set, is a second timed child run after run (its time adds, its RSS maxes).
	then func(dir string) (bin string, args []string)
	// env is run's extra environment; size the file out must have (0: the payload's).
	env  []string
	size int64
}

func benchInstall(ctx context.Context, cfg *config) (*InstallResult, error) {
	repo, err := ensureRepo(ctx, cfg)
	if err != nil {
		return nil, err
	}
	gotuf := filepath.Join(cfg.work, "bin", "gotufdl")
	if _, err := runChild(ctx, "go", []string{"build", "-o", gotuf, "./bench/gotufdl"}, nil); err != nil {
		return nil, err
	}
	encinstall := filepath.Join(cfg.work, "bin", "encinstall")
	if _, err := runChild(ctx, "go", []string{"build", "-o", encinstall, "./bench/encinstall"}, nil); err != nil {
		return nil, err
	}
	srv, base, err := startRepoServer(cfg, repo)
	if err != nil {
		return nil, err
	}
	defer srv.stop()
	agent := filepath.Join(cfg.bin, "edgeward-agent")
	res := &InstallResult{Server: "edgeward server (repo-server), loopback, target blobs in the page cache"}
	for _, p := range repo.Payloads {
		enroll := func(ctx context.Context, dir string) error {
			_, err := runChild(ctx, agent, []string{"enroll", "--state-dir", dir, "--root", repo.rootFile(),
				"--metadata-url", base + "/metadata", "--targets-url", base + "/targets"}, nil)
			return err
		}
		agentRun := func(extra ...string) func(dir string) (string, []string) {
			return func(dir string) (string, []string) {
				return agent, append([]string{"install", "--state-dir", dir, "--kind", "model", "--target", p.Target}, extra...)
			}
		}
		agentOut := func(dir string) string {
			m, _ := filepath.Glob(filepath.Join(dir, "slots", "model", "*", "*"))
			for _, f := range m {
				if fi, err := os.Stat(f); err == nil && fi.Size() == p.Size {
					return f
				}
			}
			return ""
		}
		url := p.url(base)
		slotOut := func(size int64) func(dir string) string {
			return func(dir string) string {
				m, _ := filepath.Glob(filepath.Join(dir, "slots", "model", "*", "*"))
				for _, f := range m {
					if fi, err := os.Stat(f); err == nil && fi.Size() == size {
						return f
					}
				}
				return ""
			}
		}
		// Issue 18: the same install with the model then loaded into memory as the
		// runtime does before its session, plaintext (read) against encrypted
		// (decrypted, every segment authenticated); both check the plaintext's hash.
		loadRun := func(target string) func(dir string) (string, []string) {
			return func(dir string) (string, []string) {
				return encinstall, []string{base + "/metadata", base + "/targets", repo.rootFile(), dir, target, p.SHA256}
			}
		}
		systems := []installer{
			{name: "curl to disk (the limit)", run: func(dir string) (string, []string) {
				return "curl", []string{"-sS", "--fail", "-o", filepath.Join(dir, "out"), url}
			}, out: func(dir string) string { return filepath.Join(dir, "out") }},
			{name: "curl to disk + fsync", run: func(dir string) (string, []string) {
				return "curl", []string{"-sS", "--fail", "-o", filepath.Join(dir, "out"), url}
			}, then: func(dir string) (string, []string) {
				return "sync", []string{filepath.Join(dir, "out")} // coreutils sync FILE: fsync(2) it
			}, out: func(dir string) string { return filepath.Join(dir, "out") }},
			{name: "edgeward-agent install", prepare: enroll, run: agentRun(), out: agentOut},
			{name: "edgeward-agent install, 8 MiB checkpoints", prepare: enroll, run: agentRun("--checkpoint-bytes", fmt.Sprint(8<<20)), out: agentOut},
			{name: "go-tuf DownloadTarget", run: func(dir string) (string, []string) {
				return gotuf, []string{base + "/metadata", base + "/targets", repo.rootFile(), filepath.Join(dir, "tuf"), p.Target, filepath.Join(dir, "out")}
			}, out: func(dir string) string { return filepath.Join(dir, "out") }},
			{name: "install + load into memory, plaintext", run: loadRun(p.Target), out: slotOut(p.Size)},
		}
		if p.Enc != nil {
			systems = append(systems, installer{name: "install + decrypt into memory, encrypted", run: loadRun(p.Enc.Target),
				env: []string{"EDGEWARD_BENCH_CONTENT_KEY=" + p.Enc.Key}, out: slotOut(p.Enc.Length), size: p.Enc.Length})
		}
		type acc struct{ secs, rate, rss, cpu, vs, vsSync []float64 }
		accs := make([]acc, len(systems))
		rounds := max(3, cfg.rounds-2)
		for r := range rounds {
			rate := make([]float64, len(systems))
			for k := range systems {
				i := (k + r) % len(systems)
				s := systems[i]
				dir, err := os.MkdirTemp(cfg.work, "install-")
				if err != nil {
					return nil, err
				}
				if s.prepare != nil {
					if err := s.prepare(ctx, dir); err != nil {
						return nil, fmt.Errorf("%s: %w", s.name, err)
					}
				}
				bin, args := s.run(dir)
				cr, err := runChild(ctx, bin, args, s.env)
				if err != nil {
					os.RemoveAll(dir)
					return nil, fmt.Errorf("%s: %w", s.name, err)
				}
				if s.then != nil {
					bin, args := s.then(dir)
					cr2, err := runChild(ctx, bin, args, nil)
					if err != nil {
						os.RemoveAll(dir)
						return nil, fmt.Errorf("%s: %w", s.name, err)
					}
					cr.Wall, cr.CPU, cr.PeakRSS = cr.Wall+cr2.Wall, cr.CPU+cr2.CPU, max(cr.PeakRSS, cr2.PeakRSS)
				}
				size := p.Size
				if s.size != 0 {
					size = s.size
				}
				out := s.out(dir)
				fi, err := os.Stat(out)
				os.RemoveAll(dir)
				if err != nil || fi.Size() != size {
					return nil, fmt.Errorf("%s: no %d-byte file left (%q)", s.name, size, out)
				}
				a := &accs[i]
				rate[i] = mib(p.Size) / cr.Wall.Seconds() // the model's (plaintext) MiB per second
				a.secs, a.rate = append(a.secs, cr.Wall.Seconds()), append(a.rate, rate[i])
				a.rss, a.cpu = append(a.rss, mib(cr.PeakRSS)), append(a.cpu, cr.CPU.Seconds())
				logf("install %4d MiB %-42s %6.2fs %7.1f MiB/s peak RSS %7.1f MiB", p.Size>>20, s.name, cr.Wall.Seconds(), rate[i], mib(cr.PeakRSS))
			}
			for i := range systems {
				accs[i].vs = append(accs[i].vs, rate[i]/rate[0])
				accs[i].vsSync = append(accs[i].vsSync, rate[i]/rate[1]) // systems[1] is curl + fsync
			}
		}
		for i, s := range systems {
			a := accs[i]
			res.Rows = append(res.Rows, InstallRow{SizeMiB: p.Size >> 20, System: s.name, Seconds: round(median(a.secs), 2),
				MiBPerSec: round(median(a.rate), 1), PeakRSSMiB: round(median(a.rss), 1), CPUSeconds: round(median(a.cpu), 2),
				VsCurl: round(median(a.vs), 3), VsCurlRange: roundRange(a.vs, 3),
				VsCurlSync: round(median(a.vsSync), 3), VsCurlSyncRange: roundRange(a.vsSync, 3), Rounds: rounds})
		}
	}
	return res, nil
}
