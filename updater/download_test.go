package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/rollback"
)

// origin serves one target and can misbehave in the ways real servers and networks do.
type origin struct {
	content []byte
	mu      sync.Mutex
	// cutAt[i], if > 0, aborts the i-th request's body after that many bytes (of the response).
	cutAt       []int
	ignoreRange bool
	extra       []byte // appended to the body
	noLength    bool   // no Content-Length (chunked)
	status      int    // if set, every request gets this status
	requests    []string
}

func (o *origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	o.mu.Lock()
	i := len(o.requests)
	o.requests = append(o.requests, r.Header.Get("Range"))
	o.mu.Unlock()
	if o.status != 0 {
		w.WriteHeader(o.status)
		return
	}
	var out io.Writer = w
	if i < len(o.cutAt) && o.cutAt[i] > 0 {
		out = &cutWriter{w: w, left: o.cutAt[i]}
	}
	if o.ignoreRange || len(o.extra) > 0 || o.noLength {
		body := append(append([]byte{}, o.content...), o.extra...)
		if !o.noLength {
			w.Header().Set("Content-Length", fmt.Sprint(len(body)))
		}
		w.WriteHeader(http.StatusOK)
		if o.noLength {
			w.(http.Flusher).Flush()
		}
		out.Write(body)
		return
	}
	http.ServeContent(&rw{ResponseWriter: w, out: out}, r, "t", time.Time{}, bytes.NewReader(o.content))
}

type rw struct {
	http.ResponseWriter
	out io.Writer
}

func (r *rw) Write(b []byte) (int, error) { return r.out.Write(b) }

// cutWriter writes left bytes, then aborts the connection.
type cutWriter struct {
	w    http.ResponseWriter
	left int
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if len(b) > c.left {
		c.w.Write(b[:c.left])
		c.w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler)
	}
	c.left -= len(b)
	return c.w.Write(b)
}

func wantOf(b []byte) Want {
	s := sha256.Sum256(b)
	return Want{Length: int64(len(b)), Hashes: map[string][]byte{"sha256": s[:]}}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{1})
	r.Read(b)
	return b
}

// testDownloader never sleeps; it records the waits.
func testDownloader(waits *[]time.Duration) *Downloader {
	return &Downloader{
		CheckpointBytes:    4 << 10,
		CheckpointInterval: -1,
		BufferSize:         1 << 10,
		Rand:               func() float64 { return 0 },
		Sleep: func(_ context.Context, d time.Duration) error {
			if waits != nil {
				*waits = append(*waits, d)
			}
			return nil
		},
	}
}

func leftovers(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

func TestDownloadResumesAfterCut(t *testing.T) {
	content := randomBytes(256 << 10)
	for _, pct := range []int{10, 50, 90} {
		t.Run(fmt.Sprintf("%d%%", pct), func(t *testing.T) {
			cut := len(content) * pct / 100
			o := &origin{content: content, cutAt: []int{cut}}
			srv := httptest.NewServer(o)
			defer srv.Close()
			dir := t.TempDir()
			dst := filepath.Join(dir, "payload")
			if err := testDownloader(nil).Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
				t.Fatalf("Download = %v", err)
			}
			got, _ := os.ReadFile(dst)
			if !bytes.Equal(got, content) {
				t.Fatalf("payload differs from the target")
			}
			if len(o.requests) != 2 || o.requests[0] != "" {
				t.Fatalf("requests = %q; want a full request then a resume", o.requests)
			}
			var from int
			if _, err := fmt.Sscanf(o.requests[1], "bytes=%d-", &from); err != nil || from <= 0 || from > cut {
				t.Errorf("resume request Range %q; want bytes=N- with 0 < N <= %d", o.requests[1], cut)
			}
			if l := leftovers(t, dir); len(l) != 1 {
				t.Errorf("files left in the slot: %v; want only payload", l)
			}
		})
	}
}

// TestDownloadResumesAcrossRestart stops the first "agent" after one failed attempt and
// resumes with a new Downloader from the checkpoint on disk.
func TestDownloadResumesAcrossRestart(t *testing.T) {
	content := randomBytes(100 << 10)
	o := &origin{content: content, cutAt: []int{60 << 10}}
	srv := httptest.NewServer(o)
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "payload")
	first := testDownloader(nil)
	first.Retry.Attempts = 1
	err := first.Download(context.Background(), srv.URL, wantOf(content), dst)
	if !errors.Is(err, ErrTruncated) || rollback.IsPermanent(err) {
		t.Fatalf("first Download = %v; want a transient ErrTruncated", err)
	}
	if _, err := os.Stat(dst + ".part.state"); err != nil {
		t.Fatalf("no checkpoint after the cut: %v", err)
	}
	if err := testDownloader(nil).Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
		t.Fatalf("second Download = %v", err)
	}
	if !strings.HasPrefix(o.requests[1], "bytes=") {
		t.Errorf("second agent did not resume: Range %q", o.requests[1])
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("resumed payload differs from the target")
	}
}

func TestDownloadServerIgnoresRange(t *testing.T) {
	content := randomBytes(64 << 10)
	o := &origin{content: content, cutAt: []int{30 << 10}, ignoreRange: true}
	srv := httptest.NewServer(o)
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "payload")
	if err := testDownloader(nil).Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
		t.Fatalf("Download = %v", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("payload after a restarted download differs from the target")
	}
	if len(o.requests) != 2 || o.requests[1] == "" {
		t.Errorf("requests = %q; want a resume attempt answered with 200", o.requests)
	}
}

func TestDownloadRejects(t *testing.T) {
	content := randomBytes(32 << 10)
	wrong := randomBytes(32 << 10)
	wrong[0] ^= 1
	for _, tc := range []struct {
		name     string
		o        *origin
		want     Want
		err      error
		requests int
	}{
		{"extra bytes with length", &origin{content: content, extra: []byte("evil")}, wantOf(content), ErrTooLong, 1},
		{"extra bytes chunked", &origin{content: content, extra: []byte("evil"), noLength: true}, wantOf(content), ErrTooLong, 1},
		{"wrong hash", &origin{content: wrong}, wantOf(content), ErrHashMismatch, 1},
		{"shorter than TUF says", &origin{content: content[:1000]}, wantOf(content), ErrTruncated, 3},
		{"no supported hash", &origin{content: content}, Want{Length: 1, Hashes: map[string][]byte{"md5": {1}}}, ErrNoHash, 0},
		{"one unsupported hash", &origin{content: content}, Want{Length: wantOf(content).Length, Hashes: map[string][]byte{"sha256": wantOf(content).Hashes["sha256"], "blake2b": {1}}}, ErrNoHash, 0},
		{"no hash", &origin{content: content}, Want{Length: 1}, ErrNoHash, 0},
		{"not found", &origin{status: http.StatusNotFound}, wantOf(content), nil, 1},
		{"server error", &origin{status: http.StatusBadGateway}, wantOf(content), nil, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(tc.o)
			defer srv.Close()
			dir := t.TempDir()
			dst := filepath.Join(dir, "payload")
			var waits []time.Duration
			d := testDownloader(&waits)
			d.Retry.Attempts = 3
			d.NoResume = true
			err := d.Download(context.Background(), srv.URL, tc.want, dst)
			if err == nil || (tc.err != nil && !errors.Is(err, tc.err)) {
				t.Fatalf("Download = %v; want %v", err, tc.err)
			}
			if len(tc.o.requests) != tc.requests {
				t.Errorf("%d requests; want %d", len(tc.o.requests), tc.requests)
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Errorf("files left behind: %v", l)
			}
		})
	}
}

func TestDownloadBackoff(t *testing.T) {
	o := &origin{status: http.StatusServiceUnavailable}
	srv := httptest.NewServer(o)
	defer srv.Close()
	var waits []time.Duration
	d := testDownloader(&waits)
	d.Retry = Backoff{Attempts: 6, Base: time.Second, Max: 10 * time.Second}
	d.Rand = func() float64 { return 0.5 }
	err := d.Download(context.Background(), srv.URL, wantOf([]byte("x")), filepath.Join(t.TempDir(), "p"))
	var de *DownloadError
	if !errors.As(err, &de) || de.Status != http.StatusServiceUnavailable || de.Permanent() {
		t.Fatalf("Download = %v; want a transient 503", err)
	}
	// d = 1s, 2s, 4s, 8s, 10s; wait = d/2 + 0.5·d/2.
	want := []time.Duration{750 * time.Millisecond, 1500 * time.Millisecond, 3 * time.Second, 6 * time.Second, 7500 * time.Millisecond}
	if fmt.Sprint(waits) != fmt.Sprint(want) {
		t.Errorf("waits = %v; want %v", waits, want)
	}
}

// fullDisk fails every write after *room bytes with ENOSPC, like a full file system.
type fullDisk struct {
	w    io.WriterAt
	room *int
}

func (f *fullDisk) WriteAt(b []byte, off int64) (int, error) {
	if len(b) > *f.room {
		n, _ := f.w.WriteAt(b[:*f.room], off)
		*f.room = 0
		return n, &os.PathError{Op: "write", Path: "payload.part", Err: syscall.ENOSPC}
	}
	*f.room -= len(b)
	return f.w.WriteAt(b, off)
}

// TestDownloadDiskFull: a write that finds the disk full fails the download at once,
// through the page cache and straight to the disk alike, and leaves nothing behind.
func TestDownloadDiskFull(t *testing.T) {
	content := randomBytes(64 << 10)
	for _, direct := range []bool{false, true} {
		t.Run(fmt.Sprintf("direct=%v", direct), func(t *testing.T) {
			o := &origin{content: content}
			srv := httptest.NewServer(o)
			defer srv.Close()
			dir := t.TempDir()
			d := testDownloader(nil)
			room := 10 << 10
			d.wrapFile = func(w io.WriterAt) io.WriterAt { return &fullDisk{w: w, room: &room} }
			if direct {
				requireDirect(t, dir)
				d.BufferSize, d.directMin, d.directBytes = 4<<10, 1, new(atomic.Int64)
			}
			err := d.Download(context.Background(), srv.URL, wantOf(content), filepath.Join(dir, "payload"))
			if !errors.Is(err, ErrDiskFull) || !rollback.IsPermanent(err) {
				t.Fatalf("Download = %v; want a permanent ErrDiskFull", err)
			}
			if len(o.requests) != 1 {
				t.Errorf("%d requests; a full disk must not be retried", len(o.requests))
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Errorf("files left behind: %v", l)
			}
			if direct && d.directBytes.Load() == 0 {
				t.Errorf("no byte was written straight to the disk")
			}
		})
	}
}

func TestDownloadCorruptCheckpoint(t *testing.T) {
	content := randomBytes(16 << 10)
	o := &origin{content: content}
	srv := httptest.NewServer(o)
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "payload")
	os.WriteFile(dst+".part", content[:8<<10], 0o600)
	for _, state := range []string{`{"length":`, `{"length":16384,"hashes":{"sha256":"00"},"offset":8192,"state":{}}`} {
		os.WriteFile(dst+".part.state", []byte(state), 0o600)
		o.requests = nil
		if err := testDownloader(nil).Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
			t.Fatalf("Download with checkpoint %q = %v", state, err)
		}
		if o.requests[0] != "" {
			t.Errorf("checkpoint %q: resumed with Range %q; want a clean start", state, o.requests[0])
		}
		os.Remove(dst)
	}
}

// TestDownloadStall resumes a download whose server stops sending mid-body.
func TestDownloadStall(t *testing.T) {
	content := randomBytes(64 << 10)
	release := make(chan struct{})
	defer close(release)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.Header().Set("Content-Length", fmt.Sprint(len(content)))
			w.Write(content[:20<<10])
			w.(http.Flusher).Flush()
			select { // hang, as a dead link does
			case <-release:
			case <-r.Context().Done():
			}
			return
		}
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(content))
	}))
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "payload")
	d := testDownloader(nil)
	// Long enough that a healthy transfer on a loaded machine never trips it (the stalled
	// request hangs until the client gives up, so the test still waits exactly this once).
	d.StallTimeout = time.Second
	var waits []time.Duration
	d.Sleep = func(_ context.Context, w time.Duration) error { waits = append(waits, w); return nil }
	if err := d.Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
		t.Fatalf("Download = %v", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("payload after a stall differs")
	}
	if calls.Load() != 2 || len(waits) != 1 {
		t.Errorf("%d requests, %d retries; want one stalled request and one resume", calls.Load(), len(waits))
	}
}

// TestDownloadUntrustedServer: a target on an https server whose certificate chains to
// no trusted root fails at once (retrying cannot help within the round) with an error
// naming the fix, which does not blame the version (Transient, not Permanent); a client
// trusting the server's CA downloads it.
func TestDownloadUntrustedServer(t *testing.T) {
	content := bytes.Repeat([]byte("edgeward"), 1<<10)
	srv := httptest.NewTLSServer(&origin{content: content})
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "target")
	sleeps := 0
	d := &Downloader{Sleep: func(context.Context, time.Duration) error { sleeps++; return nil }}
	err := d.Download(context.Background(), srv.URL+"/t", wantOf(content), dst)
	var de *DownloadError
	if !errors.As(err, &de) || de.Permanent() || !errors.Is(err, ErrUntrustedServer) || !strings.Contains(err.Error(), "--server-ca") {
		t.Fatalf("Download(untrusted https) = %v; want a DownloadError wrapping ErrUntrustedServer naming --server-ca, not permanent", err)
	}
	if sleeps != 0 {
		t.Errorf("Download(untrusted https) retried %d times; want 0", sleeps)
	}
	if !Transient(err) {
		t.Errorf("Transient(%v) = false; want true (the version is not at fault)", err)
	}

	d.Client = srv.Client() // trusts the server's certificate
	if err := d.Download(context.Background(), srv.URL+"/t", wantOf(content), dst); err != nil {
		t.Fatalf("Download(https, CA trusted) = %v; want nil", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Errorf("downloaded %d bytes; want the %d of the target", len(got), len(content))
	}
}

// TestDownloadProvesOnlyWhatItHashed: download returns the file's identity (its proof for
// the slots) only when the call hashed every byte itself: a fresh download, one resumed
// within the call after a cut, a file already complete (hashed again), a restart the
// server answered from the start. A download resumed from a checkpoint written by an
// earlier process gives none, so the slot reads the file again.
func TestDownloadProvesOnlyWhatItHashed(t *testing.T) {
	content := randomBytes(100 << 10)
	for _, tc := range []struct {
		name        string
		o           *origin
		earlier     bool // an earlier process got 60 KiB and left its checkpoint
		complete    bool // dst already holds the target
		wantProof   bool
		wantRequest int
	}{
		{name: "fresh", o: &origin{}, wantProof: true, wantRequest: 1},
		{name: "cut and resumed in the call", o: &origin{cutAt: []int{60 << 10}}, wantProof: true, wantRequest: 2},
		{name: "resumed from an earlier process", o: &origin{}, earlier: true, wantProof: false, wantRequest: 1},
		{name: "earlier process, server ignores Range", o: &origin{ignoreRange: true}, earlier: true, wantProof: true, wantRequest: 1},
		{name: "already complete", o: &origin{}, complete: true, wantProof: true, wantRequest: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.content = content
			srv := httptest.NewServer(tc.o)
			defer srv.Close()
			dst := filepath.Join(t.TempDir(), "payload")
			ctx := context.Background()
			if tc.earlier {
				first := testDownloader(nil)
				first.Retry.Attempts = 1
				tc.o.cutAt = append([]int{60 << 10}, tc.o.cutAt...)
				if err := first.Download(ctx, srv.URL, wantOf(content), dst); !errors.Is(err, ErrTruncated) {
					t.Fatalf("first Download = %v; want ErrTruncated", err)
				}
			}
			if tc.complete {
				os.WriteFile(dst, content, 0o600)
			}
			before := len(tc.o.requests)
			fi, err := testDownloader(nil).download(ctx, srv.URL, wantOf(content), dst)
			if err != nil {
				t.Fatalf("download = %v", err)
			}
			if got := tc.o.requests[before:]; len(got) != tc.wantRequest {
				t.Errorf("requests = %q; want %d", got, tc.wantRequest)
			}
			if (fi != nil) != tc.wantProof {
				t.Fatalf("download returned file info %v; want a proof: %v", fi, tc.wantProof)
			}
			if fi == nil {
				return
			}
			now, err := os.Stat(dst)
			if err != nil || !os.SameFile(fi, now) || !fi.ModTime().Equal(now.ModTime()) || fi.Size() != int64(len(content)) {
				t.Errorf("proof %v does not name the payload %v (%v)", fi, now, err)
			}
		})
	}
}

// requireDirect skips the test where dir's file system takes no direct writes.
func requireDirect(t *testing.T, dir string) {
	t.Helper()
	probe := filepath.Join(dir, "direct-probe")
	if err := os.WriteFile(probe, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(probe)
	f := openDirect(probe)
	if f == nil {
		t.Skipf("%s takes no direct writes (O_DIRECT) on this platform or file system", dir)
	}
	f.Close()
}

// TestDownloadDirect: a download written straight to the disk holds exactly the target,
// also when it is cut mid-block and resumed, within the call or by a later process from
// its checkpoint, and with a last block that is not whole. After a resume mid-block it
// goes back to direct writes from the next block boundary.
func TestDownloadDirect(t *testing.T) {
	content := randomBytes(200<<10 + 123)
	const cut = 50<<10 + 7 // not on a block boundary
	for _, earlier := range []bool{false, true} {
		t.Run(fmt.Sprintf("earlier process=%v", earlier), func(t *testing.T) {
			dir := t.TempDir()
			requireDirect(t, dir)
			o := &origin{content: content, cutAt: []int{cut}}
			srv := httptest.NewServer(o)
			defer srv.Close()
			dst := filepath.Join(dir, "payload")
			newDownloader := func() *Downloader {
				d := testDownloader(nil)
				d.BufferSize, d.CheckpointBytes, d.directMin, d.directBytes = 16<<10, 32<<10, 1, new(atomic.Int64)
				return d
			}
			ctx := context.Background()
			if earlier {
				first := newDownloader()
				first.Retry.Attempts = 1
				if err := first.Download(ctx, srv.URL, wantOf(content), dst); !errors.Is(err, ErrTruncated) {
					t.Fatalf("first Download = %v; want ErrTruncated", err)
				}
			}
			d := newDownloader()
			if err := d.Download(ctx, srv.URL, wantOf(content), dst); err != nil {
				t.Fatalf("Download = %v", err)
			}
			got, err := os.ReadFile(dst)
			if err != nil || !bytes.Equal(got, content) {
				t.Fatalf("payload: %d bytes (%v), equal %v; want the %d bytes of the target", len(got), err, bytes.Equal(got, content), len(content))
			}
			if want := []string{"", fmt.Sprintf("bytes=%d-", cut)}; fmt.Sprint(o.requests) != fmt.Sprint(want) {
				t.Errorf("requests %q; want %q", o.requests, want)
			}
			// All but the block after the cut, the last block and one buffer of slack.
			if n, least := d.directBytes.Load(), int64(len(content)-cut-(32<<10)); n < least {
				t.Errorf("%d bytes written straight to the disk after the resume; want at least %d", n, least)
			}
			if l := leftovers(t, dir); len(l) != 1 {
				t.Errorf("files left: %v; want only the payload", l)
			}
		})
	}
}

// TestDownloadStallIsNamed: a download that stalls mid-body on every attempt ends with
// an error that names the stall ("under 65536 bytes received in …"), not a truncated body.
func TestDownloadStallIsNamed(t *testing.T) {
	content := randomBytes(64 << 10)
	release := make(chan struct{})
	defer close(release)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		w.Write(content[:20<<10])
		w.(http.Flusher).Flush()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer srv.Close()
	d := testDownloader(nil)
	d.StallTimeout = 200 * time.Millisecond
	d.Retry.Attempts = 1
	err := d.Download(context.Background(), srv.URL, wantOf(content), filepath.Join(t.TempDir(), "payload"))
	if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "under 65536 bytes received in 200ms") || strings.Contains(err.Error(), "shorter") {
		t.Fatalf("Download of a stalled body = %v; want the stall named", err)
	}
}

// TestDownloadDripIsAStall: a server that drips a byte every 20 ms (it would take 80 s
// for this 4 KiB target, months for a model) is stalled after StallTimeout, as one that
// sends nothing: fewer than 64 KiB, or the rest of the target, arrived in it. Before, any
// byte restarted the stall timer, and a mirror dripping a byte every 20 s held the
// agent's round, and every check-in, for as long as it liked (found by an outside
// audit, 1 Dec). A source that keeps the minimum rate is not stalled.
func TestDownloadDripIsAStall(t *testing.T) {
	drip := func(content []byte, every time.Duration, chunk int) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", fmt.Sprint(len(content)))
			for i := 0; i < len(content); i += chunk {
				if _, err := w.Write(content[i:min(i+chunk, len(content))]); err != nil {
					return
				}
				w.(http.Flusher).Flush()
				select {
				case <-time.After(every):
				case <-r.Context().Done():
					return
				}
			}
		}
	}
	content := randomBytes(4 << 10)
	srv := httptest.NewServer(drip(content, 20*time.Millisecond, 1))
	defer srv.Close()
	d := testDownloader(nil)
	d.StallTimeout = 500 * time.Millisecond
	d.Retry.Attempts = 1
	start := time.Now()
	err := d.Download(context.Background(), srv.URL, wantOf(content), filepath.Join(t.TempDir(), "payload"))
	if !errors.Is(err, ErrStalled) {
		t.Fatalf("Download from a dripping server = %v; want ErrStalled", err)
	}
	if took := time.Since(start); took > 20*time.Second {
		t.Errorf("the dripping download was given up after %v; want about StallTimeout", took)
	}
	// 32 KiB every 100 ms: ten times the 64 KiB needed in each StallTimeout of 2 s (so a
	// loaded machine does not trip it), over several of them.
	big := randomBytes(1 << 20)
	steady := httptest.NewServer(drip(big, 100*time.Millisecond, 32<<10))
	defer steady.Close()
	d.StallTimeout = 2 * time.Second
	dst := filepath.Join(t.TempDir(), "steady")
	if err := d.Download(context.Background(), steady.URL, wantOf(big), dst); err != nil {
		t.Fatalf("Download from a slow but steady server = %v", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, big) {
		t.Error("the slow download's payload differs")
	}
}

// TestDownloadThatProgressesIsNotGivenUp: a server that cuts every response after
// 100 KB still delivers a 1 MiB target to a downloader allowed 3 attempts: an attempt
// that moved the download forward does not count (a manual install used to stop at 6
// attempts, part way, on a link cut every few MB).
func TestDownloadThatProgressesIsNotGivenUp(t *testing.T) {
	content := randomBytes(1 << 20)
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var from int
		if rng := r.Header.Get("Range"); rng != "" {
			fmt.Sscanf(rng, "bytes=%d-", &from)
			w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", from, len(content)-1, len(content)))
			w.Header().Set("Content-Length", fmt.Sprint(len(content)-from))
			w.WriteHeader(http.StatusPartialContent)
		} else {
			w.Header().Set("Content-Length", fmt.Sprint(len(content)))
		}
		w.Write(content[from:min(from+100<<10, len(content))]) // then the handler returns: the body is cut
	}))
	defer srv.Close()
	dst := filepath.Join(t.TempDir(), "payload")
	d := testDownloader(nil)
	d.Retry.Attempts = 3
	d.Sleep = func(context.Context, time.Duration) error { return nil }
	if err := d.Download(context.Background(), srv.URL, wantOf(content), dst); err != nil {
		t.Fatalf("Download over a link cut every 100 KB = %v (after %d requests)", err, calls.Load())
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, content) {
		t.Fatal("payload differs")
	}
	if n := calls.Load(); n < 10 {
		t.Errorf("%d requests; want about 11 (100 KB each)", n)
	}
}
