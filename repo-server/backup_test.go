package reposerver

import (
	"bytes"
	"context"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// The restore that docs/OPERATORS.md describes for sqlite, tested: an online backup of
// the live fleet.db (VACUUM INTO, while the store is open), the repository directory
// copied beside it into a new data directory, and a server started on the copy serves
// the same fleet: the device enrolled before the backup checks in there, trusted, and
// the restored audit log exports and verifies.
func TestBackupRestoreServes(t *testing.T) {
	f, d := newDeviceFixtureOn(t, testPolicy, "") // sqlite, whatever EDGEWARD_TEST_POSTGRES says
	ctx := context.Background()
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in before the backup = %+v, %v", resp, err)
	}

	restored := filepath.Join(t.TempDir(), "restored")
	backup := filepath.Join(t.TempDir(), "fleet.db")
	if _, err := f.store.DB().ExecContext(ctx, `VACUUM INTO ?`, backup); err != nil {
		t.Fatalf("online backup: %v", err)
	}
	err := filepath.WalkDir(f.repo.Dir(), func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(f.repo.Dir(), p)
		if strings.HasPrefix(e.Name(), "fleet.db") {
			return nil // the database comes from the backup
		}
		dst := filepath.Join(restored, rel)
		if e.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(DBPath(restored), b, 0o600); err != nil {
		t.Fatal(err)
	}

	repo, err := repository.Open(repository.Config{Dir: restored, Actor: "server"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, DBPath(restored))
	if err != nil {
		t.Fatalf("open the restored fleet store: %v", err)
	}
	defer store.Close()
	if _, err := store.Device(ctx, d.id); err != nil {
		t.Fatalf("device %s in the restored store: %v", d.id, err)
	}
	srv, err := NewServer(ServerConfig{Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: f.srv.devices.cfg.AttestRoots, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	d.api = &deviceapi.Client{BaseURL: hs.URL}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in at the server restored from the backup = %+v, %v; want trusted", resp, err)
	}

	l, err := srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var exp bytes.Buffer
	if err := l.Export(ctx, &exp); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyWithKey(&exp, l.PublicKey(), l.Origin())
	if err != nil {
		t.Fatalf("verify the restored audit log: %v", err)
	}
	t.Logf("restored audit log verified: %+v", rep)
}
