package policy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// WatcherConfig configures a Watcher. The zero value of every field but Dir is usable.
type WatcherConfig struct {
	// Dir is the policy directory (see Load).
	Dir string
	// Registerer receives the watcher's metrics; nil registers none.
	//   edgeward_policy_valid                           1 if the last load succeeded, 0 if the
	//                                                   last good policy is in force despite an error
	//   edgeward_policy_reloads_total{result}           loads by result (success, failure)
	//   edgeward_policy_last_success_timestamp_seconds  when the policy in force was loaded
	//   edgeward_policy_rollouts                        rollouts in the policy in force
	Registerer prometheus.Registerer
	// Logger; nil discards.
	Logger *slog.Logger
	// Debounce is how long the directory must be quiet before a reload, so that an
	// editor's several writes and renames give one load. Zero means 100ms.
	Debounce time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// OnChange, if set, is called before a policy whose digest differs from the one in
	// force is put in force (old is nil at the first load), to record the change (the
	// server audits it with Changes). If it fails, the new policy is not put in force:
	// the reload counts as failed with its error, and the old policy stays.
	OnChange func(old, new *Policy) error
	// RetryAfter is how long Run waits, at first, before it loads again a policy that
	// OnChange failed to record (the audit log's database full or away), doubling up
	// to a minute: a policy directory that does not change again would otherwise stay
	// out of force after the cause went. Zero means 2 s.
	RetryAfter time.Duration
	// LastGood, if set, is a file (outside Dir) in which the watcher keeps a copy of the
	// files of the policy in force, rewritten (atomically) each time another policy is
	// put in force. When Dir does not load at start, NewWatcher starts from that copy,
	// as the running watcher keeps the last good policy: the directory's error is in
	// Status and the metrics, and logged, as a rejected reload's. Empty: no copy, and
	// NewWatcher fails on a directory that does not load.
	LastGood string
}

// Watcher keeps the policy of a directory loaded: it reloads it when a file in the
// directory changes (writes, creations, removals, the rename-over-the-original of
// editors and of Kubernetes ConfigMap updates, and the directory itself being removed
// and created again). An invalid policy never replaces a valid
// one: the last good policy stays in force and the error is kept for Status and the
// metrics. Its methods are safe for concurrent use.
type Watcher struct {
	cfg    WatcherConfig
	fsw    *fsnotify.Watcher
	log    *slog.Logger
	parser *Parser

	valid, lastOK, rollouts prometheus.Gauge
	reloads                 *prometheus.CounterVec

	reloadMu sync.Mutex // serialises Reload, so that an older load never replaces a newer one

	mu      sync.Mutex
	cur     *Policy
	st      ReloadStatus
	changed chan struct{}
}

// ReloadStatus describes the policy in force and the last load attempt.
type ReloadStatus struct {
	// Digest and LoadedAt are those of the policy in force.
	Digest   string    `json:"digest"`
	LoadedAt time.Time `json:"loaded_at"`
	// Err is the error of the last load attempt, nil if it succeeded. ErrAt is when
	// the directory was first rejected in the current run of failed attempts (a later
	// edit that is still wrong, or a retry, does not move it); for a directory
	// rejected at start, when it last changed (its newest file's or entry's time, not
	// the start: a restart does not hide how long the last good policy has been in
	// force). An ErrorList carries every problem with its file and line.
	Err   error     `json:"-"`
	ErrAt time.Time `json:"error_at,omitzero"`
	// Error is Err's text, for JSON.
	Error    string `json:"error,omitempty"`
	Reloads  int    `json:"reloads"`
	Failures int    `json:"failures"`
}

// NewWatcher loads the policy in cfg.Dir and starts watching the directory; call Run
// to process changes and Close (or cancel Run's context) to stop. If the initial
// policy is invalid it starts from cfg.LastGood's copy, with the directory's error in
// Status; it fails if there is no such copy (no last good policy to keep in force).
// (One typo in a hand-edited file took the server down at its next restart, and with it
// TUF metadata and check-ins for the whole fleet: found from outside.)
func NewWatcher(cfg WatcherConfig) (*Watcher, error) {
	if cfg.RetryAfter <= 0 {
		cfg.RetryAfter = 2 * time.Second
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = 100 * time.Millisecond
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger, changed: make(chan struct{})}
	if w.log == nil {
		w.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	w.valid = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeward_policy_valid",
		Help: "1 if the last policy load succeeded; 0 if it failed and the last good policy is still in force."})
	w.lastOK = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeward_policy_last_success_timestamp_seconds",
		Help: "Unix time at which the policy in force was loaded."})
	w.rollouts = prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgeward_policy_rollouts",
		Help: "Number of rollouts in the policy in force."})
	w.reloads = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeward_policy_reloads_total",
		Help: "Policy loads by result (success, failure)."}, []string{"result"})
	w.reloads.WithLabelValues("success")
	w.reloads.WithLabelValues("failure")

	var err error
	if w.parser, err = NewParser(); err != nil {
		return nil, err
	}
	p, files, loadErr := w.load()
	if loadErr != nil {
		if cfg.LastGood == "" {
			return nil, loadErr
		}
		var lerr error
		if p, lerr = readLastGood(w.parser, cfg.LastGood, cfg.Dir); lerr != nil {
			return nil, fmt.Errorf("%w (and no last good policy to start from: %v)", loadErr, lerr)
		}
	}
	if cfg.OnChange != nil {
		if err := cfg.OnChange(nil, p); err != nil {
			return nil, fmt.Errorf("policy %s: %w", cfg.Dir, err)
		}
	}
	w.install(p)
	if loadErr != nil {
		w.mu.Lock()
		w.rejectLocked(loadErr, changedAt(cfg.Dir, w.cfg.Now()))
		w.mu.Unlock()
		w.log.Error("POLICY DIRECTORY REJECTED AT START: serving the last good policy; fix the directory, the server loads it when it changes",
			"dir", cfg.Dir, "err", loadErr, "digest", p.Digest, "last_good", cfg.LastGood)
	} else {
		w.saveLastGood(p, files)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{w.valid, w.lastOK, w.rollouts, w.reloads} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("policy watcher: metrics: %w", err)
			}
		}
	}
	if w.fsw, err = fsnotify.NewWatcher(); err != nil {
		return nil, fmt.Errorf("policy watcher: %w", err)
	}
	if err := w.fsw.Add(cfg.Dir); err != nil {
		w.fsw.Close()
		return nil, fmt.Errorf("policy watcher: watch %s: %w", cfg.Dir, err)
	}
	return w, nil
}

// Policy returns the policy in force. It never returns nil.
func (w *Watcher) Policy() *Policy {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cur
}

// Status returns the state of the policy in force and of the last load.
func (w *Watcher) Status() ReloadStatus {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.st
}

// Changed returns a channel that is closed after the next load attempt, successful or
// not. Take it before the change you wait for.
func (w *Watcher) Changed() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.changed
}

// Reload loads the directory now (for example on SIGHUP) and returns the load error,
// if any; the policy in force changes only on success.
func (w *Watcher) Reload() error {
	w.reloadMu.Lock()
	defer w.reloadMu.Unlock()
	p, files, err := w.load()
	if err == nil && w.cfg.OnChange != nil {
		if old := w.Policy(); old.Digest != p.Digest {
			if cerr := w.cfg.OnChange(old, p); cerr != nil {
				err = &notInForceError{digest: p.Digest, err: cerr}
			}
		}
	}
	now := w.cfg.Now()
	save := false
	w.mu.Lock()
	if err != nil {
		w.rejectLocked(err, now)
		w.log.Error("policy rejected; the last good policy stays in force", "dir", w.cfg.Dir, "err", err, "digest", w.st.Digest)
	} else {
		w.st.Reloads++
		save = p.Digest != w.st.Digest
		if save {
			w.log.Info("policy loaded", "dir", w.cfg.Dir, "digest", p.Digest, "rollouts", len(p.Rollouts))
		}
		w.installLocked(p, now)
		w.reloads.WithLabelValues("success").Inc()
	}
	w.mu.Unlock()
	// Outside w.mu, which every check-in takes (Policy): the copy's write and fsyncs
	// held them all (found in review). reloadMu orders the copies.
	if save {
		w.saveLastGood(p, files)
	}
	w.mu.Lock()
	close(w.changed) // after the copy: a waiter may read it
	w.changed = make(chan struct{})
	w.mu.Unlock()
	return err
}

// notInForceError is a policy that loaded but that OnChange could not record: loaded
// again later, it may go into force without any change to its files.
type notInForceError struct {
	digest string
	err    error
}

func (e *notInForceError) Error() string {
	return fmt.Sprintf("policy %s not put in force: %v", e.digest, e.err)
}

func (e *notInForceError) Unwrap() error { return e.err }

// load reads and parses the directory, returning the files it parsed.
func (w *Watcher) load() (*Policy, []File, error) {
	files, err := readDir(w.cfg.Dir)
	if err != nil {
		return nil, nil, err
	}
	p, err := w.parser.Parse(files...)
	if err != nil {
		return nil, nil, err
	}
	return p, files, nil
}

// rejectLocked records a load that failed: the policy in force stays. ErrAt stays that
// of the first failure after a success.
func (w *Watcher) rejectLocked(err error, now time.Time) {
	w.st.Reloads++
	w.st.Failures++
	if w.st.Err == nil {
		w.st.ErrAt = now
	}
	w.st.Err, w.st.Error = err, err.Error()
	w.valid.Set(0)
	w.reloads.WithLabelValues("failure").Inc()
}

// changedAt is when dir last changed as far as its metadata tells: the newest
// modification time of the directory (an entry added, removed or renamed) and of the
// policy files in it, never after now (a clock set back); now if none can be read.
func changedAt(dir string, now time.Time) time.Time {
	var newest time.Time
	if fi, err := os.Stat(dir); err == nil {
		newest = fi.ModTime()
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !IsPolicyFile(e.Name()) {
			continue
		}
		if fi, err := e.Info(); err == nil && fi.ModTime().After(newest) {
			newest = fi.ModTime()
		}
	}
	if newest.IsZero() || newest.After(now) {
		return now
	}
	return newest
}

func (w *Watcher) install(p *Policy) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.installLocked(p, w.cfg.Now())
}

func (w *Watcher) installLocked(p *Policy, now time.Time) {
	w.cur = p
	w.st.Digest, w.st.LoadedAt = p.Digest, now
	w.st.Err, w.st.ErrAt, w.st.Error = nil, time.Time{}, ""
	w.valid.Set(1)
	w.lastOK.Set(float64(now.UnixNano()) / 1e9)
	w.rollouts.Set(float64(len(p.Rollouts)))
}

// Run reloads the policy after changes in the directory until ctx is done or Close is
// called; it then stops watching and returns nil, or the watch's error.
func (w *Watcher) Run(ctx context.Context) error {
	defer w.fsw.Close()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	// When the directory itself goes away (rm -r, mv), the watch goes with it: retry
	// adding it until it is back.
	var retry <-chan time.Time
	var retryTicker *time.Ticker
	defer func() {
		if retryTicker != nil {
			retryTicker.Stop()
		}
	}()
	dir := filepath.Clean(w.cfg.Dir)
	// A policy OnChange could not record is loaded again after a backoff, whether or
	// not the directory changes: before, it stayed out of force until the next change
	// of the directory or a restart, while `rollout create` had answered that it was
	// written (found from outside, 2 Dec: a disk full for a moment).
	var again <-chan time.Time
	var backoff time.Duration
	reload := func() {
		var nf *notInForceError
		if err := w.Reload(); !errors.As(err, &nf) {
			again, backoff = nil, 0 // in force, or rejected for its files: their next change
			return
		}
		backoff = min(max(2*backoff, w.cfg.RetryAfter), time.Minute)
		again = time.After(backoff)
		w.log.Warn("policy not put in force: loading it again", "in", backoff.String())
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-again:
			reload()
		case ev, ok := <-w.fsw.Events:
			if !ok {
				return nil
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			w.log.Debug("policy directory changed", "event", ev.String())
			if filepath.Clean(ev.Name) == dir && ev.Op.Has(fsnotify.Remove|fsnotify.Rename) && retry == nil {
				w.fsw.Remove(w.cfg.Dir) // may already be gone
				retryTicker = time.NewTicker(5 * w.cfg.Debounce)
				retry = retryTicker.C
			}
			timer.Reset(w.cfg.Debounce)
		case <-retry:
			if _, err := os.Stat(w.cfg.Dir); err != nil {
				continue
			}
			if err := w.fsw.Add(w.cfg.Dir); err != nil {
				continue
			}
			retryTicker.Stop()
			retryTicker, retry = nil, nil
			w.log.Info("policy directory is back", "dir", w.cfg.Dir)
			timer.Reset(w.cfg.Debounce)
		case err, ok := <-w.fsw.Errors:
			if !ok {
				return nil
			}
			if errors.Is(err, fsnotify.ErrEventOverflow) {
				// Events were lost: reload to be sure.
				timer.Reset(w.cfg.Debounce)
				continue
			}
			w.log.Error("policy watch", "dir", w.cfg.Dir, "err", err)
		case <-timer.C:
			reload() // recorded in Status and the metrics
		}
	}
}

// Close stops watching; Run returns.
func (w *Watcher) Close() error { return w.fsw.Close() }
