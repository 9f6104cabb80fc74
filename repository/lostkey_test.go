package repository

import (
	"context"
	"path/filepath"
	"strings"
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

// TestRotationRefusedWhenTheOldOnlineKeyDoesNotOpen: the old timestamp key file is
// there but does not open (sealed under a passphrase the operator mistyped): that is
// not a lost key, and the rotation is refused, saying why, rather than published
// without the old key's signature and recorded as old_keys_missing.
func TestRotationRefusedWhenTheOldOnlineKeyDoesNotOpen(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	old, _ := filepath.Glob(filepath.Join(f.repo.OnlineKeyDir(), metadata.TIMESTAMP+"-*.key"))
	if len(old) != 1 {
		t.Fatalf("timestamp key files = %v", old)
	}
	k, err := LoadKeyFile(old[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	moveAway(t, f.repo.OnlineKeyDir(), old[0])
	if _, err := WriteKeyFile(OSFS{}, f.repo.OnlineKeyDir(), k, []byte("the right one"), KDFParams{N: 1 << 10}); err != nil {
		t.Fatal(err)
	}
	before, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kr := f.keyring(f.rootKeyFiles(0, 1)...) // its passphrase is testPass, not "the right one"
	if res, err := f.repo.RotateKey(ctx, metadata.TIMESTAMP, KeyEd25519, "", kr); err == nil {
		t.Fatalf("RotateKey(timestamp) with its old key file not opening = %+v; want refused", res)
	} else if !strings.Contains(err.Error(), "timestamp") || !strings.Contains(err.Error(), "passphrase") {
		t.Errorf("RotateKey(timestamp) = %v; want it to name the old timestamp key and the passphrase", err)
	} else if !strings.Contains(err.Error(), f.repo.ProposalPath(2)) || !strings.Contains(err.Error(), "edgeward root publish") {
		t.Errorf("RotateKey(timestamp) = %v; want it to say the signed proposal %s stays for 'edgeward root publish'", err, f.repo.ProposalPath(2))
	}
	after, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Root.Signed.Version != before.Root.Signed.Version {
		t.Errorf("root v%d after the refused rotation; want v%d", after.Root.Signed.Version, before.Root.Signed.Version)
	}
	// With the file moved away (the key taken for lost), the staged root is published.
	moveAway(t, f.repo.OnlineKeyDir(), old[0])
	if _, err := f.repo.PublishRoot(ctx, "", kr); err != nil {
		t.Fatalf("PublishRoot once the old key file is moved away = %v", err)
	}
	f.newClient().mustRefresh()
}
