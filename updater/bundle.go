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

// ErrNotRegular: a file in an offline bundle is not a regular file (a FIFO, a device, a
// directory, or a symlink to one). Such files are refused before anything is read: a
// FIFO would block the reader forever, a device could be read without end.
var ErrNotRegular = errors.New("not a regular file")

// bundleFS serves the files under an offline bundle's directory to the file:// transport.
// It opens regular files only, without blocking (openRegular); how much of a file is read
// is bounded by the reader (TUF's metadata limits, the downloader's target length).
type bundleFS struct{ root string }

func (b bundleFS) Open(name string) (http.File, error) {
	p := filepath.Join(b.root, filepath.FromSlash(path.Clean("/"+name)))
	f, _, err := openRegular(p)
	if errors.Is(err, ErrNotRegular) {
		// http.FileServer answers 403 to a permission error: a permanent refusal,
		// not a transient one the downloader would retry.
		return nil, fmt.Errorf("%w: %w", err, fs.ErrPermission)
	}
	if err != nil {
		return nil, err
	}
	return f, nil
}

// fileClient is an HTTP client that also reads file:// URLs (with Range support), from
// the bundle directory root only and regular files only.
func fileClient(root string) *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.RegisterProtocol("file", http.NewFileTransport(bundleFS{root: root}))
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

// maxDesiredBytes bounds a bundle's desired.json.
const maxDesiredBytes = 64 << 10

// ReadDesired reads a bundle's desired.json. It refuses anything but a regular file of at
// most maxDesiredBytes, without blocking on it (a FIFO) and before reading it.
func ReadDesired(dir string) (map[artifact.Kind]string, error) {
	f, fi, err := openRegular(filepath.Join(dir, DesiredFile))
	if err != nil {
		return nil, fmt.Errorf("bundle %s: %w", dir, err)
	}
	defer f.Close()
	if fi.Size() > maxDesiredBytes {
		return nil, fmt.Errorf("bundle %s: %s larger than %d bytes (%d)", dir, DesiredFile, maxDesiredBytes, fi.Size())
	}
	return decodeDesired(dir, f)
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

// WatchBundles installs every bundle that appears under dir (a subdirectory with a
// desired.json), once per desired.json version, until ctx ends. Bundles already there
// when it starts are installed first. Errors are logged; the watch goes on. A bundle
// whose install failed for a passing reason (another install's trial under way, a full
// disk, files still being copied in) is tried again after a backoff, as the online loop
// does, rather than only when its desired.json changes.
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
	scan := func() {
		entries, err := os.ReadDir(dir)
		if err != nil {
			a.cfg.Logger.Warn("scan bundles", "dir", dir, "err", err)
			return
		}
		now := a.cfg.Now()
		for _, e := range entries {
			if !e.IsDir() {
				continue
			}
			b := filepath.Join(dir, e.Name())
			_ = w.Add(b) // to see desired.json arrive
			fi, err := os.Stat(filepath.Join(b, DesiredFile))
			if err != nil {
				continue
			}
			stamp := fi.ModTime().String() + fmt.Sprint(fi.Size())
			if seen[b] == stamp {
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
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("bundle watcher closed")
			}
			if ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Rename) != 0 {
				scan()
			}
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("bundle watcher closed")
			}
			a.cfg.Logger.Warn("bundle watcher", "err", err)
		}
	}
}
