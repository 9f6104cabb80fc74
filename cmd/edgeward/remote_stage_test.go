package main

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// TestThresholdPublishThroughTheServer: models needs 2 of alice's and bob's keys. A
// release manager publishes through the server, which stages it (its own models key is
// none of theirs); alice and bob each sign it from their own machines through the
// server ('role sign --server': fetched, shown against the version it replaces, signed,
// sent back), and the release manager publishes it ('role publish --server'). No one
// touched the repository machine after the setup.
func TestThresholdPublishThroughTheServer(t *testing.T) {
	ctx := context.Background()
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	var status struct {
		Roles []struct {
			Role string   `json:"role"`
			Keys []string `json:"keys"`
		} `json:"roles"`
	}
	if err := json.Unmarshal([]byte(c.must("repo", "status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	var old string
	for _, r := range status.Roles {
		if r.Role == "models" {
			old = r.Keys[0]
		}
	}
	keyRE, pubRE := regexp.MustCompile(`written to (\S+\.key)`), regexp.MustCompile(`public key: (\S+\.pub)`)
	var keys, pubs []string
	for _, h := range []string{"alice", "bob"} {
		out := c.must("keys", "gen", "--role", "models", "--out", filepath.Join(t.TempDir(), h))
		keys, pubs = append(keys, keyRE.FindStringSubmatch(out)[1]), append(pubs, pubRE.FindStringSubmatch(out)[1])
	}
	c.must("role", "keys", "--role", "models", "--add-key", pubs[0], "--add-key", pubs[1], "--revoke-key", old[:8], "--threshold", "2")
	for _, k := range keys {
		c.must("role", "sign", "--role", "models", "--key", k)
	}
	c.must("role", "publish", "--role", "models")

	repo, err := repository.Open(repository.Config{Dir: c.repo})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, filepath.Join(c.repo, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	signing := &repository.KeyRing{Roles: repository.DelegatedAndOnlineRoles(), Passphrase: func() ([]byte, error) { return []byte("s3cret"), nil }}
	if err := srv.EnableOperatorAPI(reposerver.OperatorConfig{Fleet: store, Signing: signing}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	token := func(name string, role fleet.Role) string {
		tok, _, err := store.CreateToken(ctx, name, role, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	rita, sam := token("rita", fleet.RoleReleaseManager), token("sam", fleet.RoleSecurityAdmin)
	away := func(tok string) *cli {
		a := newCLI(t)
		a.env["EDGEWARD_PASSPHRASE"] = "s3cret"
		a.env["EDGEWARD_SERVER"], a.env["EDGEWARD_TOKEN"] = hs.URL, tok
		return a
	}

	out := away(rita).must("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", writeTemp(t, "m.onnx", "model one"))
	if !strings.Contains(out, "needs more signatures than the server's keys made") || !strings.Contains(out, "0 of 2 signatures") {
		t.Fatalf("publish --server to a 2-of-2 role:\n%s", out)
	}
	out = away(sam).must("role", "sign", "--role", "models", "--key", keys[0], "--server", hs.URL)
	t.Logf("role sign --server:\n%s", out)
	for _, want := range []string{"signing:", "models v3, replacing v2", "models/iris/1.0.0.onnx", "1 of 2 signatures"} {
		if !strings.Contains(out, want) {
			t.Errorf("role sign --server (alice) lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := away(rita).run("role", "publish", "--role", "models", "--server", hs.URL); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("role publish --server with 1 of 2 = %v; want 409", err)
	}
	out = away(sam).must("role", "sign", "--role", "models", "--key", keys[1], "--server", hs.URL)
	if !strings.Contains(out, "2 of 2 signatures") || !strings.Contains(out, "ready: 'edgeward role publish --role models --server") {
		t.Errorf("role sign --server (bob):\n%s", out)
	}
	out = away(rita).must("role", "publish", "--role", "models", "--server", hs.URL)
	if !strings.Contains(out, "models v3 published") {
		t.Fatalf("role publish --server:\n%s", out)
	}
	if status := c.must("repo", "status"); !strings.Contains(status, "models/iris/1.0.0.onnx") {
		t.Fatalf("the model is not listed after its publication:\n%s", status)
	}
}
