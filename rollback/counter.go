package rollback

import (
	"context"
	"fmt"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Counter is a monotonic per-kind floor, the shape of the TPM NV counter (attest.Counter):
// Read returns the floor, RaiseTo(v) makes it max(floor, v) and never lowers it.
type Counter interface {
	Read(ctx context.Context) (uint64, error)
	RaiseTo(ctx context.Context, v uint64) (uint64, error)
}

// CounterFloors is a FloorStore made of one Counter per kind. A kind without a counter
// is an error: the floor must not silently fall back to 0.
type CounterFloors map[artifact.Kind]Counter

// Floor implements FloorStore.
func (c CounterFloors) Floor(ctx context.Context, kind artifact.Kind) (uint64, error) {
	ctr, ok := c[kind]
	if !ok {
		return 0, fmt.Errorf("no floor counter for kind %s", kind)
	}
	return ctr.Read(ctx)
}

// Raise implements FloorStore. It fails if the counter ends below floor.
func (c CounterFloors) Raise(ctx context.Context, kind artifact.Kind, floor uint64) error {
	ctr, ok := c[kind]
	if !ok {
		return fmt.Errorf("no floor counter for kind %s", kind)
	}
	got, err := ctr.RaiseTo(ctx, floor)
	if err != nil {
		return err
	}
	if got < floor {
		return fmt.Errorf("%s floor counter at %d after raising to %d", kind, got, floor)
	}
	return nil
}
