package repository

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestRenewOfflineRoles: a repository nobody published to for the delegated lifetime
// has expired models and runtimes metadata, and a device's refresh then looks a model
// up in vain (go-tuf refuses expired targets metadata). Renew re-signs them with a
// fresh expiry and the device finds the model again; RenewDue (the server's, with the
// delegated keys) renews them past half their lifetime and not before. The root and
// the online roles are not renewed this way.
func TestRenewOfflineRoles(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	c := f.newClient()
	c.mustRefresh()
	life := f.repo.Expiry().RoleLife(RoleModels)
	if got, err := f.repo.RenewDue(ctx, f.keyring()); err != nil || len(got) != 0 {
		t.Fatalf("RenewDue right after a publish = %v, %v; want nothing", got, err)
	}

	f.clock.Add(life + time.Hour)
	if _, err := f.repo.Refresh(ctx); err != nil { // the server's: timestamp and snapshot only
		t.Fatal(err)
	}
	up, err := c.refresh()
	if err == nil {
		_, err = up.GetTargetInfo("models/iris/1.0.0.onnx")
	}
	if !errors.Is(err, &metadata.ErrExpiredMetadata{}) {
		t.Fatalf("lookup with models.json expired = %v; want go-tuf's expired metadata error", err)
	}
	for _, role := range []string{metadata.ROOT, metadata.TIMESTAMP, metadata.SNAPSHOT} {
		if _, err := f.repo.Renew(ctx, []string{role}, f.keyring()); !errors.Is(err, errNotRenewable) {
			t.Errorf("Renew(%s) = %v; want errNotRenewable", role, err)
		}
	}
	before, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	v := before.Targets[RoleModels].Signed.Version
	renewed, err := f.repo.RenewDue(ctx, f.keyring())
	if err != nil || len(renewed) != 2 {
		t.Fatalf("RenewDue past the lifetime = %v, %v; want models and runtimes", renewed, err)
	}
	after, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if m := after.Targets[RoleModels].Signed; m.Version != v+1 || !m.Expires.After(f.clock.Now().Add(life-time.Minute)) {
		t.Errorf("models after RenewDue: version %d expires %v; want %d, a full lifetime from now", m.Version, m.Expires, v+1)
	}
	up, err = c.refresh()
	if err != nil {
		t.Fatalf("refresh after the renewal = %v", err)
	}
	if _, err := up.GetTargetInfo("models/iris/1.0.0.onnx"); err != nil {
		t.Errorf("lookup after the renewal = %v", err)
	}
	if got, err := f.repo.RenewDue(ctx, f.keyring()); err != nil || len(got) != 0 {
		t.Errorf("RenewDue again = %v, %v; want nothing", got, err)
	}
	// The targets role, by its holders.
	tv := after.Targets[metadata.TARGETS].Signed.Version
	if _, err := f.repo.Renew(ctx, []string{metadata.TARGETS}, f.keyring()); err != nil {
		t.Fatal(err)
	}
	if st, err := f.repo.Load(ctx); err != nil || st.Targets[metadata.TARGETS].Signed.Version != tv+1 {
		t.Errorf("targets after Renew: %v; want version %d", err, tv+1)
	}
	c.mustRefresh()
}
