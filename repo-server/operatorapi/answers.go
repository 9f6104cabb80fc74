package operatorapi

import (
	"errors"
	"time"

	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// The answers of the operator API's write endpoints and lists.

// RolloutCreated answers POST /v1/rollouts.
type RolloutCreated struct {
	ID   string `json:"id"`
	File string `json:"file"`
	// Loaded says whether the policy in force had the rollout when the server answered
	// (the watcher loads the file within about a second).
	Loaded bool `json:"loaded"`
	// Warnings note what keeps the rollout from ever finishing, though it was created:
	// a target the repository does not hold yet (devices are not offered it until it
	// is published, decision reason "unpublished"), a selector that matches no enrolled
	// device (or names devices that are not enrolled), a last wave below 100 % (the
	// selected devices past it are never offered the target).
	Warnings []string `json:"warnings,omitempty"`
	// Warning is Warnings in one line, for clients that read only it.
	Warning string `json:"warning,omitempty"`
}

// RolloutChanged answers an operator action on a rollout.
type RolloutChanged struct {
	State  policy.RolloutState `json:"state"`
	Events []policy.Event      `json:"events"`
}

// DeviceList answers GET /v1/devices.
type DeviceList struct {
	Devices []DeviceView `json:"devices"`
	// Next, if set, is the after= of the next page.
	Next string `json:"next,omitempty"`
}

// TokenCreated answers POST /v1/tokens. The token is shown this once.
type TokenCreated struct {
	Token string          `json:"token"`
	Info  fleet.TokenInfo `json:"info"`
}

// PolicyRejected says that the policy directory holds a change the server rejected:
// the last good policy stays in force (Digest), and no change to the directory, a
// rollout created included, takes effect until the files are fixed. The rollout list
// and a rollout's status carry it, as /v1/policy and the dashboard do (they alone did:
// found from outside).
type PolicyRejected struct {
	// Files are the names of the files with errors (none when the directory as a whole
	// did not load, e.g. it could not be read).
	Files []string `json:"files,omitempty"`
	// Error is the load's error, each problem as file:line: message.
	Error string    `json:"error"`
	At    time.Time `json:"at"`
	// Digest is that of the policy in force.
	Digest string `json:"digest"`
}

// NewPolicyRejected describes st's last load if it failed, else returns nil.
func NewPolicyRejected(st policy.ReloadStatus) *PolicyRejected {
	if st.Err == nil && st.Error == "" {
		return nil
	}
	out := &PolicyRejected{Error: st.Error, At: st.ErrAt, Digest: st.Digest}
	if st.Err != nil {
		out.Error = st.Err.Error()
		var el policy.ErrorList
		if errors.As(st.Err, &el) {
			out.Files = el.Files()
		}
	}
	return out
}

// RolloutList answers GET /v1/rollouts.
type RolloutList struct {
	Rollouts       []RolloutSummary `json:"rollouts"`
	PolicyRejected *PolicyRejected  `json:"policy_rejected,omitempty"`
}

// RolloutDetail answers GET /v1/rollouts/{id}: the rollout's status and, if the policy
// directory holds a rejected change, that.
type RolloutDetail struct {
	fleet.RolloutStatus
	PolicyRejected *PolicyRejected `json:"policy_rejected,omitempty"`
}
