package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/bits"
	"os"
	"path/filepath"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// DeltaRow is one (pair, method) line. Apply figures are medians over rounds of one
// child process each (its own VmHWM, file-backed pages of a mapping included).
type DeltaRow struct {
	Pair         string  `json:"pair"`
	Method       string  `json:"method"`
	FullBytes    int64   `json:"full_bytes"`
	DeltaBytes   int64   `json:"delta_bytes"`
	Percent      float64 `json:"percent_of_full"`
	DiffSeconds  float64 `json:"diff_s"`
	ApplySeconds float64 `json:"apply_s"`
	ApplyCPU     float64 `json:"apply_cpu_s"`
	PeakRSSMiB   float64 `json:"apply_peak_rss_mib"`
	Note         string  `json:"note,omitempty"`
}

type DeltaResult struct {
	Rows []DeltaRow `json:"rows"`
	// Published says, per pair, whether Edgeward's publisher would publish its delta
	// (under 70 % of the full target).
	Notes []string `json:"notes"`
}

type deltaPair struct {
	name, base, target string
}

// benchDelta compares Edgeward's delta (content-defined chunks, zstd) with zstd
// patch-from (klauspost, Go; and Debian's zstd), xdelta3, bsdiff and a casync-style
// chunk store, on model pairs from modelgen and two ONNX Runtime releases.
func benchDelta(ctx context.Context, cfg *config) (*DeltaResult, error) {
	// The apply runs in a small binary of its own, so that its peak RSS is the apply's
	// and not this driver's.
	self := filepath.Join(cfg.work, "bin", "deltaapply")
	if _, err := runChild(ctx, "go", []string{"build", "-o", self, "./bench/deltaapply"}, nil); err != nil {
		return nil, err
	}
	dir := filepath.Join(cfg.work, "delta")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	pairs, err := deltaPairs(cfg, dir)
	if err != nil {
		return nil, err
	}
	res := &DeltaResult{}
	rounds := max(1, min(cfg.rounds, 3))
	for _, p := range pairs {
		fi, err := os.Stat(p.target)
		if err != nil {
			return nil, err
		}
		full := fi.Size()
		// The floor every full install pays after the bytes arrive: copy, sha256, fsync.
		copyRow := DeltaRow{Pair: p.name, Method: "full target (copy + sha256 + fsync, the floor of a full install after download)", FullBytes: full, DeltaBytes: full, Percent: 100}
		if err := applyRounds(ctx, rounds, &copyRow, applyCmd(self, "copy", p.target, p.target, filepath.Join(dir, "out"))); err != nil {
			return nil, err
		}
		res.Rows = append(res.Rows, copyRow)
		for _, m := range deltaMethods() {
			if m.maxBase > 0 && fileSize(p.base) > m.maxBase {
				res.Rows = append(res.Rows, DeltaRow{Pair: p.name, Method: m.name, FullBytes: full, Note: m.skip})
				continue
			}
			row := DeltaRow{Pair: p.name, Method: m.name, FullBytes: full}
			d := filepath.Join(dir, "delta."+m.id)
			t := time.Now()
			if err := m.diff(ctx, p.base, p.target, d); err != nil {
				row.Note = "diff failed: " + err.Error()
				res.Rows = append(res.Rows, row)
				logf("delta %s %s: %v", p.name, m.id, err)
				continue
			}
			row.DiffSeconds = round(time.Since(t).Seconds(), 2)
			dfi, err := os.Stat(d)
			if err != nil {
				return nil, err
			}
			row.DeltaBytes = dfi.Size()
			row.Percent = round(100*float64(row.DeltaBytes)/float64(full), 2)
			if m.apply != "" {
				if err := applyRounds(ctx, rounds, &row, applyCmd(self, m.apply, p.base, d, filepath.Join(dir, "out"))); err != nil {
					row.Note = "apply failed: " + err.Error()
				} else if err := sameFile(filepath.Join(dir, "out"), p.target); err != nil {
					row.Note = "apply gave other bytes: " + err.Error()
				}
			} else {
				row.Note = m.note
			}
			os.Remove(d)
			os.Remove(filepath.Join(dir, "out"))
			logf("delta %s %s: %d of %d bytes (%.2f %%), apply %.2f s, peak RSS %.1f MiB %s", p.name, m.id, row.DeltaBytes, full, row.Percent, row.ApplySeconds, row.PeakRSSMiB, row.Note)
			res.Rows = append(res.Rows, row)
		}
	}
	res.Notes = append(res.Notes, "Edgeward publishes a delta only under 70 % of its full target; otherwise the device downloads the full target.")
	return res, nil
}

// applyCmd is the process that applies delta d to base into out: the tool itself for
// the Debian peers (they neither hash nor sync the result), else this driver as
// delta-child.
func applyCmd(self, how, base, d, out string) []string {
	switch how {
	case "zstd":
		return []string{"zstd", "-q", "-f", "-d", fmt.Sprintf("--long=%d", logBits(fileSize(base)+fileSize(d)*8)), "--memory=2048MB", "--patch-from=" + base, d, "-o", out}
	case "xdelta3":
		return []string{"xdelta3", "-d", "-f", "-B", fmt.Sprint(max(1<<20, min(1<<30, fileSize(base)))), "-s", base, d, out}
	case "bsdiff":
		return []string{"bspatch", base, out, d}
	}
	return []string{self, how, base, d, out}
}

func applyRounds(ctx context.Context, rounds int, row *DeltaRow, cmd []string) error {
	var secs, cpu, rss []float64
	for range rounds {
		if cmd[0] == "bspatch" {
			os.Remove(cmd[2])
		} else {
			os.Remove(cmd[len(cmd)-1])
		}
		cr, err := runChild(ctx, cmd[0], cmd[1:], nil)
		if err != nil {
			return err
		}
		secs, cpu, rss = append(secs, cr.Wall.Seconds()), append(cpu, cr.CPU.Seconds()), append(rss, mib(cr.PeakRSS))
	}
	row.ApplySeconds, row.ApplyCPU, row.PeakRSSMiB = round(median(secs), 3), round(median(cpu), 3), round(median(rss), 1)
	return nil
}

type deltaMethod struct {
	id, name string
	diff     func(ctx context.Context, base, target, out string) error
	apply    string // delta-child mode; "" when not applied (note says why)
	note     string
	maxBase  int64 // skipped for larger bases
	skip     string
}

func deltaMethods() []deltaMethod {
	return []deltaMethod{
		{id: "cdc", name: "edgeward cdc-zstd (content-defined chunks, copies by offset, zstd 1 MiB window)", diff: diffCDC, apply: "cdc"},
		{id: "casync", name: "casync-style chunk store (index + each missing chunk zstd-compressed; bytes computed, not applied)", diff: diffCasync,
			note: "computed from the same chunks: 40 bytes of index per chunk of the new version plus each chunk the base lacks, compressed alone"},
		{id: "kzstd", name: "zstd patch-from, klauspost/compress (Go), base mmap'd as the raw dictionary", diff: diffKlauspost, apply: "kzstd",
			maxBase: 512 << 20, skip: "skipped: klauspost's patch-from window is at most 512 MiB and its decoder holds the whole base (see the 117 MB rows)"},
		{id: "zstd", name: "zstd --patch-from (Debian zstd 1.5.4, -19 --long)", diff: diffZstdCLI, apply: "zstd",
			maxBase: 512 << 20, skip: "skipped at 1 GiB (diff time at -19); its apply holds the base: see its peak RSS on the smaller pairs"},
		{id: "xdelta3", name: "xdelta3 -9 (Debian 3.0.11, source window = base)", diff: diffXdelta, apply: "xdelta3",
			maxBase: 512 << 20, skip: "skipped at 1 GiB (diff time); its source window is the base, see its peak RSS on the smaller pairs"},
		{id: "bsdiff", name: "bsdiff (Debian 4.3)", diff: diffBsdiff, apply: "bsdiff",
			maxBase: 40 << 20, skip: "skipped above 40 MB: bsdiff needs about 17 × the base in memory and took 4 min for 21 MB on this machine; bspatch holds the whole base and result"},
	}
}

// deltaPairs writes the pairs of issue 17: (a) a ≥ 100 MB MLP and its last layer
// retrained, (b) every weight perturbed, (c) ONNX Runtime 1.23.2 → 1.24.3 (when
// bench/deps.sh fetched them), (d) the demo's vibration 1.0.0 → 1.1.0, and a 1 GiB MLP
// with its head retrained for the memory bound.
func deltaPairs(cfg *config, dir string) ([]deltaPair, error) {
	write := func(name string, b []byte) (string, error) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(p); err == nil && fi.Size() == int64(len(b)) {
			return p, nil
		}
		return p, os.WriteFile(p, b, 0o644)
	}
	var pairs []deltaPair
	sizes := []int{1024, 4096, 4096, 1536, 10} // 109 MB
	big := []int{8192, 8192, 8192, 8192, 8192, 10}
	if cfg.rounds <= 2 { // -quick
		sizes, big = []int{512, 2048, 2048, 10}, nil
	}
	m := modelgen.Random(17, sizes...)
	a, err := write("mlp.onnx", m.ONNX("mlp", nil, nil))
	if err != nil {
		return nil, err
	}
	a2, err := write("mlp-head.onnx", m.RetrainLast(18).ONNX("mlp", nil, nil))
	if err != nil {
		return nil, err
	}
	b2, err := write("mlp-retrained.onnx", m.Perturb(19, 0.001).ONNX("mlp", nil, nil))
	if err != nil {
		return nil, err
	}
	mb := fmt.Sprintf("%.0f MB", float64(fileSize(a))/1e6)
	pairs = append(pairs,
		deltaPair{name: "(a) MLP " + mb + " → last layer retrained", base: a, target: a2},
		deltaPair{name: "(b) MLP " + mb + " → every weight perturbed", base: a, target: b2})
	ort := filepath.Join(cfg.work, "ort")
	if fileSize(filepath.Join(ort, "1.23.2", "libonnxruntime.so.1")) > 0 && fileSize(filepath.Join(ort, "1.24.3", "libonnxruntime.so.1")) > 0 {
		pairs = append(pairs, deltaPair{name: "(c) libonnxruntime.so 1.23.2 → 1.24.3 (npm onnxruntime-node, linux x64)",
			base: filepath.Join(ort, "1.23.2", "libonnxruntime.so.1"), target: filepath.Join(ort, "1.24.3", "libonnxruntime.so.1")})
	}
	v1, err := modelgen.Model("1.0.0")
	if err != nil {
		return nil, err
	}
	v2, err := modelgen.Model("1.1.0")
	if err != nil {
		return nil, err
	}
	d1, err := write("vibration-1.0.0.onnx", v1)
	if err != nil {
		return nil, err
	}
	d2, err := write("vibration-1.1.0.onnx", v2)
	if err != nil {
		return nil, err
	}
	pairs = append(pairs, deltaPair{name: "(d) vibration 1.0.0 → 1.1.0", base: d1, target: d2})
	if big != nil {
		g := filepath.Join(dir, "mlp-1g.onnx")
		g2 := filepath.Join(dir, "mlp-1g-head.onnx")
		if fileSize(g) == 0 || fileSize(g2) == 0 {
			bm := modelgen.Random(20, big...)
			if err := os.WriteFile(g, bm.ONNX("mlp", nil, nil), 0o644); err != nil {
				return nil, err
			}
			if err := os.WriteFile(g2, bm.RetrainLast(21).ONNX("mlp", nil, nil), 0o644); err != nil {
				return nil, err
			}
		}
		pairs = append(pairs, deltaPair{name: fmt.Sprintf("(e) MLP %.2f GiB → last layer retrained (the 64 MiB bound)", float64(fileSize(g))/(1<<30)), base: g, target: g2})
	}
	return pairs, nil
}

func fileSize(p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		return 0
	}
	return fi.Size()
}

func sameFile(a, b string) error {
	ha, err := fileSHA(a)
	if err != nil {
		return err
	}
	hb, err := fileSHA(b)
	if err != nil {
		return err
	}
	if ha != hb {
		return fmt.Errorf("sha256 %s, want %s", ha[:16], hb[:16])
	}
	return nil
}

func fileSHA(p string) (string, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func diffCDC(ctx context.Context, base, target, out string) error {
	bf, err := os.Open(base)
	if err != nil {
		return err
	}
	defer bf.Close()
	tf, err := os.Open(target)
	if err != nil {
		return err
	}
	defer tf.Close()
	of, err := os.Create(out)
	if err != nil {
		return err
	}
	defer of.Close()
	w := bufio.NewWriter(of)
	if _, err := delta.Diff(ctx, bufio.NewReader(bf), bufio.NewReader(tf), w); err != nil {
		return err
	}
	return w.Flush()
}

func diffCasync(ctx context.Context, base, target, out string) error {
	bf, err := os.Open(base)
	if err != nil {
		return err
	}
	defer bf.Close()
	tf, err := os.Open(target)
	if err != nil {
		return err
	}
	defer tf.Close()
	n, err := delta.ChunkStoreBytes(ctx, bufio.NewReader(bf), bufio.NewReader(tf))
	if err != nil {
		return err
	}
	// The figure is a size; a sparse file of that size stands for it.
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Truncate(n)
}

func diffKlauspost(ctx context.Context, base, target, out string) error {
	b, err := os.ReadFile(base)
	if err != nil {
		return err
	}
	t, err := os.ReadFile(target)
	if err != nil {
		return err
	}
	win := 1 << min(29, max(20, bits.Len(uint(len(b)+len(t)))))
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderDictRaw(1, b), zstd.WithWindowSize(win), zstd.WithEncoderLevel(zstd.SpeedBestCompression), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return err
	}
	return os.WriteFile(out, enc.EncodeAll(t, nil), 0o644)
}

func logBits(n int64) int { return max(10, min(31, bits.Len64(uint64(n)))) }

func diffZstdCLI(ctx context.Context, base, target, out string) error {
	_, err := runChild(ctx, "zstd", []string{"-q", "-f", "-19", fmt.Sprintf("--long=%d", logBits(fileSize(base)+fileSize(target))), "--patch-from=" + base, target, "-o", out}, nil)
	return err
}

func diffXdelta(ctx context.Context, base, target, out string) error {
	_, err := runChild(ctx, "xdelta3", []string{"-e", "-f", "-9", "-B", fmt.Sprint(max(1<<20, min(1<<30, fileSize(base)))), "-s", base, target, out}, nil)
	return err
}

func diffBsdiff(ctx context.Context, base, target, out string) error {
	_, err := runChild(ctx, "bsdiff", []string{base, target, out}, nil)
	return err
}
