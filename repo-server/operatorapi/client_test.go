package operatorapi_test

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
	"github.com/edgeward/edgeward/repository"
)

// TestClientAgainstServer drives the real operator API through the typed client:
// tokens, devices, rollouts, the audit export, and errors as *APIError.
func TestClientAgainstServer(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "repo")
	res, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: reposerver.AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte("pw")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: res.Repo})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, reposerver.DBPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := srv.EnableOperatorAPI(reposerver.OperatorConfig{Fleet: store}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	admin, _, err := store.CreateToken(ctx, "sec", fleet.RoleSecurityAdmin, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rmTok, _, err := store.CreateToken(ctx, "rm", fleet.RoleReleaseManager, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	rm := &operatorapi.Client{Server: hs.URL, Token: rmTok}
	if err := store.Enroll(ctx, "cam-1", map[string]string{"line": "press"}, time.Now()); err != nil {
		t.Fatal(err)
	}
	c := &operatorapi.Client{Server: hs.URL, Token: admin}

	created, err := c.CreateToken(ctx, "aud", fleet.RoleAuditor, time.Hour)
	if err != nil || created.Token == "" || created.Info.Role != fleet.RoleAuditor {
		t.Fatalf("CreateToken = %+v, %v", created, err)
	}
	toks, _, err := c.Tokens(ctx)
	if err != nil || len(toks) != 3 {
		t.Fatalf("Tokens = %d tokens, %v; want 3", len(toks), err)
	}
	page, _, err := c.Devices(ctx, nil)
	if err != nil || len(page.Devices) != 1 || page.Devices[0].ID != "cam-1" {
		t.Fatalf("Devices = %+v, %v", page, err)
	}
	d, _, err := rm.SetLabels(ctx, "cam-1", map[string]string{"line": "lathe"})
	if err != nil || d.Labels["line"] != "lathe" {
		t.Fatalf("SetLabels = %+v, %v", d, err)
	}
	detail, raw, err := rm.Device(ctx, "cam-1", time.Hour)
	if err != nil || detail.Device.Labels["line"] != "lathe" || !bytes.Contains(raw, []byte(`"lathe"`)) {
		t.Fatalf("Device = %+v, %s, %v", detail, raw, err)
	}

	// The auditor may read the log but not act.
	aud := &operatorapi.Client{Server: hs.URL, Token: created.Token}
	var buf bytes.Buffer
	if err := aud.AuditExport(ctx, &buf); err != nil || !strings.Contains(buf.String(), "repo.init") {
		t.Fatalf("AuditExport = %v; export %q lacks repo.init", err, buf.String())
	}
	_, _, err = aud.SetLabels(ctx, "cam-1", nil)
	var ae *operatorapi.APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusForbidden {
		t.Errorf("SetLabels as auditor = %v; want a 403 APIError", err)
	}
	if _, _, err := c.Device(ctx, "nope", 0); !errors.As(err, &ae) || ae.Status != http.StatusNotFound {
		t.Errorf("Device(unknown) = %v; want a 404 APIError", err)
	}
	if err := c.RevokeToken(ctx, created.Info.ID); err != nil {
		t.Fatalf("RevokeToken = %v", err)
	}
	if err := aud.AuditExport(ctx, &buf); !errors.As(err, &ae) || ae.Status != http.StatusUnauthorized {
		t.Errorf("AuditExport with a revoked token = %v; want a 401 APIError", err)
	}
	if _, _, err := (&operatorapi.Client{Server: hs.URL}).KPIs(ctx); err == nil || !strings.Contains(err.Error(), "no token") {
		t.Errorf("KPIs without a token = %v; want a 'no token' error", err)
	}
}
