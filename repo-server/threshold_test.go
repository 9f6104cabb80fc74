package reposerver

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestServerRefusesUnderSignedDelegatedRole: models needs 2 keys and a server started
// with --sign-delegated holds one. A publish through the operator API is refused with
// 409 and says what to do, and nothing changes; the server's renewal of models is
// refused likewise (runtimes, which it can sign, is still renewed). Before, the publish
// failed with a 500 'publish failed: role models needs 2 of its keys'.
func TestServerRefusesUnderSignedDelegatedRole(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, repository.KeyEd25519)
	bob, err := repository.GenerateKey(repository.RoleModels, repository.KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	bobFile, err := repository.WriteKeyFile(repository.OSFS{}, t.TempDir(), bob, []byte(testPass), repository.KDFParams{N: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	// Both models keys at hand here: published at once, models re-signed by both.
	if staged, err := f.repo.ChangeDelegation(ctx, repository.DelegationChange{Role: repository.RoleModels, AddKeys: []*metadata.Key{bob.Public}, Threshold: 2}, f.keyring(bobFile)); err != nil || staged != nil {
		t.Fatalf("ChangeDelegation(models 2 of 2) = %+v, %v; want published", staged, err)
	}
	version := func(role string) int64 {
		t.Helper()
		st, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Targets[role].Signed.Version
	}
	models, runtimes := version(repository.RoleModels), version(repository.RoleRuntimes)

	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	held := f.keyring() // the server's: DIR/keys/offline, bob's key is elsewhere
	held.Roles = repository.DelegatedAndOnlineRoles()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: held, MaxPublishBytes: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	tok, _, err := store.CreateToken(ctx, "rita", fleet.RoleReleaseManager, time.Hour, f.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest("POST", f.http.URL+"/v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx", strings.NewReader("model"))
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusConflict || !strings.Contains(string(body), "role models needs 2 signatures and the keys at hand make 1") || !strings.Contains(string(body), "edgeward role sign") {
		t.Fatalf("publish through the server holding 1 of 2 models keys = %d %s; want 409 saying what is missing and what to do", resp.StatusCode, body)
	}
	if v := version(repository.RoleModels); v != models {
		t.Fatalf("models v%d after the refused publish; want v%d", v, models)
	}

	f.clock.Add(f.repo.Expiry().RoleLife(repository.RoleModels)/2 + time.Hour)
	f.srv.cfg.Renew = held
	f.srv.RefreshOnce(ctx)
	if v := version(repository.RoleModels); v != models {
		t.Errorf("models v%d after the server's renewal; want v%d (not the server's to sign alone)", v, models)
	}
	if v := version(repository.RoleRuntimes); v != runtimes+1 {
		t.Errorf("runtimes v%d after the server's renewal; want v%d", v, runtimes+1)
	}
	f.newClient().mustRefresh()
}

// TestServerRenewalErrorNotHiddenByAThresholdRole: models needs more signatures than
// the server holds (a warning, not an error: its holders renew it) and the renewal of
// runtimes fails for another reason (its key file is gone). That failure is counted and
// logged as an error; it was folded into the models warning and the refresh counted as
// a success.
func TestServerRenewalErrorNotHiddenByAThresholdRole(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, repository.KeyEd25519)
	bob, err := repository.GenerateKey(repository.RoleModels, repository.KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	bobFile, err := repository.WriteKeyFile(repository.OSFS{}, t.TempDir(), bob, []byte(testPass), repository.KDFParams{N: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if staged, err := f.repo.ChangeDelegation(ctx, repository.DelegationChange{Role: repository.RoleModels, AddKeys: []*metadata.Key{bob.Public}, Threshold: 2}, f.keyring(bobFile)); err != nil || staged != nil {
		t.Fatalf("ChangeDelegation(models 2 of 2) = %+v, %v; want published", staged, err)
	}
	for _, p := range f.keys[repository.RoleRuntimes] {
		if err := os.Rename(p, filepath.Join(t.TempDir(), filepath.Base(p))); err != nil {
			t.Fatal(err)
		}
	}
	held := f.keyring()
	held.Roles = repository.DelegatedAndOnlineRoles()
	f.srv.cfg.Renew = held
	f.clock.Add(f.repo.Expiry().RoleLife(repository.RoleModels)/2 + time.Hour)
	f.srv.RefreshOnce(ctx)
	if got := testutil.ToFloat64(f.srv.refreshes.WithLabelValues("error")); got != 1 {
		t.Errorf("refreshes{result=error} = %v after a runtimes renewal that failed; want 1", got)
	}
}
