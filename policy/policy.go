// Package policy decides what each device of the fleet should run.
//
// A Policy is loaded from YAML files (see Load and the format described in
// testdata/example/fleet.yaml). Everything else in the package is pure: Evaluate maps a
// policy, one device's facts, the rollouts' states and the current time to a Decision;
// Plan maps a rollout's state, the devices' reports and the current time to a new state
// and the events to record. Neither reads a clock, a file or the network, so the server
// calls them at check-in and on a ticker, persists what they return, then acts on it.
//
// The only I/O in the package is Load (reads a directory) and Watcher (reloads it when it
// changes).
package policy

import (
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/reference"
)

// Policy is a loaded, validated policy. It is immutable once returned by Load or Parse
// and safe for concurrent use.
type Policy struct {
	// Attestation is what a device must prove before it is given a new target.
	Attestation Attestation
	// Gates are the default commit gates of every rollout that sets none of its own.
	Gates artifact.Gates
	// Windows are the named maintenance windows, by name.
	Windows map[string]*Window
	// Maintenance assigns a window to devices: the first entry whose selector matches a
	// device gives its window. A device no entry matches may install at any time.
	Maintenance []Maintenance
	// Rollouts in file order (files in name order). For each slot kind the first rollout
	// that selects a device and whose current wave includes it decides its target, so
	// list newer rollouts before the ones they supersede.
	Rollouts []*Rollout
	// Digest is the hex SHA-256 over the files' names and contents; equal policies
	// loaded from equal files have equal digests. Decisions record it.
	Digest string
	// Files are the paths the policy was loaded from.
	Files []string
}

// Rollout returns the rollout with the given ID, or nil.
func (p *Policy) Rollout(id string) *Rollout {
	for _, r := range p.Rollouts {
		if r.ID == id {
			return r
		}
	}
	return nil
}

// DefaultMaxAttestationAge is the freshness bound used when a policy sets none.
const DefaultMaxAttestationAge = time.Hour

// Attestation is the attestation requirement for installing anything.
type Attestation struct {
	// Disabled turns the requirement off (development fleets only). The zero value
	// requires a trusted verdict.
	Disabled bool
	// MaxAge is how old the device's last trusted verdict may be. Zero means
	// DefaultMaxAttestationAge.
	MaxAge time.Duration
	// Boot is the measured-boot policy: the first entry whose hardware classes include
	// the device's (reference.Select) says what its boot event log must prove (Secure
	// Boot, allowed boot loaders and kernels, forbidden digests, PCR values). Empty: no
	// boot log is required (one a device sends must still replay). A device that
	// matches no entry of a non-empty list is untrusted.
	Boot []reference.Boot
	// Runtime is the runtime-integrity policy: what the device's IMA measurement list
	// (PCR 10) must show of the agent, its runtime, the ONNX Runtime library and, with
	// Enforce, everything else that ran. Nil: no IMA list is required (one a device
	// sends must still replay).
	Runtime *reference.Runtime
}

func (a Attestation) maxAge() time.Duration {
	if a.MaxAge <= 0 {
		return DefaultMaxAttestationAge
	}
	return a.MaxAge
}

// Maintenance gives devices matching Selector the window Window.
type Maintenance struct {
	Selector *Selector
	Window   *Window
}

// Target is what a rollout installs: a TUF target named by kind, name and version. The
// server maps it to a target path among the TUF-signed targets.
type Target struct {
	Kind    artifact.Kind `json:"kind"`
	Name    string        `json:"name"`
	Version string        `json:"version"`
}

func (t Target) String() string { return string(t.Kind) + "/" + t.Name + "@" + t.Version }

// Rollout installs one target on the devices its selector matches, wave by wave.
type Rollout struct {
	ID       string
	Target   Target
	Selector *Selector // nil selects every device
	// Window, if set, overrides the devices' maintenance windows for this rollout.
	Window *Window
	// Gates are the commit gates sent with the target; nil means the policy's defaults.
	Gates *artifact.Gates
	// Waves, at least one, with strictly increasing percentages.
	Waves []Wave
	// Pos is where the rollout is defined.
	Pos Pos
}

// Wave is one stage of a rollout.
type Wave struct {
	// Percent of the selected devices (by a stable hash of device and rollout ID) that
	// are in this wave or an earlier one; (0, 100], resolution 0.01.
	Percent float64
	// Soak is the minimum time the wave runs before the next one starts.
	Soak time.Duration
	// Approval means an operator must approve this wave before it starts.
	Approval bool
	// MaxFailureRatio: the rollout pauses itself when more than this fraction of the
	// wave's devices that reported failed, once at least MinReports devices reported.
	MaxFailureRatio float64
	MinReports      int
}

// Pos is a place in a policy file.
type Pos struct {
	File string
	Line int
}
