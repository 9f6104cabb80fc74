package repository

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestRotateAwayFromALostOnlineKey: the timestamp (or snapshot) key file is gone (the
// disk died, or the key was wiped at once after a theft). The rotation still goes
// through, with the new key's signature alone, and clients that follow the root, and a
// fresh one, keep working; the publication records which old keys were missing. Before,
// it was refused ("sign timestamp with the old keys during the rotation: … found 0"),
// through 'keys rotate' and 'root publish' alike, and nothing could re-sign the
// timestamp any more: every device stopped once it expired.
func TestRotateAwayFromALostOnlineKey(t *testing.T) {
	for _, role := range []string{metadata.TIMESTAMP, metadata.SNAPSHOT} {
		t.Run(role, func(t *testing.T) {
			f := newFixture(t, KeyEd25519)
			ctx := context.Background()
			c := f.newClient()
			c.mustRefresh()
			old, _ := filepath.Glob(filepath.Join(f.repo.OnlineKeyDir(), role+"-*.key"))
			if len(old) != 1 {
				t.Fatalf("%s key files = %v", role, old)
			}
			moveAway(t, f.repo.OnlineKeyDir(), old[0])

			res, err := f.repo.RotateKey(ctx, role, KeyEd25519, "", f.keyring(f.rootKeyFiles(0, 1)...))
			if err != nil || !res.Published {
				t.Fatalf("RotateKey(%s) with its old key gone = %+v, %v; want published", role, res, err)
			}
			up := c.mustRefresh()
			if got := up.GetTrustedMetadataSet().Root.Signed.Roles[role].KeyIDs; len(got) != 1 || got[0] != res.NewKeyID {
				t.Fatalf("client's %s keys = %v; want [%s]", role, got, short(res.NewKeyID))
			}
			f.newClient().mustRefresh()
			f.clock.Add(23 * time.Hour)
			if _, err := f.repo.Refresh(ctx); err != nil {
				t.Fatalf("Refresh after the rotation: %v", err)
			}
			c.mustRefresh()
			if got := f.events.all(); got[len(got)-1] != "cli repo.refresh " {
				t.Errorf("last events = %q", got[len(got)-3:])
			}
		})
	}
}
