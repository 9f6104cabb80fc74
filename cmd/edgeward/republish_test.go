package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// TestRepublishWithOtherGatesIsRefused: `edgeward publish` of a version already
// published with the same bytes and other gates fails, on the repository directory and
// through the server's operator API alike, saying what differs and to publish a new
// version; the signed gates stay the first ones. It used to exit 0 with "already
// published with the same content" while min_accuracy 0.85 stayed in force. The same
// command with the same gates is still a no-op, both ways.
func TestRepublishWithOtherGatesIsRefused(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	model := writeTemp(t, "model.onnx", "model bytes 1.1.0")
	c.must("publish", "--kind", "probe", "--name", "iris", "--version", "1.1.0", writeTemp(t, "probe.json", `{"inputs":[[1]],"labels":[0]}`))
	publish := func(c *cli, gates string) (string, error) {
		out, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.1.0", "--gates", gates, model)
		return out, err
	}
	if _, err := publish(c, "min_accuracy=0.85"); err != nil {
		t.Fatal(err)
	}

	// The operator API of a server on the same repository, signing the delegated roles.
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
	tok, _, err := store.CreateToken(ctx, "rita", fleet.RoleReleaseManager, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	remote := newCLI(t)
	remote.env["EDGEWARD_SERVER"], remote.env["EDGEWARD_TOKEN"] = hs.URL, tok

	for _, tc := range []struct {
		name string
		c    *cli
	}{{"the repository directory", c}, {"the operator API", remote}} {
		out, err := publish(tc.c, "min_accuracy=0.99")
		if err == nil || strings.Contains(out, "already published with the same content") {
			t.Fatalf("through %s: publish with a stricter gate = %q, %v; want refused", tc.name, out, err)
		}
		for _, want := range []string{`gates: signed {"min_accuracy":"0.85"}, now {"min_accuracy":"0.99"}`, "publish the change as a new version"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("through %s: publish with a stricter gate = %v; want it to say %q", tc.name, err, want)
			}
		}
		if tc.c == c && !errors.Is(err, repository.ErrMetadataConflict) {
			t.Errorf("through %s: %v; want ErrMetadataConflict", tc.name, err)
		} else if tc.c == remote && !strings.Contains(err.Error(), "409") {
			t.Errorf("through %s: %v; want 409", tc.name, err)
		}
		if out, err := publish(tc.c, "min_accuracy=0.85"); err != nil || !strings.Contains(out, "already published with the same content") {
			t.Errorf("through %s: the same publish again = %q, %v; want unchanged", tc.name, out, err)
		}
	}

	var status struct {
		Targets []repository.TargetInfo `json:"targets"`
	}
	if err := json.Unmarshal([]byte(c.must("repo", "status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	for _, ti := range status.Targets {
		if ti.Path == "models/iris/1.1.0.onnx" {
			if ti.Meta == nil || ti.Meta.Gates == nil || ti.Meta.Gates.MinAccuracy != 0.85 {
				t.Fatalf("signed metadata = %+v; want min_accuracy 0.85 still", ti.Meta)
			}
			return
		}
	}
	t.Fatalf("repo status lists %+v; want models/iris/1.1.0.onnx", status.Targets)
}
