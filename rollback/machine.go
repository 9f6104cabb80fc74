// Package rollback owns the device's A/B slots: the crash-safe install transaction of
// DESIGN.md as a pure state machine (Step), and a thin shell (Manager) that persists every
// transition in sqlite before acting on it.
//
// Invariant: for each slot kind, the active slot always holds a complete, verified,
// previously committed version. New versions are only ever written into the inactive
// slot, and the active slot changes only on commit.
//
// Transitions (Step), with the actions the shell performs after persisting each:
//
//	idle|committed|rolled_back|failed --install--> downloading   clear-slot, download
//	downloading --downloaded--> verifying                        verify
//	verifying   --verified-->   staged
//	downloading|verifying --failed--> failed                     clear-slot
//	downloading|verifying|staged --abort--> failed               clear-slot
//	staged      --begin-trial--> trial                           start-trial
//	trial       --trial-passed--> committed (active flips)       stop-trial, raise-floor, activate
//	trial       --trial-failed|deadline--> rolled_back           stop-trial, clear-slot, activate(old)
//	any         --recover-->    (same)                           what the phase still needs
//	idle, no state --adopt-->   committed                        raise-floor, clear-slot, activate
//
// An install below the anti-rollback floor, or older than the committed version, is
// refused before anything is written (*DowngradeError). The floor rises only on commit,
// so rolling back to the committed slot is never a downgrade.
//
// Crash points (test builds with -tags crashpoints, see package crashpoint) sit between
// each persisted transition and its actions.
package rollback

import (
	"errors"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Slot names one of the two slots of a kind.
type Slot string

const (
	SlotA Slot = "a"
	SlotB Slot = "b"
)

// Other returns the slot that is not s. The other slot of "" (no slot yet) is a.
func (s Slot) Other() Slot {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// Phase is where a kind's install transaction stands.
type Phase string

const (
	Idle        Phase = "idle"        // nothing installed yet, nothing in progress
	Downloading Phase = "downloading" // streaming Pending into the inactive slot
	Verifying   Phase = "verifying"   // checking the written slot against Pending's length and hashes
	Staged      Phase = "staged"      // inactive slot holds a verified Pending, waiting for its trial
	Trial       Phase = "trial"       // Pending runs from the inactive slot until confirmed or Deadline
	Committed   Phase = "committed"   // Active holds the version last committed; nothing in progress
	RolledBack  Phase = "rolled_back" // the last trial failed; Active still holds the committed version
	Failed      Phase = "failed"      // the last download or verification failed; Active untouched
)

// Kinds returns the slot kinds: the ones installed into A/B slots.
func Kinds() []artifact.Kind { return []artifact.Kind{artifact.KindModel, artifact.KindRuntime} }

// Target is what TUF verified about a version to install: where it lives, its length and
// sha256, its version and the anti-rollback floor of that version.
type Target struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	Floor   uint64 `json:"floor"`
	Length  int64  `json:"length"`
	SHA256  string `json:"sha256"` // lower-case hex
}

// State is the persisted state of one kind's slots. The zero State (with Kind set) is Idle
// with no active slot.
type State struct {
	Kind    artifact.Kind `json:"kind"`
	Phase   Phase         `json:"phase"`
	Seq     uint64        `json:"seq"`              // transitions so far
	Active  Slot          `json:"active,omitempty"` // "" until the first commit
	Current *Target       `json:"current,omitempty"`
	Pending *Target       `json:"pending,omitempty"` // the version being installed into Active.Other()
	// Deadline bounds the trial: past it without a pass, the trial rolls back.
	Deadline time.Time `json:"deadline,omitzero"`
	// Reason says why the last transaction failed or rolled back.
	Reason string `json:"reason,omitempty"`
	// TrialStarts counts the starts of Pending's trial: 1 at its beginning, one more at
	// each restart of the agent that found it under way and resumed it. A trial that
	// a restart interrupts MaxTrialStarts times is given up (see Abandoned): a version
	// that takes the device down during its trial (a kernel panic, a watchdog reset, the
	// OOM killer taking the agent) was otherwise tried again at every boot, for good,
	// and never reported.
	TrialStarts int `json:"trial_starts,omitempty"`
	// Abandoned is the version whose trial recovery gave up after a restart: interrupted
	// MaxTrialStarts times, or past its deadline. Nothing reported its failure (the
	// process that ran the trial is gone), so the update loop does, and refuses it,
	// when it is next asked to install it. The next install clears it.
	Abandoned *Target `json:"abandoned,omitempty"`
}

// MaxTrialStarts bounds the starts of one trial (the first and the resumptions after
// restarts); recovery gives up the version at the restart after the last.
const MaxTrialStarts = 3

// Inactive is the slot a new version is written to.
func (s State) Inactive() Slot { return s.Active.Other() }

func (s State) String() string {
	out := fmt.Sprintf("%s %s seq=%d active=%s", s.Kind, s.phase(), s.Seq, orDash(string(s.Active)))
	if s.Current != nil {
		out += " current=" + s.Current.Version
	}
	if s.Pending != nil {
		out += " pending=" + s.Pending.Version
	}
	if !s.Deadline.IsZero() {
		out += " deadline=" + s.Deadline.UTC().Format(time.RFC3339)
	}
	if s.TrialStarts > 1 {
		out += fmt.Sprintf(" trial-starts=%d", s.TrialStarts)
	}
	if s.Abandoned != nil {
		out += " abandoned=" + s.Abandoned.Version
	}
	if s.Reason != "" {
		out += fmt.Sprintf(" reason=%q", s.Reason)
	}
	return out
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ActionKind is a side effect the shell must perform after persisting a transition.
type ActionKind string

const (
	// ClearSlot deletes everything in Slot. It comes before any write to that slot, so a
	// half-written slot can never be mistaken for a complete one.
	ClearSlot ActionKind = "clear-slot"
	// Download streams Target into Slot, resuming what an earlier attempt wrote.
	Download ActionKind = "download"
	// Verify checks the file in Slot against Target's length and sha256 (the shell
	// takes its fetcher's Proof from the same call instead of reading the file again).
	Verify ActionKind = "verify"
	// StartTrial starts Target from Slot beside the serving version, until Deadline. The
	// shell first reads and hashes a slot it did not verify itself (staged by an earlier
	// process): one that no longer holds Target fails the trial.
	StartTrial ActionKind = "start-trial"
	// StopTrial stops whatever runs from Slot for a trial.
	StopTrial ActionKind = "stop-trial"
	// RaiseFloor raises the kind's anti-rollback floor to Floor (idempotent).
	RaiseFloor ActionKind = "raise-floor"
	// Activate makes Slot (holding Target) the one served.
	Activate ActionKind = "activate"
)

// Action is one side effect, in the order returned.
type Action struct {
	Kind     ActionKind
	Slot     Slot
	Target   *Target
	Floor    uint64
	Deadline time.Time
}

func (a Action) String() string {
	out := string(a.Kind)
	if a.Slot != "" {
		out += " slot=" + string(a.Slot)
	}
	if a.Target != nil {
		out += " version=" + a.Target.Version
	}
	if a.Kind == RaiseFloor {
		out += fmt.Sprintf(" floor=%d", a.Floor)
	}
	if !a.Deadline.IsZero() {
		out += " deadline=" + a.Deadline.UTC().Format(time.RFC3339)
	}
	return out
}

// Event is an input to Step. The concrete types are the Ev* structs.
type Event interface{ event() string }

// EvInstall starts installing Target. Floor is the kind's current anti-rollback floor.
type EvInstall struct {
	Target Target
	Floor  uint64
}

// EvDownloaded says the Download action completed: the slot file is in place.
type EvDownloaded struct{}

// EvVerified says the Verify action found the slot matching the target.
type EvVerified struct{}

// EvFailed says the Download or Verify action failed for good (after its retries).
type EvFailed struct{ Reason string }

// EvAbort gives up a transaction that has not reached its trial.
type EvAbort struct{ Reason string }

// EvBeginTrial starts the trial of a staged version, bounded by Timeout from now.
type EvBeginTrial struct{ Timeout time.Duration }

// EvTrialPassed is the explicit pass of the trial. Floor is the kind's current floor.
type EvTrialPassed struct{ Floor uint64 }

// EvTrialFailed is an explicit failure of the trial.
type EvTrialFailed struct{ Reason string }

// EvTick lets time pass: a trial past its deadline rolls back.
type EvTick struct{}

// EvAdopt takes over a committed version found on disk when the state was lost (the
// sqlite file wiped or replaced): Target is what the slots/<kind>/current pointer names,
// already checked against the file in Slot. Floor is the kind's current floor; a target
// below it is refused like any downgrade.
type EvAdopt struct {
	Target Target
	Slot   Slot
	Floor  uint64
}

// EvRecover is the first event after the agent starts: it re-issues what the persisted
// state still needs, and rolls back a trial that is past its deadline. Restart says the
// agent restarted since the state was persisted (the first recovery of a process): a
// trial found under way then counts one more start (State.TrialStarts). A later
// recovery in the same process (Manager.Tick finishing a commit, RecoverLocal then
// Recover) re-issues what is needed without counting.
type EvRecover struct{ Restart bool }

func (EvInstall) event() string     { return "install" }
func (EvDownloaded) event() string  { return "downloaded" }
func (EvVerified) event() string    { return "verified" }
func (EvFailed) event() string      { return "failed" }
func (EvAbort) event() string       { return "abort" }
func (EvBeginTrial) event() string  { return "begin-trial" }
func (EvTrialPassed) event() string { return "trial-passed" }
func (EvTrialFailed) event() string { return "trial-failed" }
func (EvTick) event() string        { return "tick" }
func (EvRecover) event() string     { return "recover" }
func (EvAdopt) event() string       { return "adopt" }

// ErrBadTransition is returned (wrapped) by Step for an event the current phase does not accept.
var ErrBadTransition = errors.New("event not allowed in this phase")

// ErrBusy is returned (wrapped) by Step for an install while another is in progress.
var ErrBusy = errors.New("another install is in progress")

// DowngradeError refuses a validly signed version below the anti-rollback floor.
type DowngradeError struct {
	Kind    artifact.Kind
	Version string
	Floor   uint64 // the target's floor
	Current uint64 // the kind's floor
	// Installed is the committed version, when the target is older than it.
	Installed string
}

func (e *DowngradeError) Error() string {
	if e.Installed != "" {
		return fmt.Sprintf("refusing %s version %s: older than the committed version %s", e.Kind, e.Version, e.Installed)
	}
	return fmt.Sprintf("refusing %s version %s: its anti-rollback floor %s is below the device's floor %s",
		e.Kind, e.Version, floorString(e.Floor), floorString(e.Current))
}

// ErrDowngrade matches any *DowngradeError with errors.Is.
var ErrDowngrade = errors.New("downgrade refused")

func (e *DowngradeError) Is(target error) bool { return target == ErrDowngrade }

func floorString(f uint64) string {
	return fmt.Sprintf("%d.%d.%d", f>>40, (f>>20)&(1<<20-1), f&(1<<20-1))
}

// Step is the install transaction: given the persisted state, an event and the time, it
// returns the next state and the actions to perform, in order, after persisting it. It
// does no I/O. On error the state is returned unchanged and there are no actions.
func Step(s State, ev Event, now time.Time) (State, []Action, error) {
	n, acts, err := step(s, ev, now)
	if err != nil {
		return s, nil, fmt.Errorf("%s %s in phase %s: %w", s.Kind, ev.event(), s.phase(), err)
	}
	if !sameState(n, s) {
		n.Seq = s.Seq + 1
	}
	return n, acts, nil
}

func (s State) phase() Phase {
	if s.Phase == "" {
		return Idle
	}
	return s.Phase
}

func sameState(a, b State) bool {
	return a.Phase == b.Phase && a.Active == b.Active && a.Current == b.Current &&
		a.Pending == b.Pending && a.Deadline.Equal(b.Deadline) && a.Reason == b.Reason &&
		a.TrialStarts == b.TrialStarts && a.Abandoned == b.Abandoned
}

func step(s State, ev Event, now time.Time) (State, []Action, error) {
	s.Phase = s.phase()
	inactive := s.Inactive()
	switch e := ev.(type) {
	case EvInstall:
		t := e.Target
		switch s.Phase {
		case Downloading, Verifying, Staged, Trial:
			if s.Pending != nil && *s.Pending == t {
				// The same install again: resume what is under way.
				switch s.Phase {
				case Downloading, Verifying:
					return s.recover(now, false)
				}
				return s, nil, nil
			}
			return s, nil, ErrBusy
		}
		if s.Current != nil && *s.Current == t {
			return s, nil, nil // already installed
		}
		if err := s.checkFloor(t, e.Floor); err != nil {
			return s, nil, err
		}
		if t.Length < 0 || len(t.SHA256) != 64 {
			return s, nil, fmt.Errorf("target %s: want a length and a sha256", t.Path)
		}
		s.Phase, s.Pending, s.Reason, s.Deadline = Downloading, &t, "", time.Time{}
		s.TrialStarts, s.Abandoned = 0, nil
		return s, []Action{{Kind: ClearSlot, Slot: inactive}, {Kind: Download, Slot: inactive, Target: &t}}, nil

	case EvDownloaded:
		if s.Phase != Downloading {
			return s, nil, ErrBadTransition
		}
		s.Phase = Verifying
		return s, []Action{{Kind: Verify, Slot: inactive, Target: s.Pending}}, nil

	case EvVerified:
		if s.Phase != Verifying {
			return s, nil, ErrBadTransition
		}
		s.Phase = Staged
		return s, nil, nil

	case EvFailed:
		if s.Phase != Downloading && s.Phase != Verifying {
			return s, nil, ErrBadTransition
		}
		return s.fail(e.Reason), []Action{{Kind: ClearSlot, Slot: inactive}}, nil

	case EvAbort:
		if s.Phase != Downloading && s.Phase != Verifying && s.Phase != Staged {
			return s, nil, ErrBadTransition
		}
		return s.fail("aborted: " + e.Reason), []Action{{Kind: ClearSlot, Slot: inactive}}, nil

	case EvBeginTrial:
		if s.Phase != Staged {
			return s, nil, ErrBadTransition
		}
		if e.Timeout <= 0 {
			return s, nil, errors.New("trial timeout must be positive")
		}
		s.Phase, s.Deadline, s.TrialStarts = Trial, now.Add(e.Timeout), 1
		return s, []Action{{Kind: StartTrial, Slot: inactive, Target: s.Pending, Deadline: s.Deadline}}, nil

	case EvTrialPassed:
		if s.Phase != Trial {
			return s, nil, ErrBadTransition
		}
		if !now.Before(s.Deadline) {
			return s.rollback("trial passed after its deadline")
		}
		if s.Pending.Floor < e.Floor {
			// The floor rose during the trial (another path raised the TPM counter):
			// committing now would be a downgrade.
			s, acts, _ := s.rollback("floor rose above the trial version")
			return s, acts, nil
		}
		t := s.Pending
		s.Phase, s.Active, s.Current, s.Pending, s.Deadline, s.Reason = Committed, inactive, t, nil, time.Time{}, ""
		s.TrialStarts = 0
		return s, []Action{
			{Kind: StopTrial, Slot: s.Active},
			{Kind: RaiseFloor, Floor: t.Floor},
			{Kind: Activate, Slot: s.Active, Target: t},
		}, nil

	case EvTrialFailed:
		if s.Phase != Trial {
			return s, nil, ErrBadTransition
		}
		return s.rollback("trial failed: " + e.Reason)

	case EvTick:
		if s.Phase == Trial && !now.Before(s.Deadline) {
			return s.rollback("trial did not pass before its deadline")
		}
		return s, nil, nil

	case EvRecover:
		return s.recover(now, e.Restart)

	case EvAdopt:
		if s.Phase != Idle || s.Active != "" || (e.Slot != SlotA && e.Slot != SlotB) {
			return s, nil, ErrBadTransition
		}
		if err := s.checkFloor(e.Target, e.Floor); err != nil {
			return s, nil, err
		}
		t := e.Target
		s.Phase, s.Active, s.Current, s.Reason = Committed, e.Slot, &t, "adopted after the state was lost"
		return s, []Action{{Kind: RaiseFloor, Floor: t.Floor}, {Kind: ClearSlot, Slot: e.Slot.Other()}, {Kind: Activate, Slot: e.Slot, Target: &t}}, nil
	}
	return s, nil, fmt.Errorf("unknown event %T", ev)
}

// checkFloor refuses t if it is below the kind's floor or older than the committed
// version (which also orders pre-releases, which share their release's floor).
func (s State) checkFloor(t Target, floor uint64) error {
	older := false
	if s.Current != nil {
		v, err1 := artifact.ParseVersion(t.Version)
		c, err2 := artifact.ParseVersion(s.Current.Version)
		if err1 != nil || err2 != nil {
			return fmt.Errorf("target %s: %w", t.Path, errors.Join(err1, err2))
		}
		older = v.Compare(c) < 0
		floor = max(floor, s.Current.Floor)
	}
	if older || t.Floor < floor {
		e := &DowngradeError{Kind: s.Kind, Version: t.Version, Floor: t.Floor, Current: floor}
		if older {
			e.Installed = s.Current.Version
		}
		return e
	}
	return nil
}

func (s State) fail(reason string) State {
	s.Phase, s.Pending, s.Reason, s.Deadline, s.TrialStarts = Failed, nil, reason, time.Time{}, 0
	return s
}

func (s State) rollback(reason string) (State, []Action, error) {
	slot := s.Inactive()
	s.Phase, s.Pending, s.Reason, s.Deadline, s.TrialStarts = RolledBack, nil, reason, time.Time{}, 0
	acts := []Action{{Kind: StopTrial, Slot: slot}, {Kind: ClearSlot, Slot: slot}}
	if s.Current != nil {
		acts = append(acts, Action{Kind: Activate, Slot: s.Active, Target: s.Current})
	}
	return s, acts, nil
}

// recover re-issues the actions a persisted phase still needs. Every action is idempotent,
// so re-issuing one that completed before the crash is harmless.
func (s State) recover(now time.Time, restart bool) (State, []Action, error) {
	inactive := s.Inactive()
	var acts []Action
	switch s.Phase {
	case Downloading:
		// Resume: no ClearSlot, the downloader keeps what it durably wrote.
		return s, []Action{{Kind: Download, Slot: inactive, Target: s.Pending}}, nil
	case Verifying:
		return s, []Action{{Kind: Verify, Slot: inactive, Target: s.Pending}}, nil
	case Staged:
		return s, nil, nil
	case Trial:
		abandoned := s.Pending
		switch {
		case !now.Before(s.Deadline):
			s, acts, err := s.rollback("trial did not pass before its deadline (agent restarted)")
			s.Abandoned = abandoned
			return s, acts, err
		case restart && s.TrialStarts >= MaxTrialStarts:
			s, acts, err := s.rollback(fmt.Sprintf("trial interrupted by a restart of the agent or device %d times: the version may be taking the device down", s.TrialStarts))
			s.Abandoned = abandoned
			return s, acts, err
		case restart:
			s.TrialStarts++
		}
		return s, []Action{{Kind: StartTrial, Slot: inactive, Target: s.Pending, Deadline: s.Deadline}}, nil
	case Committed:
		// The floor may not have been raised before the crash.
		acts = append(acts, Action{Kind: RaiseFloor, Floor: s.Current.Floor})
	case Failed, RolledBack:
		acts = append(acts, Action{Kind: StopTrial, Slot: inactive})
	}
	// Nothing in progress: whatever is in the inactive slot is discarded.
	acts = append(acts, Action{Kind: ClearSlot, Slot: inactive})
	if s.Current != nil {
		acts = append(acts, Action{Kind: Activate, Slot: s.Active, Target: s.Current})
	}
	return s, acts, nil
}
