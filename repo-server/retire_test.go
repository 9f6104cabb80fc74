package reposerver

import (
	"context"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repository"
)

// A device that runs a version which is then retired stays trusted (its measurement is
// checked against the retired content) and is offered nothing retired; a device
// running a version the repository never held is still untrusted.
func TestDeviceRunningARetiredVersion(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	model := []byte("vibration model 1.0.0 bytes")
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", model, nil); err != nil {
		t.Fatal(err)
	}
	d.load(artifact.KindModel, "vibration", "1.0.0", model)
	d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "1.0.0"}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in running 1.0.0 = %+v, %v; want trusted", resp, err)
	}
	if _, err := f.publish(artifact.KindModel, "vibration", "1.1.0", ".onnx", []byte("1.1.0"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Retire(ctx, repository.RetireRequest{Kind: artifact.KindModel, Name: "vibration", Versions: []string{"1.0.0"}}, f.keyring()); err != nil {
		t.Fatal(err)
	}
	resp, err := d.checkIn(d.request())
	if err != nil || !resp.Trusted || resp.Quarantined {
		t.Fatalf("check-in running the retired 1.0.0 = %+v, %v; want trusted, not quarantined", resp, err)
	}
	for _, sd := range resp.Slots {
		if sd.Action == "install" && sd.Version == "1.0.0" {
			t.Errorf("offered the retired version: %+v", sd)
		}
	}
	dev, err := f.store.Device(ctx, d.id)
	if err != nil || dev.Quarantined || dev.Verdict != policy.VerdictTrusted {
		t.Fatalf("stored device = %+v, %v", dev, err)
	}

	// Control: a version that was never published is not excused by the retired list.
	d.load(artifact.KindModel, "vibration", "9.9.9", []byte("never published"))
	d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "9.9.9"}
	resp, err = d.checkIn(d.request())
	if err != nil || resp.Trusted {
		t.Fatalf("check-in running an unknown version = %+v, %v; want untrusted", resp, err)
	}
}
