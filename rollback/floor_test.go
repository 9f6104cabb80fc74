package rollback

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// TestManagerRefusesCommitWhenFloorRoseDuringTrial: the TPM counter rose while a
// version was on trial (another installer on the device committed something newer).
// Passing the trial must not commit a version below the floor: the device rolls back
// to the committed version and the counter keeps its height.
func TestManagerRefusesCommitWhenFloorRoseDuringTrial(t *testing.T) {
	ctx := context.Background()
	b, c, p := &blobs{}, &clock{t: t0}, &tpm{}
	m := openTest(t, t.TempDir(), b, p, c)
	v1, v2, v3 := b.add("1.0.0"), b.add("2.0.0"), b.add("3.0.0")
	commit(t, m, v1)
	if s, err := m.Install(ctx, artifact.KindModel, v2); err != nil || s.Phase != Staged {
		t.Fatalf("Install(2.0.0) = %v, %v; want staged", s, err)
	}
	if _, err := m.BeginTrial(ctx, artifact.KindModel, time.Minute); err != nil {
		t.Fatal(err)
	}
	p.Raise(ctx, artifact.KindModel, v3.Floor)
	s, err := m.Confirm(ctx, artifact.KindModel, true, "")
	if err != nil || s.Phase != RolledBack || s.Current.Version != "1.0.0" || !strings.Contains(s.Reason, "floor") {
		t.Fatalf("Confirm(pass) after the floor rose to 3.0.0's = %v, %v; want rolled back to 1.0.0 (floor rose)", s, err)
	}
	if f, _ := m.Floor(ctx, artifact.KindModel); f != v3.Floor {
		t.Errorf("floor after the refused commit = %d; want %d (3.0.0's)", f, v3.Floor)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Error(err)
	}
}

// TestManagerFloorFromTPMAfterStateLost: the TPM counter is the authority. When the
// agent's whole state directory is lost (sqlite mirror, slots and pointers: a reflashed
// data partition), nothing is re-adopted, and the floor still comes from the counter:
// a validly signed older version is refused.
func TestManagerFloorFromTPMAfterStateLost(t *testing.T) {
	ctx := context.Background()
	b, c, p := &blobs{}, &clock{t: t0}, &tpm{}
	v1, v2 := b.add("1.0.0"), b.add("2.0.0")
	commit(t, openTest(t, t.TempDir(), b, p, c), v2)

	m := openTest(t, t.TempDir(), b, p, c) // a fresh state directory, the same TPM
	if s, _ := m.State(ctx, artifact.KindModel); s.Current != nil {
		t.Fatalf("fresh state directory adopted %v", s.Current)
	}
	if f, err := m.Floor(ctx, artifact.KindModel); err != nil || f != v2.Floor {
		t.Fatalf("Floor = %d, %v; want 2.0.0's %d from the TPM counter", f, err, v2.Floor)
	}
	_, err := m.Install(ctx, artifact.KindModel, v1)
	var de *DowngradeError
	if !errors.As(err, &de) || de.Current != v2.Floor {
		t.Fatalf("Install(1.0.0) with the TPM floor at 2.0.0 = %v; want a DowngradeError at 2.0.0's floor", err)
	}
}

// TestCounterFloors: the TPM-backed FloorStore reads and raises each kind's counter,
// never lowers it, and refuses a kind without a counter rather than reading 0.
func TestCounterFloors(t *testing.T) {
	ctx := context.Background()
	model := &memCounter{}
	cf := CounterFloors{artifact.KindModel: model}
	if err := cf.Raise(ctx, artifact.KindModel, 7); err != nil {
		t.Fatal(err)
	}
	if err := cf.Raise(ctx, artifact.KindModel, 3); err != nil {
		t.Fatal(err)
	}
	if f, err := cf.Floor(ctx, artifact.KindModel); err != nil || f != 7 {
		t.Errorf("Floor after Raise(7), Raise(3) = %d, %v; want 7", f, err)
	}
	if _, err := cf.Floor(ctx, artifact.KindRuntime); err == nil {
		t.Error("Floor(runtime) without a counter = nil error; want an error")
	}
	if err := cf.Raise(ctx, artifact.KindRuntime, 1); err == nil {
		t.Error("Raise(runtime) without a counter = nil error; want an error")
	}
	// A counter that does not reach the requested floor (a TPM that lost the write).
	model.stuck = true
	if err := cf.Raise(ctx, artifact.KindModel, 9); err == nil || !strings.Contains(err.Error(), "after raising to 9") {
		t.Errorf("Raise(9) on a counter stuck at 7 = %v; want an error", err)
	}
	model.stuck = false
	model.fail = errors.New("tpm: NV write failed")
	if err := cf.Raise(ctx, artifact.KindModel, 9); !errors.Is(err, model.fail) {
		t.Errorf("Raise(9) on a failing counter = %v; want its error", err)
	}
}

// memCounter is a Counter in memory; stuck makes RaiseTo a no-op, fail makes it fail.
type memCounter struct {
	v     uint64
	stuck bool
	fail  error
}

func (c *memCounter) Read(context.Context) (uint64, error) { return c.v, nil }

func (c *memCounter) RaiseTo(_ context.Context, v uint64) (uint64, error) {
	if c.fail != nil {
		return 0, c.fail
	}
	if !c.stuck {
		c.v = max(c.v, v)
	}
	return c.v, nil
}
