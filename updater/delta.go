package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/rollback/crashpoint"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// FetchInfo says how a target came into its slot.
type FetchInfo struct {
	// Method is the delta method ("cdc-zstd") when the target was built from a delta
	// and the slot's committed base, "" for the full target.
	Method string
	// Fetched is the bytes of targets (deltas and full targets) this Fetch downloaded or
	// found already downloaded; Saved is the full target's length minus Fetched
	// (negative after a delta that failed and fell back).
	Fetched, Saved int64
	// Fallback says why a delta this Fetch tried was not used and the full target
	// followed (a corrupt or wrong delta, an apply a kill interrupted); "" when none was
	// tried, or it built the target.
	Fallback string
}

// Suffixes of a delta install's files beside the slot's payload (dst): the delta as
// downloaded, the result being built (while the delta downloads), and the mark that an
// apply began, written before the delta's download starts. A mark found at the start of
// a Fetch is an apply that did not finish (a kill, a power cut): that install falls
// back to the full target.
const (
	deltaFileSuffix  = ".delta"
	deltaOutSuffix   = ".delta.out"
	deltaMarkSuffix  = ".delta.applying"
	deltaCheckpoints = 64 << 20 // bytes of result between crash-point hits
)

func removeDeltaFiles(dst string) {
	for _, s := range []string{deltaFileSuffix, deltaOutSuffix, deltaMarkSuffix, deltaFileSuffix + ".part", deltaFileSuffix + ".part.state"} {
		os.Remove(dst + s)
	}
	_ = durable.SyncDir(filepath.Dir(dst))
}

// removeApply removes what an apply of a delta into dst made, its mark and its partial
// result, and keeps the delta's download.
func removeApply(dst string) {
	os.Remove(dst + deltaOutSuffix)
	os.Remove(dst + deltaMarkSuffix)
	_ = durable.SyncDir(filepath.Dir(dst))
}

// fetch makes dst hold t: from a delta when the device's committed slot holds the base
// of one TUF lists for t, else (and after any failure of the delta path) the full
// target. It returns how. It downloads and applies for the Downloader's MaxTime in all
// (the delta, its apply and the full target after it), then returns ErrPaused.
func (f slotFetcher) fetch(ctx context.Context, t rollback.Target, dst string) (FetchInfo, rollback.Proof, error) {
	ctx, cancel := f.c.dl.bound(ctx)
	defer cancel()
	sum, err := hex.DecodeString(t.SHA256)
	if err != nil || len(sum) != sha256.Size {
		return FetchInfo{}, rollback.Proof{}, &DownloadError{URL: t.Path, Err: fmt.Errorf("bad sha256 %q", t.SHA256), perm: true}
	}
	want := Want{Length: t.Length, Hashes: map[string][]byte{"sha256": sum}}
	full := func(info FetchInfo) (FetchInfo, rollback.Proof, error) {
		removeDeltaFiles(dst)
		info.Fetched += t.Length
		info.Saved = t.Length - info.Fetched
		info.Method = ""
		fi, err := f.c.dl.download(ctx, f.c.url(t.Path, metadata.Hashes{"sha256": sum}), want, dst)
		if err != nil || fi == nil {
			return info, rollback.Proof{}, err
		}
		return info, rollback.Proof{Length: t.Length, SHA256: t.SHA256, File: fi}, nil
	}
	if f.c.cfg.NoDeltas {
		return full(FetchInfo{})
	}
	if _, ok := fileMatchesStat(dst, want); ok {
		// Already there: an earlier fetch renamed it in and was killed before it tidied
		// up. What it would have removed goes now, or it stays after the transaction
		// moves on (the random-kill test found a .part.state left so).
		removePart(dst)
		removeDeltaFiles(dst)
		return FetchInfo{Fetched: 0, Saved: t.Length}, rollback.Proof{}, nil
	}
	if _, err := os.Stat(dst + deltaMarkSuffix); err == nil {
		f.c.dl.logger().Warn("an apply of a delta did not finish: installing the full target", "target", t.Path)
		return full(FetchInfo{Fallback: "an earlier apply of the delta did not finish"})
	}
	if downloading(dst) {
		// The full target is under way (a delta failed, then the round's time ran out):
		// it resumes. Trying the delta first again would take that time from it at each
		// round.
		return full(FetchInfo{})
	}
	info, err := f.fromDelta(ctx, t, want, dst)
	if err == nil {
		// apply hashed every byte it wrote, and dst is the file it renamed in.
		p := rollback.Proof{}
		if fi, serr := os.Stat(dst); serr == nil {
			p = rollback.Proof{Length: t.Length, SHA256: t.SHA256, File: fi}
		}
		return info, p, nil
	}
	if errors.Is(err, ErrPaused) || paused(ctx) {
		// The round's download time is up while the delta was downloading, or applying:
		// the next round resumes the delta (its partial file kept), not the full target.
		// Nothing was killed, so the mark of the apply goes (it made the next round
		// install the full target, reported as an apply that did not finish: found from
		// outside, 2 Dec), and with it what the apply made: the next one starts over.
		removeApply(dst)
		if !errors.Is(err, ErrPaused) {
			err = fmt.Errorf("%w: after %v: %w", ErrPaused, f.c.dl.MaxTime, err)
		}
		return info, rollback.Proof{}, err
	}
	if ctx.Err() != nil {
		// Stopped (the agent shutting down), not killed: the apply did not crash the
		// process, so its mark goes with the rest, and the next attempt tries the
		// delta again. Only a kill leaves the mark that makes it fall back.
		removeDeltaFiles(dst)
		return info, rollback.Proof{}, err
	}
	if !errors.Is(err, errNoDelta) {
		f.c.dl.logger().Warn("delta install failed: installing the full target", "target", t.Path, "err", err)
		info.Fallback = err.Error()
	}
	return full(info)
}

// errNoDelta: no delta applies (no base, none published for it); not worth a warning.
var errNoDelta = errors.New("no delta for this base")

// fromDelta finds the committed base beside dst, the delta TUF lists from it to t,
// downloads the delta (resumable) and builds t into dst, checked against t's length
// and sha256 before it is renamed into place.
func (f slotFetcher) fromDelta(ctx context.Context, t rollback.Target, want Want, dst string) (FetchInfo, error) {
	var info FetchInfo
	base, baseSHA, baseLen, err := committedBase(dst)
	if err != nil {
		return info, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	tf, err := f.c.Target(ctx, artifact.DeltaPath(t.Path, baseSHA))
	if err != nil {
		return info, fmt.Errorf("%w: %v", errNoDelta, err)
	}
	if tf.Custom == nil {
		return info, fmt.Errorf("delta %s: no metadata", tf.Path)
	}
	d, ok := artifact.ParseDelta(*tf.Custom)
	if !ok {
		return info, fmt.Errorf("delta %s: no delta metadata", tf.Path)
	}
	switch {
	case d.Validate() != nil:
		return info, fmt.Errorf("delta %s: %w", tf.Path, d.Validate())
	case d.Method != delta.MethodCDC:
		return info, fmt.Errorf("delta %s: method %q unknown to this agent", tf.Path, d.Method)
	case d.Result.Path != t.Path || d.Result.SHA256 != t.SHA256 || d.Result.Length != t.Length:
		return info, fmt.Errorf("delta %s: builds %s (sha256 %.16s), not the target %s (sha256 %.16s)", tf.Path, d.Result.Path, d.Result.SHA256, t.Path, t.SHA256)
	case d.Base.SHA256 != baseSHA || d.Base.Length != baseLen:
		return info, fmt.Errorf("%w: delta %s is from sha256 %.16s, the committed slot holds %.16s", delta.ErrBaseMismatch, tf.Path, d.Base.SHA256, baseSHA)
	}
	if float64(tf.Length) >= float64(t.Length) {
		return info, fmt.Errorf("%w: delta %s is not smaller than the target", errNoDelta, tf.Path)
	}
	info.Method, info.Fetched = d.Method, tf.Length
	info.Saved = t.Length - info.Fetched
	// The apply reads the delta as it arrives, from the file the download writes (the
	// delta is checked against its TUF hashes when it is complete, and the result
	// against the target's before it is renamed into the slot). The mark goes first:
	// from here a kill leaves an apply that did not finish, and the next attempt
	// installs the full target. A partial download of the delta (a round's time ran
	// out) stays: the download resumes it.
	removeApply(dst)
	if err := durable.WriteFile(dst+deltaMarkSuffix, []byte(tf.Path+"\n"), 0o600); err != nil {
		return info, err
	}
	// A download that fails stops the apply: what it made of those bytes is of no use,
	// and the work it had left, as long as writing the result takes, is the round's.
	dctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	dpath := dst + deltaFileSuffix
	src := &growingFile{paths: [2]string{dpath + ".part", dpath}, done: make(chan struct{}), ctx: dctx}
	go func() {
		_, err := f.c.Download(dctx, tf, dpath)
		if err == nil {
			crashpoint.Hit(&f.c.dl.crash, "after-delta-download")
		}
		src.err = err
		if err != nil {
			cancel(err)
		}
		close(src.done)
	}()
	aerr := f.apply(dctx, base, baseLen, src, t, want, dst)
	// A delta that did not apply is still downloaded to its end (its bytes at most,
	// fewer than the full target's that follow): whether it was the signed delta tells
	// a damaged copy from a delta that does not build its target.
	<-src.done
	src.close()
	if src.err != nil {
		// The delta's own hash (or its download) failed: the cause, whatever the apply made of its bytes.
		return info, fmt.Errorf("download delta %s: %w", tf.Path, src.err)
	}
	if aerr != nil {
		return info, aerr
	}
	removeDeltaFiles(dst)
	return info, nil
}

// growingFile reads a file while a download writes it: the partial file (paths[0]),
// or the complete one it is renamed to (paths[1]). At the end of what is written it
// waits for more until done is closed; then err is the download's result (nil: the
// file is complete). Memory: none beyond the caller's buffer.
type growingFile struct {
	paths [2]string
	done  chan struct{}
	err   error // the download's error, set before done is closed
	ctx   context.Context
	f     *os.File
	off   int64
	timer *time.Timer
}

// growPoll is how long a growingFile waits before it looks for more bytes.
const growPoll = 2 * time.Millisecond

func (g *growingFile) Read(p []byte) (int, error) {
	for {
		finished := false
		select {
		case <-g.done:
			finished = true
		default:
		}
		if g.f == nil {
			for _, path := range g.paths {
				if f, err := os.Open(path); err == nil {
					g.f = f
					break
				}
			}
		}
		if g.f != nil {
			n, err := g.f.ReadAt(p, g.off)
			g.off += int64(n)
			if n > 0 {
				return n, nil
			}
			if err != io.EOF {
				return 0, err
			}
		}
		if finished {
			// Everything the download wrote before it returned was read above.
			if g.err != nil {
				return 0, g.err
			}
			if g.f == nil {
				return 0, io.ErrUnexpectedEOF
			}
			return 0, io.EOF
		}
		if g.timer == nil {
			g.timer = time.NewTimer(growPoll)
		} else {
			g.timer.Reset(growPoll)
		}
		select {
		case <-g.done:
		case <-g.timer.C:
		case <-g.ctx.Done():
			return 0, g.ctx.Err()
		}
	}
}

func (g *growingFile) close() {
	if g.f != nil {
		g.f.Close()
	}
}

// apply builds the result of the delta read from df applied to base into
// dst.delta.out, hashing as it writes, and renames it to dst only when its length and
// sha256 are t's.
func (f slotFetcher) apply(ctx context.Context, base string, baseLen int64, df io.Reader, t rollback.Target, want Want, dst string) error {
	bf, err := os.Open(base)
	if err != nil {
		return err
	}
	defer bf.Close()
	out, err := os.OpenFile(dst+deltaOutSuffix, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return classifyWrite(err)
	}
	defer out.Close()
	var rw io.Writer = out
	if f.c.wrapApply != nil {
		rw = f.c.wrapApply(out)
	}
	h := sha256.New()
	w := &applyWriter{w: rw, h: h, crash: &f.c.dl.crash}
	n, err := delta.Apply(ctx, bf, baseLen, df, w, t.Length)
	if err != nil {
		return fmt.Errorf("apply delta: %w", classifyWrite(err))
	}
	if got := h.Sum(nil); n != t.Length || !equalBytes(got, want.Hashes["sha256"]) {
		return fmt.Errorf("delta result: %w: %d bytes, sha256 %x; the signed target has %d bytes, sha256 %s", ErrHashMismatch, n, got, t.Length, t.SHA256)
	}
	if err := out.Sync(); err != nil {
		return classifyWrite(err)
	}
	if err := out.Close(); err != nil {
		return classifyWrite(err)
	}
	if err := os.Rename(dst+deltaOutSuffix, dst); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(dst))
}

// applyWriter writes the result and hashes it, and passes the crash point mid-apply
// every deltaCheckpoints bytes.
type applyWriter struct {
	w       io.Writer
	h       io.Writer
	n, last int64
	crash   *crashpoint.Counter
}

func (a *applyWriter) Write(p []byte) (int, error) {
	n, err := a.w.Write(p)
	a.h.Write(p[:n])
	a.n += int64(n)
	if a.n-a.last >= deltaCheckpoints || (a.last == 0 && a.n > 0) {
		a.last = a.n
		crashpoint.Hit(a.crash, "mid-apply")
	}
	return n, err
}

// committedBase finds the committed payload beside the slot payload dst (the other
// slot of the same kind) and hashes it. What it holds is trusted only as far as its
// hash matches a delta's signed base, and the result's hash the signed target's.
func committedBase(dst string) (path, sha string, length int64, err error) {
	slot := filepath.Dir(dst)
	entries, err := os.ReadDir(filepath.Dir(slot))
	if err != nil {
		return "", "", 0, err
	}
	for _, e := range entries {
		p := filepath.Join(filepath.Dir(slot), e.Name(), rollback.PayloadName)
		if !e.IsDir() || filepath.Join(filepath.Dir(slot), e.Name()) == slot {
			continue
		}
		fp, err := os.Open(p)
		if err != nil {
			continue
		}
		h := sha256.New()
		n, err := io.CopyBuffer(h, fp, make([]byte, 256<<10))
		fp.Close()
		if err != nil {
			return "", "", 0, err
		}
		return p, hex.EncodeToString(h.Sum(nil)), n, nil
	}
	return "", "", 0, errors.New("no committed payload in another slot")
}
