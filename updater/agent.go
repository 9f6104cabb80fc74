package updater

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
)

// SlotStatus is what the agent reports about one slot kind at a check-in.
type SlotStatus struct {
	Phase   rollback.Phase `json:"phase"`
	Version string         `json:"version,omitempty"` // committed version
	Path    string         `json:"path,omitempty"`
	Pending string         `json:"pending,omitempty"`
	Reason  string         `json:"reason,omitempty"`
}

// Director tells the agent what it should run: given the agent's status it returns the
// server's whole decision per slot kind (the repo-server's device API; a missing kind
// means "no change"). The agent installs a decision's target only when its action is
// wire.ActionInstall, and commits it against artifact.CommitGates(signed gates, the
// decision's gates). A director can only choose among targets TUF verifies and the floor
// allows, and can only tighten the signed gates.
type Director interface {
	CheckIn(ctx context.Context, status map[artifact.Kind]SlotStatus) (map[artifact.Kind]wire.SlotDecision, error)
}

// Standing is implemented by a Director that can say what the server made of the
// device at the last check-in when it is not trusted ("" when it is): recorded with the
// check-in's result for 'edgeward-agent status'.
type Standing interface {
	Standing() string
}

// RootAnnouncer is implemented by a Director whose last check-in said which TUF root
// version the repository publishes (0: it did not say).
type RootAnnouncer interface {
	AnnouncedRoot() int64
}

// ErrMetadataBehind: after its refresh, the device's metadata source still serves an
// older root than the server announced. The round installs nothing: under the old
// root, keys the new one revoked (perhaps stolen) still count.
var ErrMetadataBehind = errors.New("the metadata source serves an older root than the server publishes")

// Trial is a staged version to judge.
type Trial struct {
	Kind artifact.Kind
	// Payload is the path of the staged bytes.
	Payload string
	Target  rollback.Target
	// Meta is the target's signed TUF metadata.
	Meta artifact.Meta
	// Gates are what the trial must meet: artifact.CommitGates(Meta.Gates, the
	// decision's gates). nil means no gate.
	Gates *artifact.Gates
	// Rollout is the rollout whose decision asked for the install ("" if none).
	Rollout string
	// ContentKey is the content key of an encrypted target (Meta.Encryption set),
	// wrapped to this device's TPM decryption key: the judge unwraps it in the TPM and
	// has the runtime decrypt the model into memory (issue 18).
	ContentKey *keywrap.Wrapped
	// ProbeKey is the content key of the target's probe set when that is encrypted,
	// wrapped like ContentKey: the judge decrypts the probe set in memory.
	ProbeKey *keywrap.Wrapped
	// TUF is the client whose verified metadata described the target: the online one,
	// or an offline bundle's (BundleTUF). The judge looks the probe set up through it,
	// so that a bundle's probe set is found in the bundle's metadata, offline.
	TUF *TUF
}

// ErrNoContentKey: the decision offers an encrypted target but the server released no
// content key with it (the device is quarantined, its quote was not trusted, it
// certified no decryption key...). Nothing is downloaded; the install is retried at a
// later check-in, and the version is not blamed.
var ErrNoContentKey = errors.New("encrypted target and no content key released")

// Verdict is a Judge's answer.
type Verdict struct {
	Pass   bool
	Reason string // why it failed
	// Probe is what the probe run measured (zero when nothing was probed); it goes
	// into the install report whether the trial passed or not.
	Probe wire.Probe
	// Err is the error that ended a failed trial, if any. When it is Transient (the
	// runtime refused the connection or died mid-trial) the version is not at fault:
	// the trial rolls back and is retried later, at most MaxTrialRetries times.
	Err error
}

// MaxTrialDeaths bounds the retries of a version during whose trial the runtime died
// (ErrDiedInTrial): each death took serving down with it, so the second is the
// version's fault.
const MaxTrialDeaths = 1

// MaxTrialRetries bounds the trials of one version that fail for a transient cause
// (see Verdict.Err); the next such failure counts against the version.
const MaxTrialRetries = 5

// Judge runs the trial of a staged version (health, probes against t.Gates) and says
// whether it passed. ctx ends at the trial deadline; anything but pass rolls back.
type Judge interface {
	Judge(ctx context.Context, t Trial) Verdict
}

// Outcome is implemented by a Judge that must act on what was recorded after its
// verdict: Committed is called once a pass is durably committed (the moment to make the
// new version serve), RolledBack when the slot rolled back (a failed verdict, or a pass
// that came too late or met a raised floor), to undo whatever the trial left behind.
// A Judge should not make a version serve before Committed: the commit can still fail.
type Outcome interface {
	Committed(ctx context.Context, kind artifact.Kind, t rollback.Target, meta artifact.Meta) error
	RolledBack(ctx context.Context, kind artifact.Kind, t rollback.Target, meta artifact.Meta) error
}

// AgentConfig configures an Agent. TUF, Slots and Director are required.
type AgentConfig struct {
	DeviceID string
	TUF      *TUF
	Slots    *rollback.Manager
	Director Director
	// Judge runs trials; nil means no trial can pass (every install rolls back at its deadline).
	Judge Judge
	// Outbox and Sender carry reports; nil Outbox (and nil OpenOutbox) means reports
	// are only logged.
	Outbox *Outbox
	// OpenOutbox, used when Outbox is nil, opens the outbox late: a device's first start
	// on a full disk cannot create its outbox database, and must still serve and check
	// in. The agent calls it at the start of each round, and when it has a report to
	// queue, until it succeeds. Until then reports are held in memory only (not
	// durable: lost if the process ends; at most MaxHeldReports, the oldest dropped
	// first), each logged as such, and sent from there at each round when there is a
	// Sender; once the outbox opens, the reports still held are moved into it under
	// their IDs, and the targets refused meanwhile are stored. The caller closes the
	// outbox OpenOutbox returned, once Run, Step and InstallBundle have returned.
	OpenOutbox func(ctx context.Context) (*Outbox, error)
	Sender     Sender
	// Interval between check-ins, jittered by ±Jitter·Interval; 0 means 5m and 0.2.
	Interval time.Duration
	Jitter   float64
	// TrialTimeout bounds each trial; 0 means 10m.
	TrialTimeout time.Duration
	// RefreshEveryRound refreshes the TUF metadata in every round whose check-in
	// succeeded, even with nothing to install, so root and key rotations are followed
	// promptly and expired or frozen metadata is noticed and reported (LastError, e.g.
	// expired_metadata) without waiting for an install. false: only before installs
	// (a device fed by offline bundles, whose metadata URL may be unreachable).
	RefreshEveryRound bool
	// OutOfServiceInterval is how often a device the server has taken out of service
	// (a Director error wrapping ErrOutOfService) checks in: it keeps serving what it
	// runs and asks again, in case the decision is reversed, instead of being refused
	// every Interval. 0 means DefaultOutOfServiceInterval; never less than Interval.
	OutOfServiceInterval time.Duration
	// Now, Rand and Sleep are the clock, randomness and waiting; nil means the real ones.
	Now    func() time.Time
	Rand   func() float64
	Sleep  func(ctx context.Context, d time.Duration) error
	Logger *slog.Logger
}

// Agent is the device's main loop: check in, install what is desired and verified, trial,
// commit or roll back, report. Run and WatchBundles may run at the same time: rounds
// and bundle installs are serialized.
type Agent struct {
	cfg AgentConfig
	mu  sync.Mutex // serializes Step and InstallBundle
	// refused remembers targets that failed, so they are not retried until the desired
	// target changes. With an Outbox it is kept there too, and loaded at the first
	// Step: a restarted agent (an offline device's `run` has no server to say the
	// version is refused) does not trial a version that already failed its probe.
	refused       map[string]string
	refusedLoaded bool
	// retried holds, per kind, the target installed once more because the server said
	// an operator cleared its failure (wire.ReasonRetry), while the server still says
	// so: a second failure then stays refused until the server has heard of it.
	retried map[string]string
	// retries holds back, per kind, a target whose last install failed for a transient
	// cause (see Transient) until its backoff has passed.
	retries map[string]retry
	// lastErr is the last round's update error (nil after a round without one); errMu
	// guards it alone, so the director may read it during a round.
	errMu   sync.Mutex
	lastErr *wire.UpdateError
	// reconciled is set once the first round queued any commit left unreported.
	reconciled bool
	// held are the reports queued while there is no outbox (AgentConfig.OpenOutbox),
	// oldest first, their IDs unique; nheld is their number, for HeldReports.
	// heldErr is why they are held: the last failure to open the outbox or to move
	// them into it.
	held    []Message
	nheld   atomic.Int64
	heldErr error
}

// MaxHeldReports bounds the reports an Agent holds in memory while it has no outbox
// (AgentConfig.OpenOutbox); beyond it the oldest is dropped, with an error in the log.
const MaxHeldReports = 256

// NewAgent checks cfg and fills in defaults.
func NewAgent(cfg AgentConfig) (*Agent, error) {
	if cfg.TUF == nil || cfg.Slots == nil || cfg.Director == nil {
		return nil, errors.New("agent: TUF, Slots and Director are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 5 * time.Minute
	}
	if cfg.Jitter <= 0 {
		cfg.Jitter = 0.2
	}
	if cfg.TrialTimeout <= 0 {
		cfg.TrialTimeout = 10 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Sleep == nil {
		cfg.Sleep = sleepCtx
	}
	if cfg.OutOfServiceInterval <= 0 {
		cfg.OutOfServiceInterval = DefaultOutOfServiceInterval
	}
	cfg.OutOfServiceInterval = max(cfg.OutOfServiceInterval, cfg.Interval)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Agent{cfg: cfg, refused: map[string]string{}, retried: map[string]string{}, retries: map[string]retry{}}, nil
}

// retry is a target held back after a transient failure.
type retry struct {
	target    string
	attempts  int
	notBefore time.Time
	reported  string // the cause last reported for target
}

// retryBackoff is the wait after the n-th (from 1) transient failure of a target:
// doubling from the check-in interval (at most a minute), at most an hour.
func (a *Agent) retryBackoff(n int) time.Duration {
	d := min(time.Minute, a.cfg.Interval)
	for i := 1; i < n && d < time.Hour; i++ {
		d *= 2
	}
	return min(d, time.Hour)
}

// ErrOutOfService marks a Director's refusal that will not change by asking again soon:
// the server has taken the device out of service (decommissioned it). Run then waits
// OutOfServiceInterval between rounds.
var ErrOutOfService = errors.New("the server has taken this device out of service")

// DefaultOutOfServiceInterval is AgentConfig.OutOfServiceInterval's default, and how
// often a device whose enrollment the fleet refuses for good asks again.
const DefaultOutOfServiceInterval = time.Hour

// Run recovers the slots, then checks in every Interval (jittered) until ctx ends;
// every OutOfServiceInterval while the server refuses the device for good.
//
// The slots are recovered without the network (RecoverLocal), so that a download a
// restart interrupted does not hold back the first check-in: the round's install
// resumes it when the server still wants that version, supersedes it when it wants
// another, and gives it up when it wants none (dropUnwanted). Before, a kill
// mid-download of a version since superseded or aborted kept the device silent for the
// rest of that download, up to Downloader.MaxTime, then threw it away or staged it for
// nothing (found from outside, 2 Dec: 40 s at 100 KB/s).
func (a *Agent) Run(ctx context.Context) error {
	if err := a.cfg.Slots.RecoverLocal(ctx); err != nil {
		a.cfg.Logger.Error("recover", "err", err)
	}
	for {
		err := a.Step(ctx)
		wait := time.Duration(float64(a.cfg.Interval) * (1 + a.cfg.Jitter*(2*a.cfg.Rand()-1)))
		switch {
		case errors.Is(err, ErrOutOfService):
			wait = max(wait, a.cfg.OutOfServiceInterval)
			a.cfg.Logger.Error("the server has taken this device out of service: it keeps serving what it runs, and asks again later", "retry_in", wait, "err", err)
		case err != nil:
			a.cfg.Logger.Warn("check-in round failed", "err", err)
		}
		if err := a.cfg.Sleep(ctx, wait); err != nil {
			return err
		}
	}
}

// Step is one round: roll back expired trials, check in, install and trial what the
// director wants, flush the outbox.
func (a *Agent) Step(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.outbox(ctx); err != nil {
		a.cfg.Logger.Warn("no outbox: reports are held in memory only, not durable; opening it is retried at each round and report",
			"held", len(a.held), "err", err)
	}
	if !a.reconciled {
		a.reconcileReports(ctx)
		a.reconciled = true
	}
	var errs []error
	if err := a.cfg.Slots.Tick(ctx); err != nil {
		errs = append(errs, err)
	}
	status := map[artifact.Kind]SlotStatus{}
	for _, k := range rollback.Kinds() {
		s, err := a.cfg.Slots.State(ctx, k)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st := SlotStatus{Phase: s.Phase, Reason: s.Reason}
		if s.Current != nil {
			st.Version, st.Path = s.Current.Version, s.Current.Path
		}
		if s.Pending != nil {
			st.Pending = s.Pending.Version
		}
		status[k] = st
	}
	if a.cfg.Sender != nil && a.cfg.Outbox != nil {
		// Reports still due from an earlier round go first: the server bounds how often a
		// device checks in (429 beyond it), and an agent checking in faster than that
		// spent every admitted check-in on its status, its reports refused for good
		// (found 2 Dec). In a round with none due this sends nothing.
		if _, err := a.cfg.Outbox.Flush(ctx, a.cfg.Sender, a.cfg.Now(), Backoff{Base: min(time.Minute, a.cfg.Interval), Max: time.Hour}, a.cfg.Rand); err != nil {
			errs = append(errs, err)
		}
	}
	desired, err := a.cfg.Director.CheckIn(ctx, status)
	result := "ok"
	if err != nil {
		errs = append(errs, fmt.Errorf("check-in: %w", err))
		result = err.Error()
	} else if st, ok := a.cfg.Director.(Standing); ok {
		if s := st.Standing(); s != "" {
			result = "answered, but " + s
		}
	}
	if a.cfg.Outbox != nil {
		if err := a.cfg.Outbox.RecordCheckIn(ctx, a.cfg.Now(), result); err != nil {
			errs = append(errs, err)
		}
	}
	var updateErr error // the round's first update error, for LastError
	if wantsInstall(desired) || (a.cfg.RefreshEveryRound && err == nil) {
		if err := a.cfg.TUF.Refresh(ctx); err != nil {
			errs = append(errs, err)
			updateErr = err
			desired = nil
		} else if err := a.rootBehind(); err != nil {
			errs = append(errs, err)
			updateErr = err
			desired = nil
		}
	}
	a.loadRefused(ctx)
	answered := err == nil && desired != nil
	for _, k := range rollback.Kinds() {
		d, ok := desired[k]
		// The path it runs is installed again only re-encrypted under a new content
		// key (the slot's current target then differs from the signed one).
		same := d.Target == status[k].Path && d.Reason != wire.ReasonRekey
		// An operator cleared the version's failure on this device (devices clear-failed):
		// installed once more although refused here. (Before 2 Dec the agent kept
		// refusing it, and clear-failed changed nothing on a real device.)
		retry := d.Reason == wire.ReasonRetry && a.retried[string(k)] != d.Target
		if d.Reason != wire.ReasonRetry {
			a.setRetried(ctx, k, "")
		}
		if !ok || d.Action != wire.ActionInstall || d.Target == "" || same || (a.refused[string(k)] == d.Target && !retry) {
			continue
		}
		if r, held := a.retries[string(k)]; held && r.target == d.Target && a.cfg.Now().Before(r.notBefore) {
			continue
		}
		if retry {
			a.setRetried(ctx, k, d.Target)
		}
		a.refuse(ctx, k, "")
		if err := a.install(ctx, k, d); err != nil {
			errs = append(errs, err)
			if updateErr == nil && ctx.Err() == nil {
				updateErr = err
			}
		}
	}
	if answered {
		a.dropUnwanted(ctx, desired)
	}
	a.setLastError(updateErr, err == nil)
	switch {
	case a.cfg.Sender == nil:
	case a.cfg.Outbox != nil:
		// Reports that could not be sent are retried from the next check-in on (doubling,
		// at most hourly): a failure report waiting longer would delay auto-pause.
		if _, err := a.cfg.Outbox.Flush(ctx, a.cfg.Sender, a.cfg.Now(), Backoff{Base: min(time.Minute, a.cfg.Interval), Max: time.Hour}, a.cfg.Rand); err != nil {
			errs = append(errs, err)
		}
		if len(a.held) > 0 { // the outbox could not store them (a full disk)
			if err := a.sendHeld(ctx); err != nil {
				errs = append(errs, err)
			}
		}
	default:
		if err := a.sendHeld(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(a.held) > 0 {
		// Said at every round that ends with reports at risk; a round that held none
		// (nothing to report, or all sent) is not failed for want of an outbox.
		errs = append(errs, fmt.Errorf("outbox: %d report(s) held in memory only, not durable (lost if the agent stops first): %w", len(a.held), a.heldErr))
	}
	return errors.Join(errs...)
}

// outbox returns the agent's outbox, opening it with OpenOutbox if it is not open yet:
// the reports held meanwhile are then moved into it and the refused and retried targets
// stored. It
// returns nil when there is no outbox, with the error that kept OpenOutbox from opening
// it (nil without OpenOutbox). The caller holds a.mu.
func (a *Agent) outbox(ctx context.Context) (*Outbox, error) {
	if a.cfg.Outbox == nil && a.cfg.OpenOutbox != nil {
		o, err := a.cfg.OpenOutbox(ctx)
		if err != nil {
			a.heldErr = err
			return nil, err
		}
		a.cfg.Outbox = o
		for k, t := range a.refused {
			if err := o.SetRefused(ctx, k, t); err != nil {
				a.cfg.Logger.Warn("refused target not stored; it is remembered until the agent restarts", "kind", k, "target", t, "err", err)
			}
		}
		for k, t := range a.retried {
			if err := o.SetRetried(ctx, k, t); err != nil {
				a.cfg.Logger.Warn("retried target not stored; it is remembered until the agent restarts", "kind", k, "target", t, "err", err)
			}
		}
		a.cfg.Logger.Info("outbox opened: reports are durable", "held", len(a.held))
	}
	if a.cfg.Outbox != nil && len(a.held) > 0 {
		a.storeHeld(ctx, a.cfg.Outbox)
	}
	return a.cfg.Outbox, nil
}

// storeHeld moves the held reports into o, oldest first, under their IDs (PutOnce: a
// report o already queued is not queued twice). It stops at the first failure (the
// disk filled up again): the rest stay held for the next attempt.
func (a *Agent) storeHeld(ctx context.Context, o *Outbox) {
	n := 0
	for _, m := range a.held {
		if _, err := o.PutOnce(ctx, m.ID, m.Kind, m.Body, m.Created); err != nil {
			a.heldErr = fmt.Errorf("move them into the outbox: %w", err)
			a.cfg.Logger.Warn("held reports not yet moved into the outbox; retried at the next round", "moved", n, "held", len(a.held)-n, "err", err)
			break
		}
		n++
	}
	a.setHeld(a.held[n:])
	if n > 0 {
		a.cfg.Logger.Info("held reports moved into the outbox: durable", "moved", n)
	}
}

// hold keeps m in memory while there is no outbox (the caller holds a.mu): at most
// MaxHeldReports, the oldest dropped first; a report with m's ID already held is kept
// as it is. It says whether m was added.
func (a *Agent) hold(m Message, why error) bool {
	for _, h := range a.held {
		if h.ID == m.ID {
			return false
		}
	}
	held := append(a.held, m)
	if drop := len(held) - MaxHeldReports; drop > 0 {
		for _, d := range held[:drop] {
			a.cfg.Logger.Error("report dropped: no outbox, and more than MaxHeldReports held in memory", "report", d.ID, "kind", d.Kind, "body", string(d.Body))
		}
		held = held[drop:]
	}
	a.setHeld(held)
	a.cfg.Logger.Warn("report held in memory only, not durable: no outbox (lost if the agent stops before it opens)",
		"report", m.ID, "held", len(held), "err", why)
	return true
}

func (a *Agent) setHeld(held []Message) {
	if len(held) == 0 {
		held = nil
	}
	a.held = held
	a.nheld.Store(int64(len(held)))
}

// HeldReports is the number of reports held in memory only, for want of an outbox
// (AgentConfig.OpenOutbox). Safe to call at any time.
func (a *Agent) HeldReports() int { return int(a.nheld.Load()) }

// sendHeld sends the held reports with the Sender, in batches of up to 100, oldest
// first. Acknowledged reports are dropped; so are refused ones, logged with their body,
// since there is no outbox to set them aside in. The others stay held for the next
// round. It returns the first send error and the refusals (a *RefusedError).
func (a *Agent) sendHeld(ctx context.Context) error {
	dead := map[string]string{}
	var keep []Message
	rest := a.held
	var serr error
	for len(rest) > 0 && serr == nil {
		batch := rest[:min(len(rest), 100)]
		rest = rest[len(batch):]
		var acked []string
		var refused map[string]string
		acked, refused, serr = send(ctx, a.cfg.Sender, batch)
		ok := map[string]bool{}
		for _, id := range acked {
			ok[id] = true
		}
		for _, m := range batch {
			reason, bad := refused[m.ID]
			switch {
			case ok[m.ID]:
			case bad:
				dead[m.ID] = reason
				a.cfg.Logger.Warn("the server refused a held report: dropped (no outbox to set it aside in), not sent again",
					"report", m.ID, "kind", m.Kind, "reason", reason, "body", string(m.Body))
			default:
				keep = append(keep, m)
			}
		}
	}
	a.setHeld(append(keep, rest...))
	if serr != nil {
		serr = fmt.Errorf("held reports: send: %w", serr)
	}
	return errors.Join(serr, refusedErr(dead))
}

// setLastError records the round's update error; a round that checked in, had none
// and holds no version back for a retry clears it.
func (a *Agent) setLastError(err error, checkedIn bool) {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	switch {
	case err != nil:
		msg := err.Error()
		if len(msg) > 1024 {
			msg = msg[:1024]
		}
		a.lastErr = &wire.UpdateError{Kind: ClassifyError(err), Message: msg, At: a.cfg.Now().UTC()}
	case checkedIn && len(a.retries) == 0:
		a.lastErr = nil
	}
}

// LastError is the last update error: why the last round that checked in failed to
// update, nil if it did not fail. Safe to call during a round (from the Director).
func (a *Agent) LastError() *wire.UpdateError {
	a.errMu.Lock()
	defer a.errMu.Unlock()
	if a.lastErr == nil {
		return nil
	}
	e := *a.lastErr
	return &e
}

// rootBehind says whether the refreshed metadata's root is older than the one the
// server announced at this round's check-in (ErrMetadataBehind): a mirror lagging, or
// withholding the root that revoked a stolen key. nil when the server announced none or
// the metadata has it (or a newer one: the server's own cache may lag a publish).
func (a *Agent) rootBehind() error {
	ra, ok := a.cfg.Director.(RootAnnouncer)
	if !ok {
		return nil
	}
	want := ra.AnnouncedRoot()
	have := a.cfg.TUF.RootVersion()
	if want <= 0 || have <= 0 || have >= want {
		return nil
	}
	return fmt.Errorf("%w: %s serves root v%d, the server publishes root v%d: nothing is installed until the metadata source serves it (a mirror lagging, or withholding it)",
		ErrMetadataBehind, a.cfg.TUF.cfg.MetadataURL, have, want)
}

// wantsInstall reports whether any decision asks for an install.
func wantsInstall(desired map[artifact.Kind]wire.SlotDecision) bool {
	for _, d := range desired {
		if d.Action == wire.ActionInstall && d.Target != "" {
			return true
		}
	}
	return false
}

// install takes one kind through install, trial and commit or rollback, and reports.
func (a *Agent) install(ctx context.Context, kind artifact.Kind, d wire.SlotDecision) error {
	return a.installWith(ctx, a.cfg.TUF, kind, d)
}

// dropUnwanted gives up the unfinished installs (downloading, verifying, staged) that
// the director's answer desired no longer asks for: a download a restart interrupted,
// of a version whose rollout was since aborted or superseded, is not finished for
// nothing. Only after an answer: without one, what is wanted is not known, and the
// install stays for a round that knows. The caller holds a.mu.
func (a *Agent) dropUnwanted(ctx context.Context, desired map[artifact.Kind]wire.SlotDecision) {
	for _, k := range rollback.Kinds() {
		s, err := a.cfg.Slots.State(ctx, k)
		if err != nil || s.Pending == nil {
			continue
		}
		switch s.Phase {
		case rollback.Downloading, rollback.Verifying, rollback.Staged:
		default:
			continue
		}
		if d, ok := desired[k]; ok && d.Target == s.Pending.Path {
			continue
		}
		if _, err := a.cfg.Slots.Abort(ctx, k, "no longer asked for by the server"); err != nil {
			a.cfg.Logger.Warn("giving up an unfinished install the server no longer asks for", "kind", k, "pending", s.Pending.Path, "err", err)
			continue
		}
		a.cfg.Logger.Info("unfinished install given up: the server no longer asks for it", "kind", k, "pending", s.Pending.Path, "phase", s.Phase)
	}
}

// supersede gives up kind's unfinished transaction s, one that has not reached its
// trial, so that the target now wanted (path) can be installed instead. Such a
// transaction is not running (installs are serialised by a.mu, and the slot manager's
// lock is free again): it is what an earlier attempt left, a download interrupted past
// its retries or a crash before the trial, for a target no longer wanted (its rollout
// aborted, a newer version published). Kept, it would refuse every other install with
// ErrBusy until it was asked for again. The running version is not touched: only the
// inactive slot is cleared. A trial is never superseded; it ends by its verdict or its
// deadline. It reports whether the transaction was given up.
func (a *Agent) supersede(ctx context.Context, kind artifact.Kind, s rollback.State, path string) bool {
	switch s.Phase {
	case rollback.Downloading, rollback.Verifying, rollback.Staged:
	default:
		return false
	}
	old := ""
	if s.Pending != nil {
		old = s.Pending.Path
	}
	if _, err := a.cfg.Slots.Abort(ctx, kind, "superseded by "+path); err != nil {
		a.cfg.Logger.Warn("superseding an unfinished install", "kind", kind, "pending", old, "target", path, "err", err)
		return false
	}
	a.cfg.Logger.Info("unfinished install superseded", "kind", kind, "pending", old, "phase", s.Phase, "target", path)
	return true
}

// installWith is install with targets resolved and fetched through tuf. d names the
// target and the rollout's gates (d.Gates nil: the signed gates alone).
func (a *Agent) installWith(ctx context.Context, tuf *TUF, kind artifact.Kind, d wire.SlotDecision) error {
	targetPath := d.Target
	rep := wire.Report{DeviceID: a.cfg.DeviceID, RolloutID: d.Rollout, Kind: kind}
	t, meta, err := tuf.Resolve(ctx, kind, targetPath)
	rep.Name, rep.Version = meta.Name, meta.Version
	if err != nil {
		if rep.Name == "" || rep.Version == "" {
			// No trusted metadata describes the target (its role failed to verify, as
			// when a mirror serves a tampered copy, or it is not listed): name it by
			// the path the server asked for. A report without a name and a version is
			// refused by the server, and would hold back every report queued with it.
			if _, name, version, perr := artifact.ParseTargetPath(targetPath); perr == nil {
				rep.Name, rep.Version = name, version
			}
		}
		return a.fail(ctx, kind, targetPath, rep, err)
	}
	if meta.Encryption != nil && d.ContentKey == nil {
		// Fail closed before a byte is fetched: without its key the target cannot be
		// tried, and a key withheld now may be released later.
		why := ErrNoContentKey
		if d.Detail != "" {
			why = fmt.Errorf("%w (%s)", ErrNoContentKey, d.Detail)
		}
		return a.retryLater(ctx, kind, targetPath, rep, why)
	}
	if s, err := a.cfg.Slots.State(ctx, kind); err == nil && s.Abandoned != nil && s.Abandoned.Path == targetPath && d.Reason != wire.ReasonRetry {
		// Asked for again after its trial was given up at a restart (and before the
		// refusal reconcileReports stores took effect: no outbox). An operator's
		// clear-failed (ReasonRetry) installs it once more.
		a.abandoned(ctx, kind, s)
		return fmt.Errorf("%s %s: %s", kind, targetPath, s.Reason)
	}
	fetch := &recordingFetcher{f: tuf.SlotFetcher()}
	s, err := a.cfg.Slots.InstallFrom(ctx, kind, t, fetch)
	if errors.Is(err, rollback.ErrBusy) && a.supersede(ctx, kind, s, targetPath) {
		s, err = a.cfg.Slots.InstallFrom(ctx, kind, t, fetch)
	}
	if err != nil {
		if errors.Is(err, rollback.ErrBusy) {
			return err // a trial under way: try again next round
		}
		if !errors.Is(err, rollback.ErrDowngrade) && s.Phase == rollback.Downloading {
			// Interrupted: the download resumes at the next attempt.
			if errors.Is(err, ErrPaused) {
				// Its time for this round is up (Downloader.MaxTime): the next round
				// checks in and resumes it, neither held back nor reported as a failure.
				a.cfg.Logger.Info("download paused until the next round", "kind", kind, "target", targetPath, "err", err)
				return fmt.Errorf("%s %s: %w", kind, targetPath, err)
			}
			if ctx.Err() == nil && Transient(err) {
				return a.retryLater(ctx, kind, targetPath, rep, err)
			}
			return err
		}
		return a.fail(ctx, kind, targetPath, rep, err)
	}
	if s.Phase == rollback.Failed {
		// The slot gave up the download; whether the version is at fault depends on why.
		if fetch.err != nil && Transient(fetch.err) {
			return a.retryLater(ctx, kind, targetPath, rep, fetch.err)
		}
		return a.fail(ctx, kind, targetPath, rep, errors.New(s.Reason))
	}
	rep.Bytes = t.Length
	if fetch.info == nil {
		// Fetched before this call: by the slot manager's Recover at start, resuming an
		// install a kill interrupted (a delta's apply, say, then the full target).
		for _, c := range []*TUF{tuf, a.cfg.TUF} {
			if info, ok := c.takeFetched(t.Path); ok {
				fetch.info = &info
				break
			}
		}
	}
	if fetch.info != nil {
		rep.Bytes, rep.Delta, rep.BytesSaved = fetch.info.Fetched, fetch.info.Method, fetch.info.Saved
		rep.DeltaFallback = fetch.info.Fallback
	}
	if s.Phase == rollback.Staged {
		if s, err = a.cfg.Slots.BeginTrial(ctx, kind, a.cfg.TrialTimeout); err != nil {
			return err
		}
	}
	if s.Phase != rollback.Trial {
		return nil
	}
	v := Verdict{Reason: "no judge configured"}
	if a.cfg.Judge != nil {
		tctx, cancel := context.WithDeadline(ctx, s.Deadline)
		v = a.cfg.Judge.Judge(tctx, Trial{Kind: kind, Payload: a.cfg.Slots.Payload(kind, s.Inactive()), Target: t, Meta: meta,
			Gates: artifact.CommitGates(meta.Gates, d.Gates), Rollout: d.Rollout, ContentKey: d.ContentKey, ProbeKey: d.ProbeKey, TUF: tuf})
		cancel()
	}
	pass := v.Pass
	rep.Probe = v.Probe
	if s, err = a.cfg.Slots.Confirm(ctx, kind, pass, v.Reason); err != nil {
		if s.Phase != rollback.Committed {
			return err
		}
		// The commit is persisted; a step after it failed (the TPM refused the floor's
		// NV write, the disk was full for the current pointer) and the slot manager's
		// Tick retries it. The version is committed all the same: promote it and report
		// it now, or the device would claim it while serving the old one.
		a.cfg.Logger.Warn("committed; a step after the commit failed and is retried", "kind", kind, "target", targetPath, "err", err)
	}
	var hookErr error
	o, hooked := a.cfg.Judge.(Outcome)
	switch s.Phase {
	case rollback.Committed:
		delete(a.retries, string(kind))
		rep.Outcome = wire.OutcomeCommitted
		rep.ID = commitReportID(kind, s.Seq, s.Current)
		if hooked {
			hookErr = o.Committed(ctx, kind, t, meta)
		}
	default:
		limit := MaxTrialRetries
		if errors.Is(v.Err, ErrDiedInTrial) {
			limit = MaxTrialDeaths
		}
		if r := a.retries[string(kind)]; !pass && Transient(v.Err) && (r.target != targetPath || r.attempts < limit) {
			if hooked {
				hookErr = o.RolledBack(ctx, kind, t, meta)
			}
			why := fmt.Errorf("trial: %w: %w", ErrRuntimeDown, v.Err)
			if errors.Is(v.Err, ErrContentKeyUnusable) || errors.Is(v.Err, ErrRuntimeDown) || errors.Is(v.Err, ErrDiedInTrial) {
				why = fmt.Errorf("trial: %w", v.Err)
			}
			err := a.retryLater(ctx, kind, targetPath, rep, why)
			return errors.Join(err, hookErr)
		}
		rep.Outcome, rep.Cause = wire.OutcomeProbeFailed, s.Reason
		if pass {
			rep.Outcome = wire.OutcomeRolledBack
		}
		delete(a.retries, string(kind))
		a.refuse(ctx, kind, targetPath)
		if hooked {
			hookErr = o.RolledBack(ctx, kind, t, meta)
		}
	}
	a.report(ctx, rep)
	if hookErr != nil {
		return fmt.Errorf("%s %s: after %s: %w", kind, t.Version, rep.Outcome, hookErr)
	}
	return nil
}

// refuse records targetPath as kind's refused target ("" forgets it), in memory and in
// the Outbox. Failing to store it (a full disk) is logged: the agent then remembers it
// until it restarts, as without an Outbox.
func (a *Agent) refuse(ctx context.Context, kind artifact.Kind, targetPath string) {
	if targetPath == "" {
		if _, ok := a.refused[string(kind)]; !ok {
			return
		}
		delete(a.refused, string(kind))
	} else {
		a.refused[string(kind)] = targetPath
	}
	if a.cfg.Outbox != nil {
		// Without one, outbox stores a.refused when it opens.
		if err := a.cfg.Outbox.SetRefused(ctx, string(kind), targetPath); err != nil {
			a.cfg.Logger.Warn("refused target not stored; it is remembered until the agent restarts", "kind", kind, "target", targetPath, "err", err)
		}
	}
}

// setRetried records (or, with "", forgets) the target of kind installed once more
// because the server said its failure was cleared; with an Outbox it is stored there
// too, so that a restart (a power cut at the edge, before the server heard of a second
// failure) does not make it one more try.
func (a *Agent) setRetried(ctx context.Context, kind artifact.Kind, targetPath string) {
	if a.retried[string(kind)] == targetPath {
		return
	}
	if targetPath == "" {
		delete(a.retried, string(kind))
	} else {
		a.retried[string(kind)] = targetPath
	}
	if a.cfg.Outbox != nil {
		if err := a.cfg.Outbox.SetRetried(ctx, string(kind), targetPath); err != nil {
			a.cfg.Logger.Warn("retried target not stored; it is remembered until the agent restarts", "kind", kind, "target", targetPath, "err", err)
		}
	}
}

// loadRefused loads the refused and retried targets an earlier agent stored, once.
func (a *Agent) loadRefused(ctx context.Context) {
	if a.refusedLoaded || a.cfg.Outbox == nil {
		return
	}
	stored, err := a.cfg.Outbox.Refused(ctx)
	if err != nil {
		a.cfg.Logger.Warn("refused targets not loaded", "err", err)
		return
	}
	retried, err := a.cfg.Outbox.Retried(ctx)
	if err != nil {
		a.cfg.Logger.Warn("retried targets not loaded", "err", err)
		return
	}
	a.refusedLoaded = true
	for k, t := range stored {
		if _, ok := a.refused[k]; !ok {
			a.refused[k] = t
		}
	}
	for k, t := range retried {
		if _, ok := a.retried[k]; !ok {
			a.retried[k] = t
		}
	}
}

func (a *Agent) fail(ctx context.Context, kind artifact.Kind, targetPath string, rep wire.Report, err error) error {
	if Transient(err) {
		return a.retryLater(ctx, kind, targetPath, rep, err)
	}
	delete(a.retries, string(kind))
	a.refuse(ctx, kind, targetPath)
	rep.Outcome, rep.Cause = wire.OutcomeInstallError, err.Error()
	a.report(ctx, rep)
	return err
}

// retryLater holds targetPath back for its backoff after a failure with a transient
// cause (see Transient), and reports the failure as infrastructure: the version is not
// at fault, so it is neither refused here nor marked Failed by the server.
func (a *Agent) retryLater(ctx context.Context, kind artifact.Kind, targetPath string, rep wire.Report, err error) error {
	r := a.retries[string(kind)]
	if r.target != targetPath {
		r = retry{target: targetPath}
	}
	r.attempts++
	wait := a.retryBackoff(r.attempts)
	r.notBefore = a.cfg.Now().Add(wait)
	// Reported at attempts 1, 2, 4, 8, … and whenever the cause changes: a target that
	// stays out of reach (a mirror that never gets it, a broken bundle) is retried hourly
	// for as long as it is desired, and a report at every attempt made about 24 a day
	// for each such device, for good. The round's error still says each attempt.
	cause := causeShape(err.Error())
	tell := r.attempts&(r.attempts-1) == 0 || cause != r.reported
	if tell {
		r.reported = cause
	}
	a.retries[string(kind)] = r
	rep.Outcome = wire.OutcomeInfrastructure
	rep.Cause = fmt.Sprintf("%v (attempt %d, retrying in %v)", err, r.attempts, wait)
	if WrongBytes(err) {
		// Said first: the server groups causes by their first 80 characters, which a
		// URL would fill.
		rep.Cause = "served bytes do not match what is signed: " + rep.Cause
	}
	if tell {
		a.report(ctx, rep)
	} else {
		a.cfg.Logger.Info("install failed again, same cause: not reported again until attempt a power of two", "kind", kind, "version", rep.Version, "attempt", r.attempts, "cause", cause)
	}
	return fmt.Errorf("%s %s: attempt %d failed, retrying in %v: %w", kind, targetPath, r.attempts, wait, err)
}

// causeShape is a cause without what changes at every attempt of the same failure
// (ports, offsets, byte counts, times: runs of 4 or more digits), for telling whether
// the cause changed: "dial tcp 10.0.0.2:41234: connection refused" at every attempt
// from another local port was a new cause each time, and reported each time. HTTP
// statuses (3 digits) and versions stay.
func causeShape(cause string) string {
	b := []byte(cause)
	out := b[:0:0]
	for i := 0; i < len(b); {
		j := i
		for j < len(b) && b[j] >= '0' && b[j] <= '9' {
			j++
		}
		switch {
		case j-i >= 4:
			out = append(out, '#')
			i = j
		case j > i:
			out = append(out, b[i:j]...)
			i = j
		default:
			out = append(out, b[i])
			i++
		}
	}
	return string(out)
}

// report queues rep in the outbox: under rep.ID once when it is set (derived from what is
// reported), else under a random ID.
func (a *Agent) report(ctx context.Context, rep wire.Report) {
	rep.At = a.cfg.Now().UTC()
	// A cause may carry what a server or mirror said (an error body): bounded, so that
	// one that never acknowledges reports and varies its words cannot grow the outbox
	// by 64 KiB a report (found from outside, 2 Dec).
	rep.Cause = printable.Text(rep.Cause, maxReportCause)
	a.cfg.Logger.Info("install report", "kind", rep.Kind, "version", rep.Version, "outcome", rep.Outcome, "cause", rep.Cause)
	if _, err := a.queue(ctx, rep); err != nil {
		a.cfg.Logger.Error("store report", "err", err)
	}
}

// maxReportCause bounds the cause an install report carries.
const maxReportCause = 1024

// queue stores rep in the outbox, under rep.ID once when it is set (Outbox.PutOnce),
// else under a random ID; without an outbox, or when the outbox cannot store it (a
// full disk), it holds it in memory (see AgentConfig.OpenOutbox), and with neither an
// outbox nor OpenOutbox it does nothing. It says whether rep was
// queued (false: a report with its ID was queued before).
func (a *Agent) queue(ctx context.Context, rep wire.Report) (bool, error) {
	o, why := a.outbox(ctx)
	switch {
	case o != nil && rep.ID != "":
		stored, err := o.PutOnce(ctx, rep.ID, "install", rep, a.cfg.Now())
		if err == nil {
			return stored, nil
		}
		why = err
	case o != nil:
		_, err := o.Put(ctx, "install", rep, a.cfg.Now())
		if err == nil {
			return true, nil
		}
		why = err
	case a.cfg.OpenOutbox == nil:
		return false, nil
	}
	// No outbox, or one that could not store it (a full disk): held in memory, sent
	// from there, and moved into the outbox at the next round that can.
	b, err := encodeReport("install", rep)
	if err != nil {
		return false, err
	}
	id := rep.ID
	if id == "" {
		if id, err = newReportID(); err != nil {
			return false, err
		}
	}
	return a.hold(Message{ID: id, Kind: "install", Body: b, Created: a.cfg.Now()}, why), nil
}

// commitReportID names the report of the commit of t that was the slot's seq-th
// transition: the same after a restart, so a commit is reported exactly once. The
// target's digest is part of it because seq alone repeats: a device whose state.db is
// lost (re-imaged, wiped, adopted) counts its transitions from 0 again, and its first
// commit is always the 5th transition. The server remembers report IDs per device for
// good and the outbox per ID, so "commit-model-5" for another version would be taken
// for a report already delivered and dropped.
func commitReportID(kind artifact.Kind, seq uint64, t *rollback.Target) string {
	id := fmt.Sprintf("commit-%s-%d", kind, seq)
	if t != nil && len(t.SHA256) >= 16 {
		id += "-" + t.SHA256[:16]
	}
	return id
}

// abandoned reports and refuses the version whose trial the slots' recovery gave up
// after a restart (rollback.State.Abandoned: interrupted by restarts
// rollback.MaxTrialStarts times, or past its deadline): the process that ran the trial
// is gone, and without this the version was installed and tried again at every boot,
// the rollout never hearing of it. The report's ID is derived from the transition, so
// a restart before the refusal is stored does not report it twice.
func (a *Agent) abandoned(ctx context.Context, kind artifact.Kind, s rollback.State) {
	t := s.Abandoned
	_, name, _, _ := artifact.ParseTargetPath(t.Path)
	id := fmt.Sprintf("abandoned-%s-%d", kind, s.Seq)
	if len(t.SHA256) >= 16 {
		id += "-" + t.SHA256[:16]
	}
	a.refuse(ctx, kind, t.Path)
	rep := wire.Report{DeviceID: a.cfg.DeviceID, Kind: kind, Name: name, Version: t.Version, Outcome: wire.OutcomeProbeFailed,
		Cause: s.Reason, At: a.cfg.Now().UTC(), ID: id}
	if stored, err := a.queue(ctx, rep); err != nil {
		a.cfg.Logger.Error("store report", "err", err)
	} else if stored {
		a.cfg.Logger.Warn("trial given up after a restart: the version is refused", "kind", kind, "version", t.Version, "reason", s.Reason)
	}
}

// reconcileReports queues the report of a commit the agent did not get to report (it
// was killed between saving the commit and queuing the report), and of a trial the
// slots' recovery gave up (see abandoned). A commit that was reported is not reported
// again: its report ID is derived from the commit.
func (a *Agent) reconcileReports(ctx context.Context) {
	if a.cfg.Outbox == nil && a.cfg.OpenOutbox == nil {
		return
	}
	for _, k := range rollback.Kinds() {
		s, err := a.cfg.Slots.State(ctx, k)
		if err == nil && s.Abandoned != nil {
			a.abandoned(ctx, k, s)
		}
		if err != nil || s.Phase != rollback.Committed || s.Current == nil {
			continue
		}
		_, name, _, _ := artifact.ParseTargetPath(s.Current.Path)
		rep := wire.Report{DeviceID: a.cfg.DeviceID, Kind: k, Name: name, Version: s.Current.Version, Outcome: wire.OutcomeCommitted,
			Bytes: s.Current.Length, At: a.cfg.Now().UTC(), ID: commitReportID(k, s.Seq, s.Current)}
		if stored, err := a.queue(ctx, rep); err != nil {
			a.cfg.Logger.Error("store report", "err", err)
		} else if stored {
			a.cfg.Logger.Info("install report recovered after a restart", "kind", k, "version", rep.Version)
		}
	}
}
