package reposerver

import (
	"context"
	"errors"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// Challenges keeps the attestation CA's pending enrollment challenges in the fleet
// database (attestca.Config.Challenges), so that a device may answer at any replica
// the challenge another replica issued, and the bounds on pending challenges hold
// across replicas.
type Challenges struct{ Fleet *fleet.Store }

// AddChallenge implements attestca.ChallengeStore.
func (c Challenges) AddChallenge(ctx context.Context, ch attestca.Challenge, b attestca.Bounds, now time.Time) error {
	err := c.Fleet.AddChallenge(ctx, fleet.Challenge{ID: ch.ID, EKID: ch.EKID, Source: ch.Source, Secret: ch.Secret, AKPublic: ch.AKPublic,
		Manufacturer: ch.TPM.Manufacturer, Model: ch.TPM.Model, Version: ch.TPM.Version, Expires: ch.Expires}, b.MaxPending, b.MaxPendingPerSource, now)
	if errors.Is(err, fleet.ErrChallengesFull) {
		return attestca.ErrBusy
	}
	return err
}

// TakeChallenge implements attestca.ChallengeStore.
func (c Challenges) TakeChallenge(ctx context.Context, id string) (*attestca.Challenge, error) {
	ch, err := c.Fleet.TakeChallenge(ctx, id)
	if ch == nil || err != nil {
		return nil, err
	}
	return &attestca.Challenge{ID: ch.ID, EKID: ch.EKID, Source: ch.Source, Secret: ch.Secret, AKPublic: ch.AKPublic,
		TPM: protocol.TPMInfo{Manufacturer: ch.Manufacturer, Model: ch.Model, Version: ch.Version}, Expires: ch.Expires}, nil
}
