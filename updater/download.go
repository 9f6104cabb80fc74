// Package updater is the device side of Edgeward's updates: the TUF client (go-tuf v2 with
// the root pinned at enrollment), streaming resumable verified downloads into A/B slots,
// and the glue that installs only what TUF verified.
package updater

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/rollback/crashpoint"
)

// Errors of a download. Each is wrapped in a *DownloadError.
var (
	// ErrTooLong: the server sent more than the TUF length; the body was cut off there.
	ErrTooLong = errors.New("body longer than the target's TUF length")
	// ErrHashMismatch: the bytes do not hash to what TUF says.
	ErrHashMismatch = errors.New("hash mismatch")
	// ErrTruncated: the body ended before the TUF length (retried, resumed with Range).
	ErrTruncated = errors.New("body shorter than the target's TUF length")
	// ErrDiskFull: writing the slot ran out of space.
	ErrDiskFull = errors.New("no space left for the target")
	// ErrStalled: under minProgress bytes arrived in Downloader.StallTimeout (retried,
	// resumed).
	ErrStalled = errors.New("download stalled")
	// ErrPaused: Downloader.MaxTime passed before the target was complete; what arrived
	// is kept at a durable checkpoint and the next Download resumes from it (transient,
	// and not a failure of the version or the mirror: the updater resumes at its next
	// round without counting it).
	ErrPaused = errors.New("download paused, to resume at the next round")
	// ErrNoHash: TUF lists no hash, or one this client cannot check (it supports sha256,
	// sha384 and sha512).
	ErrNoHash = errors.New("unsupported or missing hash for the target")
)

// DownloadError is the error of Downloader.Download.
type DownloadError struct {
	URL    string
	Status int // HTTP status when the server refused, else 0
	Err    error
	perm   bool
}

func (e *DownloadError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("download %s: HTTP %d: %v", e.URL, e.Status, e.Err)
	}
	return fmt.Sprintf("download %s: %v", e.URL, e.Err)
}
func (e *DownloadError) Unwrap() error { return e.Err }

// Permanent reports whether retrying cannot help (wrong hash, too long, disk full, 4xx).
func (e *DownloadError) Permanent() bool { return e.perm }

var _ rollback.Permanent = (*DownloadError)(nil)

// Want is what TUF says a target is: its length and hashes (algorithm → digest).
type Want struct {
	Length int64
	Hashes map[string][]byte
}

// Backoff bounds retries: attempt i (from 0) waits a random duration in [d/2, d] with
// d = min(Max, Base·2^i).
type Backoff struct {
	Attempts int           // attempts in a row that each moved the download less than 64 KiB forward; 0 means 6
	Base     time.Duration // 0 means 500ms
	Max      time.Duration // 0 means 30s
}

// Downloader streams targets to files and resumes interrupted downloads with HTTP Range
// from a durable checkpoint (the offset and the marshalled hash state, in
// <dst>.part.state beside <dst>.part). Every byte is read from the network once, written
// once and hashed once, and the three overlap: while the reading goroutine fills the next
// buffer, a writer goroutine writes the last one and a hasher goroutine hashes it, from
// the same memory. A download of at least 1 MiB is written straight to the disk where the
// file system allows it (O_DIRECT, aligned buffers): no copy into the page cache and no
// dirty pages left for the checkpoints and the final sync to wait for. Elsewhere writes go
// through the page cache, whose writeback is started every 8 MiB and waited for one step
// later, so that little is dirty at any time. Memory use is four buffers whatever the
// target's size. The zero value is usable. A Downloader is safe for concurrent use on
// different destinations.
type Downloader struct {
	// Client makes the requests. Nil means http.DefaultClient.
	Client *http.Client
	// BufferSize is the size of each read, write and hash step; 0 means 1 MiB for
	// direct writes and 256 KiB through the page cache (a download holds four). It is
	// capped at CheckpointBytes. Direct writes need a multiple of 4 KiB.
	BufferSize int
	// CheckpointBytes is how much is written between durable checkpoints; 0 means 64 MiB.
	// A checkpoint waits for the bytes so far to be on the disk (fdatasync), then
	// writes the offset and hash state atomically; a crash loses what came after it.
	CheckpointBytes int64
	// CheckpointInterval is the least time between two checkpoints, so that a fast
	// download does not wait for the disk more than once a second; 0 means 1 second,
	// negative means none (a checkpoint every CheckpointBytes).
	CheckpointInterval time.Duration
	// Retry bounds retries of transient failures.
	Retry Backoff
	// StallTimeout ends an attempt when fewer than minProgress bytes (64 KiB, or the
	// rest of the target) arrive in this long (the next attempt resumes); 0 means 60s.
	StallTimeout time.Duration
	// MaxTime bounds one Download call, its retries included, and one slot fetch
	// (TUF.SlotFetcher) in all: its delta, the delta's apply and the full target after a
	// delta that failed; 0 means no bound. Past it the download stops at a durable
	// checkpoint and Download returns ErrPaused; the next call resumes. The device agent
	// sets it so that a target trickling in from a slow or hostile mirror, just above the
	// stall floor, cannot hold its round, and so its check-ins, attestation and reports,
	// for hours: at 1 KiB/s a 1 GiB install held the round for 11 days (found from
	// outside, 2 Dec). Before 2 Dec a fetch whose delta failed had MaxTime twice.
	MaxTime time.Duration
	// Sleep waits between attempts. Nil means a timer honouring ctx.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for jitter. Nil means math/rand/v2.
	Rand func() float64
	// NoResume removes partial files when Download fails, leaving nothing behind.
	NoResume bool
	// Logger; nil means slog.Default().
	Logger *slog.Logger

	crash crashpoint.Counter
	// wrapFile, when set (tests), wraps the partial file's writers, the page cache's
	// and the direct one (e.g. to fail like a full disk).
	wrapFile func(io.WriterAt) io.WriterAt
	// noWriteback, when set (benchmarks), leaves writeback to the kernel until the syncs.
	noWriteback bool
	// noDirect, when set (benchmarks), writes everything through the page cache.
	noDirect bool
	// directMin, when positive (tests), replaces directMinBytes.
	directMin int64
	// directBytes, when set (tests), counts the bytes written straight to the disk.
	directBytes *atomic.Int64
}

func (d *Downloader) logger() *slog.Logger {
	if d.Logger != nil {
		return d.Logger
	}
	return slog.Default()
}

// delay is the wait before attempt i+1.
func (d *Downloader) delay(i int) time.Duration {
	base, lim := d.Retry.Base, d.Retry.Max
	if base <= 0 {
		base = 500 * time.Millisecond
	}
	if lim <= 0 {
		lim = 30 * time.Second
	}
	dur := lim
	if i < 30 && base<<i < lim {
		dur = base << i
	}
	r := rand.Float64
	if d.Rand != nil {
		r = d.Rand
	}
	return dur/2 + time.Duration(r()*float64(dur/2))
}

func sleepCtx(ctx context.Context, dur time.Duration) error {
	t := time.NewTimer(dur)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Download makes dst hold exactly the target want describes, fetched from url. It returns
// nil only after dst's length and every listed hash matched and dst was made durable
// (synced, renamed from dst.part, directory synced). Nothing is ever written to dst that
// did not match; a dst that already matches is kept without a request. Transient
// failures are retried with backoff and jitter; permanent ones (see
// DownloadError.Permanent) remove the partial file and return at once.
func (d *Downloader) Download(ctx context.Context, url string, want Want, dst string) error {
	_, err := d.download(ctx, url, want, dst)
	return err
}

// download is Download. On success it also returns dst's os.FileInfo (from fstat after
// the rename) when this call hashed every byte of dst itself, and nil when part of it
// was hashed by an earlier process (a download resumed from a checkpoint on disk).
func (d *Downloader) download(ctx context.Context, url string, want Want, dst string) (os.FileInfo, error) {
	if fi, ok := fileMatchesStat(dst, want); ok {
		// Already there (an earlier call completed before a crash): only tidy up.
		removePart(dst)
		return fi, nil
	}
	ctx, cancel := d.bound(ctx)
	defer cancel()
	attempts := d.Retry.Attempts
	if attempts <= 0 {
		attempts = 6
	}
	sleep := d.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	// p, the open partial download, lives across attempts: a retry continues from the
	// offset and hash state in memory.
	var p *part
	defer func() {
		if p != nil {
			p.f.Close()
		}
	}()
	var (
		fi  os.FileInfo
		err error
	)
	for i := 0; i < attempts; i++ {
		if i > 0 {
			wait := d.delay(i - 1)
			d.logger().Warn("download failed, retrying", "url", url, "attempt", i, "wait", wait, "err", err)
			if serr := sleep(ctx, wait); serr != nil {
				err = serr
				break
			}
		}
		before := p.at()
		fi, err = d.once(ctx, url, want, dst, &p)
		var de *DownloadError
		if err == nil || ctx.Err() != nil || (errors.As(err, &de) && de.perm) || errors.Is(err, ErrUntrustedServer) {
			// An untrusted certificate stays untrusted within a round: not retried here,
			// yet not permanent, since the version is not at fault (Transient).
			break
		}
		if p.at()-before >= progressResets {
			// The attempt moved the download forward: the link works, if poorly, and
			// the failures so far are not what Attempts bounds. Each such attempt
			// brings the end nearer, so this ends. (A link cut every few MB stopped a
			// manual install at 6 attempts; found by fault injection.)
			i = 0
		}
	}
	if err != nil && paused(ctx) && !rollback.IsPermanent(err) {
		err = &DownloadError{URL: url, Err: fmt.Errorf("%w: %d of %d bytes after %v", ErrPaused, p.at(), want.Length, d.MaxTime)}
	}
	if err != nil && (d.NoResume || rollback.IsPermanent(err)) {
		removePart(dst)
	}
	return fi, err
}

// boundKey is the context key of a Downloader's time bound (bound).
type boundKey struct{}

// bound returns ctx ended MaxTime from now with the cause ErrPaused: the one bound of
// every download of d under it. It returns ctx as it is when MaxTime is 0 or ctx
// carries d's bound already, so that a caller that downloads several files for one
// purpose (a slot fetch: a delta, then the full target) bounds them in all.
func (d *Downloader) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if d.MaxTime <= 0 || ctx.Value(boundKey{}) == d {
		return ctx, func() {}
	}
	ctx, cancel := context.WithTimeoutCause(ctx, d.MaxTime, ErrPaused)
	return context.WithValue(ctx, boundKey{}, d), cancel
}

// paused reports whether ctx ended at a Downloader's time bound (not stopped by its
// caller).
func paused(ctx context.Context) bool { return errors.Is(context.Cause(ctx), ErrPaused) }

// downloading reports whether a download into dst began and did not finish: its
// partial file is there.
func downloading(dst string) bool {
	_, err := os.Stat(dst + ".part")
	return err == nil
}

func removePart(dst string) {
	os.Remove(dst + ".part")
	os.Remove(dst + ".part.state")
	_ = durable.SyncDir(filepath.Dir(dst))
}

// partState is the durable checkpoint of a partial download.
type partState struct {
	Length int64             `json:"length"`
	Hashes map[string]string `json:"hashes"` // expected, hex: identifies the target
	Offset int64             `json:"offset"`
	State  map[string][]byte `json:"state"` // marshalled hash states at Offset
}

// newHashers returns a hash for every algorithm want lists. A listed algorithm this
// client cannot compute fails the download: every listed hash must be checked.
func newHashers(want Want) (map[string]hash.Hash, error) {
	hs := map[string]hash.Hash{}
	for alg := range want.Hashes {
		switch alg {
		case "sha256":
			hs[alg] = sha256.New()
		case "sha384":
			hs[alg] = sha512.New384()
		case "sha512":
			hs[alg] = sha512.New()
		default:
			return nil, fmt.Errorf("%w: %q", ErrNoHash, alg)
		}
	}
	if len(hs) == 0 {
		return nil, ErrNoHash
	}
	return hs, nil
}

func hexHashes(want Want) map[string]string {
	m := map[string]string{}
	for k, v := range want.Hashes {
		m[k] = hex.EncodeToString(v)
	}
	return m
}

// part is an open partial download.
// progressResets is how far one failed attempt must move a download forward for the
// attempts (and the backoff) to start again.
const progressResets = 64 << 10

// at is p's offset, 0 for none.
func (p *part) at() int64 {
	if p == nil {
		return 0
	}
	return p.offset
}

type part struct {
	f      *os.File
	path   string
	offset int64 // bytes written and hashed (once the hasher is drained)
	hs     map[string]hash.Hash
	// whole: every byte up to offset was hashed by this process (false after resuming
	// from a checkpoint on disk, until a reset).
	whole bool
}

// openPart opens dst.part at its last checkpoint, or empty if there is none that matches want.
func (d *Downloader) openPart(dst string, want Want) (*part, error) {
	hs, err := newHashers(want)
	if err != nil {
		return nil, err
	}
	p := &part{path: dst + ".part", hs: hs}
	p.f, err = os.OpenFile(p.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if b, err := os.ReadFile(dst + ".part.state"); err == nil {
		var st partState
		if json.Unmarshal(b, &st) == nil && p.resume(st, want) {
			if err := p.f.Truncate(p.offset); err != nil { // bytes after the checkpoint are not hashed: drop them
				p.f.Close()
				return nil, err
			}
			return p, nil
		}
		d.logger().Warn("discarding a partial download that does not match its checkpoint", "path", p.path)
	}
	if err := p.reset(); err != nil {
		p.f.Close()
		return nil, err
	}
	return p, nil
}

// resume adopts checkpoint st if it belongs to want and the file holds its bytes.
func (p *part) resume(st partState, want Want) bool {
	if st.Length != want.Length || st.Offset < 0 || st.Offset > want.Length || fmt.Sprint(st.Hashes) != fmt.Sprint(hexHashes(want)) {
		return false
	}
	if fi, err := p.f.Stat(); err != nil || fi.Size() < st.Offset {
		return false
	}
	for alg, h := range p.hs {
		u, ok := h.(encoding.BinaryUnmarshaler)
		if !ok || u.UnmarshalBinary(st.State[alg]) != nil {
			return false
		}
	}
	p.offset, p.whole = st.Offset, st.Offset == 0
	return true
}

// reset empties the partial file and the hashes. Call it only with the hasher drained.
func (p *part) reset() error {
	for _, h := range p.hs {
		h.Reset()
	}
	p.offset, p.whole = 0, true
	return p.f.Truncate(0)
}

// checkpoint makes the bytes so far durable, then records the offset and hash state.
// Call it only with the hasher drained.
func (p *part) checkpoint(want Want) error {
	if err := datasync(p.f); err != nil {
		return err
	}
	st := partState{Length: want.Length, Hashes: hexHashes(want), Offset: p.offset, State: map[string][]byte{}}
	for alg, h := range p.hs {
		b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
		if err != nil {
			return err
		}
		st.State[alg] = b
	}
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	return durable.WriteFile(strings.TrimSuffix(p.path, ".part")+".part.state", b, 0o600)
}

// once is one attempt. *pp is the partial download, opened here on the first attempt.
// On success *pp is closed and nil.
func (d *Downloader) once(ctx context.Context, url string, want Want, dst string, pp **part) (os.FileInfo, error) {
	perm := func(e error) error { return &DownloadError{URL: url, Err: e, perm: true} }
	transient := func(e error) error { return &DownloadError{URL: url, Err: e} }
	if want.Length < 0 {
		return nil, perm(fmt.Errorf("negative length %d", want.Length))
	}
	if *pp == nil {
		p, err := d.openPart(dst, want)
		if err != nil {
			if errors.Is(err, ErrNoHash) {
				return nil, perm(err)
			}
			return nil, perm(fmt.Errorf("open partial file: %w", classifyWrite(err)))
		}
		*pp = p
	}
	p := *pp
	if need := want.Length - p.offset; need > 0 {
		// Fail before fetching what cannot be stored (a write failing later is caught too).
		if free, ok := freeBytes(filepath.Dir(dst)); ok && free < need {
			return nil, perm(fmt.Errorf("%w: %d more bytes needed, %d free in %s", ErrDiskFull, need, free, filepath.Dir(dst)))
		}
	}
	if p.offset < want.Length {
		if err := d.fetch(ctx, url, want, p); err != nil {
			var de *DownloadError
			if !errors.As(err, &de) {
				err = transient(err)
			}
			if errors.As(err, &de) && !de.perm && p.offset > 0 {
				// Keep what arrived for the next attempt, in this process or the next.
				if cerr := p.checkpoint(want); cerr != nil {
					return nil, perm(fmt.Errorf("checkpoint: %w", classifyWrite(cerr)))
				}
			}
			return nil, err
		}
	}
	for alg, h := range p.hs {
		if got := h.Sum(nil); !equalBytes(got, want.Hashes[alg]) {
			return nil, perm(fmt.Errorf("%w: %s %x, want %x", ErrHashMismatch, alg, got, want.Hashes[alg]))
		}
	}
	if err := datasync(p.f); err != nil {
		return nil, perm(classifyWrite(err))
	}
	if err := os.Rename(p.path, dst); err != nil {
		return nil, perm(err)
	}
	os.Remove(dst + ".part.state")
	if err := durable.SyncDir(filepath.Dir(dst)); err != nil {
		return nil, perm(err)
	}
	// The identity of what was hashed, after the rename (which changes its ctime).
	fi, err := p.f.Stat()
	if err != nil {
		fi = nil
	}
	if !p.whole {
		fi = nil
	}
	*pp = nil
	if err := p.f.Close(); err != nil {
		return nil, perm(classifyWrite(err))
	}
	return fi, nil
}

func equalBytes(a, b []byte) bool { return len(a) == len(b) && string(a) == string(b) }

func classifyWrite(err error) error {
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	}
	return err
}

// chunk is one buffer on its way through a writePipe.
type chunk struct {
	buf  []byte       // the whole buffer, aligned for direct writes
	b    []byte       // its filled part
	off  int64        // b's offset in the file
	left atomic.Int32 // stages (write, hash) still to run on it
	err  error        // the write's error (or an earlier write's), set by the writer
}

// writePipe writes and hashes buffers off the reading goroutine: a writer goroutine
// writes each at its offset and a hasher goroutine hashes it, both at once from the same
// buffer, while the reader fills the next one; a buffer comes back when both are done.
// Buffers cycle between the reader (spare) and the two stages (busy of them); the hash
// state and the file may be read only when the pipe is drained.
type writePipe struct {
	hs []hash.Hash
	// w takes the writes that go through the page cache (the partial file, or a
	// test's wrapper of it); f is the partial file, for the writeback hints.
	w io.WriterAt
	f *os.File
	// direct, when not nil, writes to the same file opened for direct writes (or a
	// test's wrapper of it): aligned buffers at aligned offsets go through it, straight
	// to the disk. directFile is that descriptor, which close closes.
	direct     io.WriterAt
	directFile *os.File
	// writeback: start writing back what goes through the page cache early, and bound
	// what is dirty (see fetch).
	writeback bool
	// directBytes, if not nil, counts the bytes written through direct.
	directBytes *atomic.Int64

	write, hash chan *chunk
	back        chan *chunk
	done        chan struct{} // closed when the writer has returned
	spare       []*chunk
	busy        int
	err         error // the first write error among the buffers back
}

// newWritePipe starts the writer and the hasher with n buffers of size bytes. Close it.
func newWritePipe(hs map[string]hash.Hash, w io.WriterAt, f *os.File, direct io.WriterAt, size, n int) *writePipe {
	p := &writePipe{w: w, f: f, direct: direct, write: make(chan *chunk, n), hash: make(chan *chunk, n),
		back: make(chan *chunk, n), done: make(chan struct{})}
	for _, h := range hs {
		p.hs = append(p.hs, h)
	}
	for range n {
		p.spare = append(p.spare, &chunk{buf: alignedBuffer(size)})
	}
	go p.writer()
	go func() {
		for c := range p.hash {
			for _, h := range p.hs {
				h.Write(c.b)
			}
			p.finish(c)
		}
	}()
	return p
}

// alignedBuffer returns size bytes starting at a multiple of directAlign.
func alignedBuffer(size int) []byte {
	b := make([]byte, size+directAlign)
	skip := (directAlign - int(uintptr(unsafe.Pointer(&b[0]))%directAlign)) % directAlign
	return b[skip : skip+size : skip+size]
}

// finish marks one stage of c done and hands c back after the last.
func (p *writePipe) finish(c *chunk) {
	if c.left.Add(-1) == 0 {
		p.back <- c
	}
}

// writer writes the buffers in order. After a failed write it writes nothing more and
// gives every later buffer the same error.
func (p *writePipe) writer() {
	defer close(p.done)
	var (
		failed error
		dio    = p.direct
		// [waited, started) is being written back; [started, end) is dirty.
		waited, started, end int64 = -1, 0, 0
	)
	for c := range p.write {
		if failed == nil {
			direct := dio != nil && c.off%directAlign == 0 && len(c.b)%directAlign == 0
			if direct {
				_, err := dio.WriteAt(c.b, c.off)
				if errors.Is(err, syscall.EINVAL) {
					// The file system takes no direct writes after all (alignment, or
					// none at all): the page cache from here.
					dio, direct = nil, false
				} else if err != nil {
					failed = classifyWrite(err)
				} else if p.directBytes != nil {
					p.directBytes.Add(int64(len(c.b)))
				}
			}
			if !direct && failed == nil {
				if _, err := p.w.WriteAt(c.b, c.off); err != nil {
					failed = classifyWrite(err)
				} else if p.writeback {
					if waited < 0 {
						waited, started = c.off, c.off
					}
					if end = c.off + int64(len(c.b)); end-started >= writebackBytes {
						// Start the disk on what was written, so that the syncs find
						// little to do, and wait for what was started before it, so
						// that at most about two steps' worth is dirty at a time.
						startWriteback(p.f, started, end-started)
						if started > waited {
							awaitWriteback(p.f, waited, started-waited)
						}
						waited, started = started, end
					}
				}
			}
		}
		c.err = failed
		p.finish(c)
	}
}

// get returns a free buffer, waiting for the stages when all are at work.
func (p *writePipe) get() *chunk {
	if n := len(p.spare); n > 0 {
		c := p.spare[n-1]
		p.spare = p.spare[:n-1]
		return c
	}
	c := <-p.back
	p.busy--
	p.note(c)
	return c
}

func (p *writePipe) note(c *chunk) {
	if c.err != nil && p.err == nil {
		p.err = c.err
	}
}

// unget returns a buffer that was not handed over.
func (p *writePipe) unget(c *chunk) { p.spare = append(p.spare, c) }

// put hands c's first n bytes, at offset off, to the writer and the hasher.
func (p *writePipe) put(c *chunk, n int, off int64) {
	c.b, c.off, c.err = c.buf[:n], off, nil
	c.left.Store(2)
	p.busy++
	p.write <- c
	p.hash <- c
}

// drain waits until every buffer handed over is written and hashed, and returns the
// first write error.
func (p *writePipe) drain() error {
	for p.busy > 0 {
		c := <-p.back
		p.busy--
		p.note(c)
		p.spare = append(p.spare, c)
	}
	return p.err
}

// close drains the pipe, stops its goroutines and closes the direct descriptor; it
// returns the first write error.
func (p *writePipe) close() error {
	err := p.drain()
	close(p.write)
	close(p.hash)
	<-p.done
	if p.directFile != nil {
		p.directFile.Close()
	}
	return err
}

// writebackBytes is how much is written through the page cache before the disk is
// asked to start writing it.
const writebackBytes = 8 << 20

// minProgress is how many bytes must arrive in each StallTimeout for a download not to
// count as stalled (fewer when less of the target is left).
const minProgress = 64 << 10

// fill reads into b until it is full, the body ends or fails; progress is called after
// every read that returned bytes, with their number.
func fill(r io.Reader, b []byte, progress func(int)) (int, error) {
	n := 0
	for n < len(b) {
		m, err := r.Read(b[n:])
		if m > 0 {
			n += m
			progress(m)
		}
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// fetch requests the rest of the target and streams it into p. When it returns, every
// byte written is hashed.
func (d *Downloader) fetch(ctx context.Context, url string, want Want, p *part) (err error) {
	stall := d.StallTimeout
	if stall <= 0 {
		stall = 60 * time.Second
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	timer := time.AfterFunc(stall, func() { cancel(ErrStalled) })
	defer timer.Stop()
	defer func() {
		var de *DownloadError
		// A stall that ended the body's read reads as a truncated body whose read
		// failed with ErrStalled; either way the cause to report is the stall.
		if err != nil && errors.Is(context.Cause(ctx), ErrStalled) && (!errors.Is(err, ErrStalled) || errors.Is(err, ErrTruncated)) && !(errors.As(err, &de) && de.perm) {
			err = &DownloadError{URL: url, Err: fmt.Errorf("%w: under %d bytes received in %v, at %d of %d bytes", ErrStalled, minProgress, stall, p.offset, want.Length)}
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return &DownloadError{URL: url, Err: err, perm: true}
	}
	if p.offset > 0 {
		req.Header.Set("Range", fmt.Sprintf("bytes=%d-", p.offset))
	}
	client := d.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		if u := untrusted(err); u != err {
			return &DownloadError{URL: url, Err: u}
		}
		return err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		if p.offset > 0 {
			d.logger().Info("server ignored Range, restarting the download", "url", url, "had", p.offset)
			if err := p.reset(); err != nil {
				return &DownloadError{URL: url, Err: classifyWrite(err), perm: true}
			}
		}
	case http.StatusPartialContent:
		start, ok := contentRangeStart(resp.Header.Get("Content-Range"))
		if !ok || start != p.offset {
			if err := p.reset(); err != nil {
				return &DownloadError{URL: url, Err: classifyWrite(err), perm: true}
			}
			return &DownloadError{URL: url, Status: resp.StatusCode, Err: fmt.Errorf("Content-Range %q does not start at %d: starting over", resp.Header.Get("Content-Range"), p.offset)}
		}
	case http.StatusRequestedRangeNotSatisfiable:
		if err := p.reset(); err != nil {
			return &DownloadError{URL: url, Err: classifyWrite(err), perm: true}
		}
		return &DownloadError{URL: url, Status: resp.StatusCode, Err: errors.New("range not satisfiable: starting over")}
	default:
		c := resp.StatusCode
		perm := c >= 400 && c < 500 && c != http.StatusRequestTimeout && c != http.StatusTooManyRequests
		return &DownloadError{URL: url, Status: c, Err: errors.New(http.StatusText(c)), perm: perm}
	}
	if resp.ContentLength > want.Length-p.offset {
		return &DownloadError{URL: url, Err: fmt.Errorf("%w: server announces %d more bytes, TUF allows %d", ErrTooLong, resp.ContentLength, want.Length-p.offset), perm: true}
	}
	// What an earlier attempt wrote past its last hashed byte is dropped.
	if err := p.f.Truncate(p.offset); err != nil {
		return &DownloadError{URL: url, Err: classifyWrite(err), perm: true}
	}
	every := d.CheckpointBytes
	if every <= 0 {
		every = 64 << 20
	}
	interval := d.CheckpointInterval
	if interval == 0 {
		interval = time.Second
	}
	var w io.WriterAt = p.f
	if d.wrapFile != nil {
		w = d.wrapFile(w)
	}
	// A large download goes straight to the disk where the file system allows it.
	var (
		directFile *os.File
		direct     io.WriterAt
	)
	directMin := d.directMin
	if directMin <= 0 {
		directMin = directMinBytes
	}
	if !d.noDirect && want.Length-p.offset >= directMin {
		if directFile = openDirect(p.path); directFile != nil {
			direct = directFile
			if d.wrapFile != nil {
				direct = d.wrapFile(direct)
			}
		}
	}
	size := d.BufferSize
	if size <= 0 {
		size = 256 << 10
		if direct != nil {
			size = 1 << 20
		}
	}
	size = int(min(int64(size), every))
	pipe := newWritePipe(p.hs, w, p.f, direct, size, pipeBuffers)
	pipe.directFile, pipe.writeback, pipe.directBytes = directFile, !d.noWriteback, d.directBytes
	defer func() {
		// Every buffer handed over is written and hashed before this returns; a write
		// that failed is the error, whatever the reading did after it.
		if werr := pipe.close(); werr != nil {
			err = &DownloadError{URL: url, Err: werr, perm: true}
		}
	}()
	body := io.LimitReader(resp.Body, want.Length-p.offset+1) // one more byte reveals an over-long body
	last, lastAt := p.offset, time.Now()
	// The stall timer restarts only once minProgress bytes (or the rest of the target)
	// arrived since it last did: a server or mirror dripping a byte every 20 s held the
	// agent's round, and with it every check-in, for as long as it liked (7 hours for a
	// 1,318-byte target; found by an outside audit, 1 Dec). The slowest source kept is
	// minProgress per StallTimeout, 1 KiB/s by default.
	received, since := p.offset, int64(0)
	need := min(minProgress, want.Length-received)
	progress := func(m int) {
		received += int64(m)
		if since += int64(m); since >= need {
			timer.Reset(stall)
			since, need = 0, max(min(minProgress, want.Length-received), 1)
		}
	}
	for {
		c := pipe.get()
		if pipe.err != nil {
			pipe.unget(c)
			return &DownloadError{URL: url, Err: pipe.err, perm: true}
		}
		b := c.buf
		if r := p.offset % directAlign; direct != nil && r != 0 {
			// A resumed download starts mid-block: this buffer reaches the next
			// boundary, so that the following ones can go straight to the disk.
			b = b[:min(int64(len(b)), directAlign-r)]
		}
		n, rerr := fill(body, b, progress)
		if n > 0 {
			if p.offset+int64(n) > want.Length {
				pipe.unget(c)
				return &DownloadError{URL: url, Err: fmt.Errorf("%w (%d)", ErrTooLong, want.Length), perm: true}
			}
			pipe.put(c, n, p.offset)
			p.offset += int64(n)
			if p.offset-last >= every && (interval < 0 || time.Since(lastAt) >= interval) {
				if err := pipe.drain(); err != nil {
					return &DownloadError{URL: url, Err: err, perm: true}
				}
				if err := p.checkpoint(want); err != nil {
					return &DownloadError{URL: url, Err: classifyWrite(err), perm: true}
				}
				last, lastAt = p.offset, time.Now()
				crashpoint.Hit(&d.crash, "mid-download")
			}
		} else {
			pipe.unget(c)
		}
		if rerr == io.EOF {
			if p.offset < want.Length {
				return &DownloadError{URL: url, Err: fmt.Errorf("%w: %d of %d bytes", ErrTruncated, p.offset, want.Length)}
			}
			return nil
		}
		if rerr != nil {
			return &DownloadError{URL: url, Err: fmt.Errorf("%w at %d of %d bytes: %w", ErrTruncated, p.offset, want.Length, rerr)}
		}
	}
}

// pipeBuffers is how many buffers a download cycles: one being read into, one or
// more being written (a direct write waits for the disk), one being hashed.
const pipeBuffers = 4

// directMinBytes is the least a download must have left to write for its buffers to go
// straight to the disk; smaller ones (less than one default buffer) go through the page
// cache.
const directMinBytes = 1 << 20

// contentRangeStart parses "bytes START-END/TOTAL".
func contentRangeStart(h string) (int64, bool) {
	rest, ok := strings.CutPrefix(h, "bytes ")
	if !ok {
		return 0, false
	}
	first, _, ok := strings.Cut(rest, "-")
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(first, 10, 64)
	return n, err == nil
}

// sortedHashes returns the algorithm names of h in a stable order, sha256 first.
func sortedHashes(h map[string][]byte) []string {
	algs := make([]string, 0, len(h))
	for a := range h {
		algs = append(algs, a)
	}
	sort.Slice(algs, func(i, j int) bool {
		if (algs[i] == "sha256") != (algs[j] == "sha256") {
			return algs[i] == "sha256"
		}
		return algs[i] < algs[j]
	})
	return algs
}
