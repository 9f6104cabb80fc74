package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
)

// An offline bundle is a directory an operator drops on the device (e.g. from a USB
// stick) holding the repository as it is served:
//
//	<bundle>/metadata/   1.root.json … N.root.json, timestamp.json, N.snapshot.json, N.targets.json, …
//	<bundle>/targets/    the targets, hash-prefixed as the repository serves them
//	<bundle>/desired.json {"model": "models/iris/1.2.0.onnx", "runtime": "…"}, written last
//
// It is verified exactly like an online update, against the device's own trusted
// metadata: same pinned root, same rollback checks on metadata, same floor on versions.
const DesiredFile = "desired.json"

// ErrNotRegular: a file in an offline bundle is not a regular file inside it (a FIFO, a
// device, a directory, or a symlink to one, or a symlink leading out of the bundle).
// Such files are refused before anything is read: a FIFO would block the reader
// forever, a device or a procfs file could be read without end, and a file outside the
// bundle is none of its business.
var ErrNotRegular = errors.New("not a regular file inside the bundle")

// outside classifies an error of opening path in a bundle through os.Root: a path or
// symlink leading out of the bundle (os.Root's "path escapes from parent", or a loop) is
// ErrNotRegular; anything else (a file not there yet, too many open files, an I/O
// error) is as it is, and passes.
func outside(path string, err error) error {
	if errors.Is(err, syscall.ELOOP) || strings.Contains(err.Error(), "escapes") {
		return fmt.Errorf("%s: %w: %w", path, ErrNotRegular, err)
	}
	return err
}

// bundleTransport serves file:// URLs from an offline bundle's directory: GET (and
// HEAD) of a regular file inside it (openRegular: nothing outside the directory, not
// through a symlink either; nothing that would block on opening), from an offset with
// "Range: bytes=N-" as the downloader resumes. How much of a file is read is bounded by
// its size when opened and by the reader (TUF's metadata limits, the downloader's target
// length). Unlike http.NewFileTransport, a request ends with its context (the
// downloader's stall timer, shutdown), and the body is never read ahead to sniff its
// type: a target symlinked to /proc/kmsg hung the agent's round in that sniffing read,
// past the stall timer and SIGTERM (found by an outside audit, 1 Dec).
type bundleTransport struct{ root string }

func (b bundleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	answer := func(code int, body string) *http.Response {
		return &http.Response{StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: req}
	}
	if req.Body != nil {
		req.Body.Close()
	}
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		return answer(http.StatusMethodNotAllowed, "GET only"), nil
	}
	if err := req.Context().Err(); err != nil {
		return nil, err
	}
	name := strings.TrimPrefix(path.Clean("/"+req.URL.Path), "/")
	if name == "" {
		return answer(http.StatusNotFound, "not a file"), nil
	}
	f, fi, err := openRegular(b.root, filepath.FromSlash(name))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return answer(http.StatusNotFound, "no such file in the bundle"), nil
	case errors.Is(err, ErrNotRegular):
		// A file that is not regular, or that leads out of the bundle: refused, as a
		// file server refuses what it may not serve.
		return answer(http.StatusForbidden, err.Error()), nil
	case err != nil:
		// Too many open files, an I/O error: passing, as a server's 500 (the downloader
		// keeps what it has and retries).
		return answer(http.StatusInternalServerError, err.Error()), nil
	}
	size, from := fi.Size(), int64(0)
	h := http.Header{"Content-Type": {"application/octet-stream"}, "Accept-Ranges": {"bytes"}}
	code := http.StatusOK
	if rng := req.Header.Get("Range"); rng != "" {
		var n int64
		if _, err := fmt.Sscanf(rng, "bytes=%d-", &n); err == nil && fmt.Sprintf("bytes=%d-", n) == rng && n >= 0 {
			if n >= size && size > 0 || n > size {
				f.Close()
				r := answer(http.StatusRequestedRangeNotSatisfiable, "range not satisfiable")
				r.Header.Set("Content-Range", fmt.Sprintf("bytes */%d", size))
				return r, nil
			}
			if n > 0 {
				if _, err := f.Seek(n, io.SeekStart); err != nil {
					f.Close()
					return nil, err
				}
				from, code = n, http.StatusPartialContent
				h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", n, size-1, size))
			}
		} // any other range: the whole file, as a server may answer
	}
	h.Set("Content-Length", strconv.FormatInt(size-from, 10))
	var body io.ReadCloser = &bundleBody{ctx: req.Context(), f: f, left: size - from}
	if req.Method == http.MethodHead {
		f.Close()
		body = http.NoBody
	}
	return &http.Response{StatusCode: code, Status: fmt.Sprintf("%d %s", code, http.StatusText(code)), Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: h, Body: body, ContentLength: size - from, Request: req}, nil
}

// bundleBody reads at most left bytes of f, and nothing once ctx has ended.
type bundleBody struct {
	ctx  context.Context
	f    *os.File
	left int64
}

func (b *bundleBody) Read(p []byte) (int, error) {
	if err := b.ctx.Err(); err != nil {
		return 0, err
	}
	if b.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.f.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *bundleBody) Close() error { return b.f.Close() }

// fileClient is an HTTP client that also reads file:// URLs (with Range support), from
// the bundle directory root only and regular files only (bundleTransport).
func fileClient(root string) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.RegisterProtocol("file", bundleTransport{root: root})
	return &http.Client{Transport: t}
}

// BundleTUF returns a TUF client reading the bundle in dir, sharing the device's trusted
// metadata in metadataDir.
func BundleTUF(metadataDir, dir string, dl Downloader) (*TUF, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := fileClient(abs)
	dl.Client = c
	base := url.URL{Scheme: "file", Path: "/"}
	return NewTUF(TUFConfig{MetadataDir: metadataDir, MetadataURL: base.JoinPath("metadata").String(),
		TargetsURL: base.JoinPath("targets").String(), HTTPClient: c, Downloader: &dl})
}

// readOpened reads f, opened from path, if it is a regular file of at most limit bytes,
// and no more than its size when opened.
func readOpened(path string, f *os.File, limit int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%s: %d bytes, more than the %d allowed", path, fi.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, fi.Size()))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return b, nil
}

// maxDesiredBytes bounds a bundle's desired.json.
const maxDesiredBytes = 64 << 10

// ReadDesired reads a bundle's desired.json. It refuses anything but a regular file of at
// most maxDesiredBytes, without blocking on it (a FIFO) and before reading it.
func ReadDesired(dir string) (map[artifact.Kind]string, error) {
	f, fi, err := openRegular(dir, DesiredFile)
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	defer f.Close()
	if fi.Size() > maxDesiredBytes {
		return nil, fmt.Errorf("bundle %s: %s larger than %d bytes (%d)", dir, DesiredFile, maxDesiredBytes, fi.Size())
	}
	// No more than the file's size when opened: a file that says 0 bytes and reads
	// without end (procfs) is read as empty.
	return decodeDesired(dir, io.LimitReader(f, fi.Size()))
}

// decodeDesired decodes the desired.json of the bundle in dir from r. The bundle comes
// from whoever handed over the USB stick: the read is bounded before anything is parsed.
func decodeDesired(dir string, r io.Reader) (map[artifact.Kind]string, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxDesiredBytes+1))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %s: %w", dir, DesiredFile, err)
	}
	if len(b) > maxDesiredBytes {
		return nil, fmt.Errorf("bundle %s: %s larger than %d bytes", dir, DesiredFile, maxDesiredBytes)
	}
	var raw map[string]string
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("bundle %s: %s: %w", dir, DesiredFile, err)
	}
	out := map[artifact.Kind]string{}
	for k, p := range raw {
		kind, err := artifact.ParseSlotKind(k)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: %w", dir, err)
		}
		out[kind] = p
	}
	return out, nil
}

// InstallBundle installs what a bundle's desired.json names, verified through the
// bundle's metadata against the device's trusted metadata.
//
// desired.json is read before the agent lock is taken; every later read from the bundle
// (metadata, targets) opens regular files only and never blocks on opening, so a hostile
// bundle cannot hold the lock the online loop (Step) needs.
func (a *Agent) InstallBundle(ctx context.Context, dir string) error {
	desired, err := ReadDesired(dir)
	if err != nil {
		return err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	tuf, err := BundleTUF(a.cfg.TUF.cfg.MetadataDir, dir, Downloader{Logger: a.cfg.Logger})
	if err != nil {
		return err
	}
	if err := tuf.Refresh(ctx); err != nil {
		return fmt.Errorf("bundle %s: %w", dir, err)
	}
	var errs []error
	for _, k := range sortedKinds(desired) {
		if err := a.installWith(ctx, tuf, k, wire.SlotDecision{Kind: k, Action: wire.ActionInstall, Target: desired[k]}); err != nil {
			errs = append(errs, fmt.Errorf("bundle %s: %w", dir, err))
		}
	}
	return errors.Join(errs...)
}

func sortedKinds(m map[artifact.Kind]string) []artifact.Kind {
	ks := make([]artifact.Kind, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Slice(ks, func(i, j int) bool { return ks[i] < ks[j] })
	return ks
}

// maxBundles bounds the bundle directories not yet done that WatchBundles considers
// (and watches), the first ones by name.
const maxBundles = 64

// bundleSettle is how long WatchBundles lets events settle before it scans.
const bundleSettle = 100 * time.Millisecond

// WatchBundles installs every bundle that appears under dir (a subdirectory with a
// desired.json), once per desired.json version, until ctx ends. Bundles already there
// when it starts are installed first. Errors are logged; the watch goes on. A bundle
// whose install failed for a passing reason (another install's trial under way, a full
// disk, files still being copied in) is tried again after a backoff, as the online loop
// does, rather than only when its desired.json changes. At most maxBundles directories
// are considered, and a burst of events makes one scan.
func (a *Agent) WatchBundles(ctx context.Context, dir string, done func(bundle string, err error)) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	defer w.Close()
	if err := w.Add(dir); err != nil {
		return fmt.Errorf("watch %s: %w", dir, err)
	}
	type later struct {
		stamp    string
		attempts int
		at       time.Time
	}
	seen := map[string]string{} // bundle dir → desired.json mod time and size, once done
	again := map[string]later{} // bundle dir → when to try its desired.json again
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	// Events are coalesced: a scan runs once they pause for bundleSettle. A scan per
	// event made 2,000 directories created at once cost 36 s of CPU (each scan reads
	// them all: quadratic; found by an outside audit, 1 Dec).
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	settling := false
	scan := func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			a.cfg.Logger.Warn("scan bundles", "dir", dir, "err", err)
			return
		}
		now := a.cfg.Now()
		pending := 0
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			b := filepath.Join(dir, e.Name())
			// Watched before desired.json is looked for, so that one arriving after the
			// look is seen; at every scan (it is idempotent), since a directory removed
			// and made again under the same name has lost its watch.
			_ = w.Add(b)
			fi, err := os.Stat(filepath.Join(b, DesiredFile))
			stamp := ""
			if err == nil {
				stamp = fi.ModTime().String() + fmt.Sprint(fi.Size())
			}
			if stamp != "" && seen[b] == stamp {
				continue // done: not counted
			}
			if pending++; pending > maxBundles {
				// Each holds an inotify watch, from a budget the whole system shares.
				_ = w.Remove(b)
				a.cfg.Logger.Warn("too many bundle directories pending: only the first ones by name are considered", "dir", dir, "max", maxBundles)
				break
			}
			if stamp == "" {
				continue
			}
			l, retrying := again[b]
			if retrying && l.stamp == stamp && now.Before(l.at) {
				continue
			}
			if !retrying || l.stamp != stamp {
				l = later{stamp: stamp}
			}
			err = a.InstallBundle(ctx, b)
			a.cfg.Logger.Info("offline bundle", "bundle", b, "err", err)
			if err != nil && ctx.Err() == nil && (errors.Is(err, rollback.ErrBusy) || Transient(err)) {
				l.attempts++
				l.at = now.Add(a.retryBackoff(l.attempts))
				again[b] = l
			} else {
				seen[b] = stamp
				delete(again, b)
			}
			if done != nil {
				done(b, err)
			}
		}
		// Wake for the earliest retry.
		var next time.Time
		for _, l := range again {
			if next.IsZero() || l.at.Before(next) {
				next = l.at
			}
		}
		timer.Stop()
		if !next.IsZero() {
			timer.Reset(max(next.Sub(a.cfg.Now()), time.Millisecond))
		}
	}
	scan()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-timer.C:
			scan()
		case <-settle.C:
			settling = false
			scan()
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("bundle watcher closed")
			}
			if ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Rename) != 0 && !settling {
				settling = true
				settle.Reset(bundleSettle)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("bundle watcher closed")
			}
			a.cfg.Logger.Warn("bundle watcher", "err", err)
		}
	}
}
