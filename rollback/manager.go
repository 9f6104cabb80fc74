package rollback

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/rollback/crashpoint"
)

// PayloadName is the file name of a slot's content inside its directory.
const PayloadName = "payload"

// Fetcher writes a verified target into a file.
type Fetcher interface {
	// Fetch streams t to the file at path, resuming from what an earlier call durably
	// wrote beside it. It returns nil only when path holds exactly t's length and sha256
	// and is durable (written to a temporary file, synced, renamed, directory synced).
	// An error for which Permanent reports true ends the install; any other error leaves
	// the transaction downloading, to be resumed.
	Fetch(ctx context.Context, t Target, path string) error
}

// Permanent is implemented by errors that retrying cannot fix (wrong hash, too long,
// disk full, not found).
type Permanent interface{ Permanent() bool }

// IsPermanent reports whether err (or an error it wraps) says it is permanent.
func IsPermanent(err error) bool {
	var p Permanent
	return errors.As(err, &p) && p.Permanent()
}

// TrialRunner runs a staged version beside the serving one (health, probes). The
// outcome arrives later through Manager.Confirm; Start only reports whether it started.
type TrialRunner interface {
	Start(ctx context.Context, kind artifact.Kind, payload string, t Target, deadline time.Time) error
	Stop(ctx context.Context, kind artifact.Kind, slot Slot) error
}

// Config configures a Manager. The zero value of each field but Dir is usable.
type Config struct {
	// Dir is the agent's state directory: state.db and slots/<kind>/<a|b>/payload.
	Dir string
	// Floors is the authoritative anti-rollback store (the TPM NV counter). Nil means
	// the sqlite mirror alone. When set, the floor used is the higher of the two and
	// both are raised on commit, Floors first.
	Floors FloorStore
	// Fetch downloads targets. Nil means Install fails.
	Fetch Fetcher
	// Trial starts and stops trials. Nil means a trial only waits for Confirm or its deadline.
	Trial TrialRunner
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
	// Logger receives one line per transition. Nil means slog.Default().
	Logger *slog.Logger
}

// Manager is the thin shell around Step: it persists every transition before performing
// its actions. It is safe for concurrent use; transitions are serialized.
type Manager struct {
	cfg   Config
	db    *DB
	mu    sync.Mutex
	crash crashpoint.Counter
	// verified remembers, per kind, the staged slot this Manager verified itself (from
	// its downloader's Proof or by reading it). The trial of a slot staged by an earlier
	// process, or changed since, reads and hashes it again first. Guarded by mu.
	verified map[artifact.Kind]stamp
	// reads counts the slot files read and hashed by Verify and StartTrial (tests).
	reads int
	// unsettled names the kinds whose commit is persisted but whose actions after it
	// (stop the trial, raise the floor, point current at the new slot) failed, as when
	// the TPM refuses an NV write or the disk is full: Tick issues them again, as a
	// restart's Recover would, until they succeed. Guarded by mu.
	unsettled map[artifact.Kind]bool
	// driven names the kinds this Manager has driven an event for. The first recovery
	// of a kind in a process is a restart's (EvRecover.Restart): a trial it finds under
	// way was started by an earlier process. Guarded by mu.
	driven map[artifact.Kind]bool
}

// Open opens the state in cfg.Dir. Call Recover before anything else.
func Open(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Dir == "" {
		return nil, errors.New("rollback: Config.Dir is required")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, k := range Kinds() {
		for _, s := range []Slot{SlotA, SlotB} {
			if err := durable.MkdirAll(filepath.Join(cfg.Dir, "slots", string(k), string(s)), 0o700); err != nil {
				return nil, fmt.Errorf("create slot directories: %w", err)
			}
		}
	}
	db, err := OpenDB(ctx, filepath.Join(cfg.Dir, "state.db"))
	if err != nil {
		return nil, err
	}
	return &Manager{cfg: cfg, db: db, verified: map[artifact.Kind]stamp{}, unsettled: map[artifact.Kind]bool{}, driven: map[artifact.Kind]bool{}}, nil
}

// Close closes the state database.
func (m *Manager) Close() error { return m.db.Close() }

// DB returns the state database (for the outbox and status).
func (m *Manager) DB() *DB { return m.db }

// SlotDir is the directory of one slot.
func (m *Manager) SlotDir(kind artifact.Kind, slot Slot) string {
	return filepath.Join(m.cfg.Dir, "slots", string(kind), string(slot))
}

// Payload is the path of a slot's content.
func (m *Manager) Payload(kind artifact.Kind, slot Slot) string {
	return filepath.Join(m.SlotDir(kind, slot), PayloadName)
}

// State returns kind's persisted state.
func (m *Manager) State(ctx context.Context, kind artifact.Kind) (State, error) {
	return m.db.Load(ctx, kind)
}

// Floor returns kind's anti-rollback floor: the higher of Config.Floors and the mirror.
func (m *Manager) Floor(ctx context.Context, kind artifact.Kind) (uint64, error) {
	f, err := m.db.Floor(ctx, kind)
	if err != nil {
		return 0, err
	}
	if m.cfg.Floors != nil {
		g, err := m.cfg.Floors.Floor(ctx, kind)
		if err != nil {
			return 0, fmt.Errorf("read %s floor: %w", kind, err)
		}
		f = max(f, g)
	}
	return f, nil
}

// Recover brings every kind to a resting phase after a start: it resumes an interrupted
// download, re-verifies, rolls back a trial past its deadline, and discards anything in an
// inactive slot that no transaction owns. A download that fails again is returned as an
// error after the other kinds were recovered.
func (m *Manager) Recover(ctx context.Context) error { return m.recover(ctx, m.cfg.Fetch) }

// RecoverLocal is Recover without the network: it does everything Recover does except
// resume an interrupted download, which stays downloading, owned by its transaction,
// for the next Recover or Install. A device calls it before it serves, so that neither
// a missing server nor a slow download delays serving the committed versions.
func (m *Manager) RecoverLocal(ctx context.Context) error {
	err := m.recover(ctx, deferredFetch{})
	var errs []error
	for _, e := range unjoin(err) {
		if !errors.Is(e, errDeferred) {
			errs = append(errs, e)
		}
	}
	return errors.Join(errs...)
}

// errDeferred is how RecoverLocal leaves a download for later: a transient fetch
// failure, so the transaction stays downloading.
var errDeferred = errors.New("download deferred to the next Recover")

type deferredFetch struct{}

func (deferredFetch) Fetch(context.Context, Target, string) error { return errDeferred }

// unjoin returns the errors an errors.Join holds (err itself if it is not one).
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

func (m *Manager) recover(ctx context.Context, fetch Fetcher) error {
	var errs []error
	for _, k := range Kinds() {
		if err := m.removeLeftovers(ctx, k); err != nil {
			errs = append(errs, err)
		}
		if err := m.adopt(ctx, k); err != nil {
			errs = append(errs, err)
		}
		if _, err := m.drive(ctx, k, EvRecover{}, fetch); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// adopt takes over the committed version the current pointer names when the state is
// empty (lost), if the slot still holds it intact and the floor allows it. Otherwise
// recovery of the empty state clears slot a like any inactive slot.
func (m *Manager) adopt(ctx context.Context, kind artifact.Kind) error {
	s, err := m.db.Load(ctx, kind)
	if err != nil || s.Seq != 0 || s.Active != "" {
		return err
	}
	b, err := os.ReadFile(filepath.Join(m.cfg.Dir, "slots", string(kind), "current"))
	if err != nil {
		return nil // nothing was ever committed here
	}
	var p Pointer
	if err := json.Unmarshal(b, &p); err != nil || (p.Slot != SlotA && p.Slot != SlotB) {
		m.cfg.Logger.Warn("ignoring an unreadable slot pointer", "kind", kind, "err", err)
		return nil
	}
	t := Target{Path: p.Path, Version: p.Version, Floor: p.Floor, Length: p.Length, SHA256: p.SHA256}
	if err := verifyFile(m.Payload(kind, p.Slot), t); err != nil {
		m.cfg.Logger.Warn("not adopting the slot the pointer names", "kind", kind, "slot", p.Slot, "err", err)
		return nil
	}
	if v, err := artifact.ParseVersion(t.Version); err != nil {
		return nil
	} else if f, err := v.Floor(); err != nil || f != t.Floor {
		return nil
	}
	floor, err := m.Floor(ctx, kind)
	if err != nil {
		return err
	}
	_, err = m.drive(ctx, kind, EvAdopt{Target: t, Slot: p.Slot, Floor: floor}, m.cfg.Fetch)
	if errors.Is(err, ErrDowngrade) {
		m.cfg.Logger.Warn("not adopting a version below the floor", "kind", kind, "version", t.Version, "err", err)
		return nil
	}
	return err
}

// Install downloads and verifies t into kind's inactive slot and stages it. t must come
// from verified TUF metadata. A version below the floor fails with a *DowngradeError
// before anything is written.
func (m *Manager) Install(ctx context.Context, kind artifact.Kind, t Target) (State, error) {
	floor, err := m.Floor(ctx, kind)
	if err != nil {
		return State{}, err
	}
	return m.drive(ctx, kind, EvInstall{Target: t, Floor: floor}, m.cfg.Fetch)
}

// InstallFrom is Install with another Fetcher for this install (an offline bundle). A
// download it leaves unfinished is resumed by Recover with Config.Fetch, or by calling
// InstallFrom again with the same target.
func (m *Manager) InstallFrom(ctx context.Context, kind artifact.Kind, t Target, f Fetcher) (State, error) {
	floor, err := m.Floor(ctx, kind)
	if err != nil {
		return State{}, err
	}
	return m.drive(ctx, kind, EvInstall{Target: t, Floor: floor}, f)
}

// BeginTrial starts the trial of kind's staged version; it rolls back unless Confirm
// reports a pass within timeout.
func (m *Manager) BeginTrial(ctx context.Context, kind artifact.Kind, timeout time.Duration) (State, error) {
	return m.drive(ctx, kind, EvBeginTrial{Timeout: timeout}, m.cfg.Fetch)
}

// Confirm ends kind's trial: a pass commits the trial slot and raises the floor, anything
// else rolls back to the committed slot.
func (m *Manager) Confirm(ctx context.Context, kind artifact.Kind, pass bool, reason string) (State, error) {
	if !pass {
		return m.drive(ctx, kind, EvTrialFailed{Reason: reason}, m.cfg.Fetch)
	}
	floor, err := m.Floor(ctx, kind)
	if err != nil {
		return State{}, err
	}
	return m.drive(ctx, kind, EvTrialPassed{Floor: floor}, m.cfg.Fetch)
}

// Abort gives up kind's install if it has not reached its trial.
func (m *Manager) Abort(ctx context.Context, kind artifact.Kind, reason string) (State, error) {
	return m.drive(ctx, kind, EvAbort{Reason: reason}, m.cfg.Fetch)
}

// Tick rolls back trials past their deadline, and finishes commits whose actions after
// the commit failed (Manager.unsettled).
func (m *Manager) Tick(ctx context.Context) error {
	var errs []error
	for _, k := range Kinds() {
		if _, err := m.drive(ctx, k, EvTick{}, m.cfg.Fetch); err != nil {
			errs = append(errs, err)
		}
		m.mu.Lock()
		unsettled := m.unsettled[k]
		m.mu.Unlock()
		if unsettled {
			if _, err := m.drive(ctx, k, EvRecover{}, m.cfg.Fetch); err != nil {
				errs = append(errs, fmt.Errorf("finish %s commit: %w", k, err))
			}
		}
	}
	return errors.Join(errs...)
}

// persistCrash names the crash point right after a phase is persisted.
func persistCrash(p Phase) string {
	switch p {
	case Downloading:
		return "after-install"
	case Staged:
		return "after-stage"
	case Trial:
		return "after-trial-start"
	case Committed:
		return "after-commit"
	case RolledBack:
		return "after-rollback"
	}
	return ""
}

// drive feeds ev to Step, persists the new state, performs its actions and feeds any
// follow-up event (download done, verification result, trial start failure) until the
// transaction rests.
func (m *Manager) drive(ctx context.Context, kind artifact.Kind, ev Event, fetch Fetcher) (State, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	// proof carries the downloader's Proof from the Download action to the Verify
	// action of this call only: it never outlives the call, so a slot downloaded by
	// an earlier call or process is read again.
	var proof Proof
	if r, ok := ev.(EvRecover); ok && !m.driven[kind] {
		r.Restart = true
		ev = r
	}
	m.driven[kind] = true
	for {
		s, err := m.db.Load(ctx, kind)
		if err != nil {
			return State{}, err
		}
		now := m.cfg.Now()
		n, acts, err := Step(s, ev, now)
		if err != nil {
			return s, err
		}
		if n.Seq != s.Seq {
			// Persist before acting.
			if err := m.db.Save(ctx, n, ev.event(), now.UTC().Format(time.RFC3339Nano)); err != nil {
				return s, err
			}
			m.cfg.Logger.Info("slot transition", "kind", kind, "event", ev.event(), "from", s.phase(), "to", n.Phase, "seq", n.Seq, "reason", n.Reason)
			if name := persistCrash(n.Phase); name != "" && (n.Phase != Downloading || s.phase() != Downloading) {
				crashpoint.Hit(&m.crash, name)
			}
		}
		next, err := m.perform(ctx, n, acts, fetch, &proof)
		if n.Phase == Committed && len(acts) > 0 {
			// The commit stands (persisted above); only what follows it is retried.
			m.unsettled[kind] = err != nil
		}
		if err != nil || next == nil {
			return n, err
		}
		ev = next
	}
}

// perform does acts in order. It returns the follow-up event of the last action, if any.
// proof is set by a Download action whose fetcher proved what it wrote, and consumed by
// the Verify action that follows it.
func (m *Manager) perform(ctx context.Context, s State, acts []Action, fetch Fetcher, proof *Proof) (Event, error) {
	for _, a := range acts {
		switch a.Kind {
		case ClearSlot:
			delete(m.verified, s.Kind)
			if err := m.clearSlot(s.Kind, a.Slot); err != nil {
				return nil, err
			}
			if s.Phase == Downloading {
				crashpoint.Hit(&m.crash, "after-clear-slot")
			}
		case Download:
			if fetch == nil {
				return EvFailed{Reason: "no fetcher configured"}, nil
			}
			var err error
			*proof = Proof{}
			if pf, ok := fetch.(ProvingFetcher); ok {
				*proof, err = pf.FetchProven(ctx, *a.Target, m.Payload(s.Kind, a.Slot))
			} else {
				err = fetch.Fetch(ctx, *a.Target, m.Payload(s.Kind, a.Slot))
			}
			switch {
			case err == nil:
				crashpoint.Hit(&m.crash, "after-download")
				return EvDownloaded{}, nil
			case ctx.Err() == nil && IsPermanent(err):
				return EvFailed{Reason: err.Error()}, nil
			default: // transient: stay downloading; Recover or the next Install resumes
				return nil, fmt.Errorf("download %s into %s slot %s: %w", a.Target.Path, s.Kind, a.Slot, err)
			}
		case Verify:
			delete(m.verified, s.Kind)
			path := m.Payload(s.Kind, a.Slot)
			id, keep, proven, err := verifySlot(path, *a.Target, *proof)
			*proof = Proof{}
			if !proven {
				m.reads++
			}
			if err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return EvFailed{Reason: err.Error()}, nil
			}
			if keep {
				m.verified[s.Kind] = stamp{target: *a.Target, slot: a.Slot, id: id}
			}
			how := "read and hashed"
			if proven {
				how = "hashed by the fetcher in this process"
			}
			m.cfg.Logger.Info("slot verified", "kind", s.Kind, "slot", a.Slot, "version", a.Target.Version, "how", how)
			crashpoint.Hit(&m.crash, "after-verify")
			return EvVerified{}, nil
		case StartTrial:
			if err := m.checkStaged(s.Kind, a.Slot, *a.Target); err != nil {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				return EvTrialFailed{Reason: err.Error()}, nil
			}
			if m.cfg.Trial != nil {
				if err := m.cfg.Trial.Start(ctx, s.Kind, m.Payload(s.Kind, a.Slot), *a.Target, a.Deadline); err != nil {
					return EvTrialFailed{Reason: "start: " + err.Error()}, nil
				}
			}
		case StopTrial:
			if m.cfg.Trial != nil {
				if err := m.cfg.Trial.Stop(ctx, s.Kind, a.Slot); err != nil {
					return nil, fmt.Errorf("stop %s trial in slot %s: %w", s.Kind, a.Slot, err)
				}
			}
		case RaiseFloor:
			before, err := m.db.Floor(ctx, s.Kind)
			if err != nil {
				return nil, err
			}
			if m.cfg.Floors != nil {
				if err := m.cfg.Floors.Raise(ctx, s.Kind, a.Floor); err != nil {
					return nil, fmt.Errorf("raise %s floor: %w", s.Kind, err)
				}
			}
			if err := m.db.Raise(ctx, s.Kind, a.Floor); err != nil {
				return nil, err
			}
			if before < a.Floor {
				crashpoint.Hit(&m.crash, "after-floor-raise")
			}
		case Activate:
			if err := m.activate(s.Kind, a.Slot, *a.Target); err != nil {
				return nil, err
			}
		}
	}
	return nil, nil
}

// checkStaged makes sure the slot about to be tried still holds t. A slot this Manager
// verified (and that did not change since) is taken as is; any other, staged by an
// earlier process or found in a trial after a restart, is read and hashed again.
func (m *Manager) checkStaged(kind artifact.Kind, slot Slot, t Target) error {
	path := m.Payload(kind, slot)
	if st, ok := m.verified[kind]; ok && st.slot == slot && st.target == t {
		if fi, err := os.Stat(path); err == nil {
			if id, ok := identify(fi); ok && id == st.id {
				return nil
			}
		}
	}
	m.reads++
	if err := verifyFile(path, t); err != nil {
		return fmt.Errorf("the staged slot no longer holds the target: %w", err)
	}
	m.cfg.Logger.Info("slot verified before its trial", "kind", kind, "slot", slot, "version", t.Version, "how", "read and hashed (staged by an earlier process, or changed)")
	return nil
}

// clearSlot empties a slot's directory and makes that durable.
func (m *Manager) clearSlot(kind artifact.Kind, slot Slot) error {
	dir := m.SlotDir(kind, slot)
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("clear %s slot %s: %w", kind, slot, err)
	}
	if len(entries) == 0 && err == nil {
		return nil
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("clear %s slot %s: %w", kind, slot, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("clear %s slot %s: %w", kind, slot, err)
	}
	return durable.SyncDir(dir)
}

// Pointer is the content of slots/<kind>/current, read by whatever serves the kind.
type Pointer struct {
	Slot    Slot   `json:"slot"`
	Version string `json:"version"`
	Path    string `json:"path"`
	SHA256  string `json:"sha256"`
	Payload string `json:"payload"`
	Length  int64  `json:"length"`
	Floor   uint64 `json:"floor"`
}

func (m *Manager) activate(kind artifact.Kind, slot Slot, t Target) error {
	b, err := json.Marshal(Pointer{Slot: slot, Version: t.Version, Path: t.Path, SHA256: t.SHA256, Payload: m.Payload(kind, slot), Length: t.Length, Floor: t.Floor})
	if err != nil {
		return err
	}
	path := filepath.Join(m.cfg.Dir, "slots", string(kind), "current")
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, b) {
		// Already so (recovery re-activates the committed slot at every start): no
		// write, so that a device whose disk has filled still recovers and serves. It is
		// synced all the same, file and directory, in case the process that wrote it
		// died before it had (syncing written data needs no free blocks).
		return syncFile(path)
	}
	return durable.WriteFile(path, b, 0o600)
}

// CheckInvariant returns an error unless, for every kind, the active slot holds the
// committed version intact, the floor is at least that version's floor and no temporary
// file is left outside a download in progress.
func (m *Manager) CheckInvariant(ctx context.Context) error {
	return m.check(ctx, true)
}

// CheckActive returns an error unless, for every kind, the active slot holds the
// committed version intact: what must hold at every instant, even right after a crash
// and before Recover. Unlike CheckInvariant it allows temporary files, and a floor
// below the committed version's (a commit is persisted before its floor is raised, and
// Recover raises it).
func (m *Manager) CheckActive(ctx context.Context) error {
	return m.check(ctx, false)
}

// check is CheckInvariant, or CheckActive unless all.
func (m *Manager) check(ctx context.Context, all bool) error {
	var errs []error
	for _, k := range Kinds() {
		s, err := m.db.Load(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if s.Current != nil {
			if err := verifyFile(m.Payload(k, s.Active), *s.Current); err != nil {
				errs = append(errs, fmt.Errorf("%s active slot %s: %w", k, s.Active, err))
			}
			if f, err := m.Floor(ctx, k); err != nil {
				errs = append(errs, err)
			} else if all && f < s.Current.Floor {
				errs = append(errs, fmt.Errorf("%s floor %s below the committed version %s", k, floorString(f), s.Current.Version))
			}
		}
		if !all {
			continue
		}
		err = filepath.WalkDir(filepath.Join(m.cfg.Dir, "slots", string(k)), func(p string, d os.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			name := d.Name()
			inProgress := s.phase() == Downloading && filepath.Dir(p) == m.SlotDir(k, s.Inactive())
			if isTemp(name) && !inProgress {
				return fmt.Errorf("%s: temporary file left behind: %s", k, p)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func isTemp(name string) bool {
	return strings.Contains(name, ".tmp") || strings.HasSuffix(name, ".part") || strings.HasSuffix(name, ".part.state")
}

// removeLeftovers deletes what a crash can leave behind: temporary files of atomic writes
// anywhere under the kind's slots, and partial downloads no download owns any more.
func (m *Manager) removeLeftovers(ctx context.Context, kind artifact.Kind) error {
	s, err := m.db.Load(ctx, kind)
	if err != nil {
		return err
	}
	dirs := []string{filepath.Join(m.cfg.Dir, "slots", string(kind)), m.SlotDir(kind, SlotA), m.SlotDir(kind, SlotB)}
	for _, dir := range dirs {
		resumable := s.phase() == Downloading && dir == m.SlotDir(kind, s.Inactive())
		if err := removeTemps(dir, !resumable); err != nil {
			return err
		}
	}
	return nil
}

// removeTemps deletes temporary files in dir and, if parts, partial downloads.
func removeTemps(dir string, parts bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && (strings.Contains(n, ".tmp") || parts && isTemp(n)) {
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return fmt.Errorf("remove temporary file: %w", err)
			}
		}
	}
	return nil
}

// verifyFile checks that the file at path has t's length and sha256, reading it with a
// fixed buffer.
func verifyFile(path string, t Target) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("verify %s: %w", t.Path, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.CopyBuffer(h, io.LimitReader(f, t.Length+1), make([]byte, 64<<10))
	if err != nil {
		return fmt.Errorf("verify %s: %w", t.Path, err)
	}
	if n != t.Length {
		return fmt.Errorf("verify %s: %d bytes, want %d", t.Path, n, t.Length)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != t.SHA256 {
		return fmt.Errorf("verify %s: sha256 %s, want %s", t.Path, got, t.SHA256)
	}
	return nil
}

// syncFile makes path's content and its directory entry durable.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return durable.SyncDir(filepath.Dir(path))
}
