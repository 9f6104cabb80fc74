package operatorapi

import (
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
