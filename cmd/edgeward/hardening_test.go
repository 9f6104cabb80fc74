package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/operatorapi"
	"github.com/edgeward/edgeward/repository"
)

// `--listen ""` used to bind every interface; it is an error, and 'off' without TLS
// leaves nothing to serve on.
func TestServerListenFlag(t *testing.T) {
	c := newCLI(t)
	for _, args := range [][]string{{"--listen", ""}, {"--listen", " "}} {
		_, _, err := c.run(append([]string{"server"}, args...)...)
		if err == nil || !strings.Contains(err.Error(), "empty address") {
			t.Errorf("server %q = %v; want an error about the empty address", args, err)
		}
	}
	_, _, err := c.run("server", "--listen", "off")
	if err == nil || !strings.Contains(err.Error(), "--tls-listen") {
		t.Errorf("server --listen off = %v; want an error asking for --tls-listen", err)
	}
	for _, bad := range []string{"nginx.internal", "10.0.0.0/33", "10.0.0.5,"} {
		_, _, err := c.run("server", "--trusted-proxy", "127.0.0.1", "--trusted-proxy", bad)
		if err == nil || !strings.Contains(err.Error(), "--trusted-proxy") || !strings.Contains(err.Error(), "CIDR") {
			t.Errorf("server --trusted-proxy %q = %v; want an error naming the flag and the CIDR form", bad, err)
		}
	}
	// The PROXY protocol is read only from trusted proxies, on the TLS listener: without
	// either there is nothing it could safely apply to.
	for _, args := range [][]string{
		{"server", "--proxy-protocol", "--tls-listen", "127.0.0.1:0"},
		{"server", "--proxy-protocol", "--trusted-proxy", "127.0.0.1"},
	} {
		_, _, err := c.run(args...)
		if err == nil || !strings.Contains(err.Error(), "--proxy-protocol needs --tls-listen") || !strings.Contains(err.Error(), "--trusted-proxy") {
			t.Errorf("edgeward %s = %v; want an error asking for --tls-listen and --trusted-proxy", strings.Join(args, " "), err)
		}
	}
}

// The CLI refuses to send a token over plain HTTP to another machine, for the operator
// API and for publishing.
func TestCLIRefusesTokensInClear(t *testing.T) {
	c := newCLI(t)
	model := writeTemp(t, "m.onnx", "model")
	for _, args := range [][]string{
		{"devices", "list", "--server", "http://203.0.113.7:8440", "--token", "ewo_x_y"},
		{"rollout", "status", "--server", "http://edgeward.example", "--token", "ewo_x_y"},
		{"publish", "--server", "http://203.0.113.7:8440", "--token", "ewo_x_y", "--kind", "model", "--name", "m", "--version", "1.0.0", model},
	} {
		_, _, err := c.run(args...)
		if !errors.Is(err, operatorapi.ErrPlainHTTP) {
			t.Errorf("edgeward %s = %v; want ErrPlainHTTP", strings.Join(args, " "), err)
		}
	}
}

// edgeward retire keeps the newest versions, refuses nonsense, and the oversized custom
// metadata of the attack is refused by publish.
func TestCLIRetireAndBounds(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	for _, v := range []string{"1.0.0", "1.1.0", "1.2.0"} {
		c.must("publish", "--kind", "model", "--name", "vib", "--version", v, writeTemp(t, "m.onnx", "model "+v))
	}
	huge := fmt.Sprintf(`{"notes":%q}`, strings.Repeat("x", 63<<10))
	if _, _, err := c.run("publish", "--kind", "model", "--name", "vib", "--version", "2.0.0", "--custom", huge, writeTemp(t, "m.onnx", "big")); !errors.Is(err, repository.ErrTooLarge) {
		t.Errorf("publish with 63 KiB of custom metadata = %v; want ErrTooLarge", err)
	}
	if _, _, err := c.run("retire", "--kind", "model", "--name", "vib"); err == nil {
		t.Error("retire without --version or --keep succeeded")
	}
	out := c.must("retire", "--kind", "model", "--name", "vib", "--keep", "1")
	if !strings.Contains(out, "retired models/vib/1.0.0.onnx") || !strings.Contains(out, "retired models/vib/1.1.0.onnx") || strings.Contains(out, "1.2.0") {
		t.Errorf("retire --keep 1:\n%s", out)
	}
	status := c.must("repo", "status")
	if strings.Contains(status, "models/vib/1.0.0.onnx") || !strings.Contains(status, "models/vib/1.2.0.onnx") {
		t.Errorf("repo status after retiring:\n%s", status)
	}
	// Nothing beyond the versions to keep: a no-op that says so and succeeds.
	if out := c.must("retire", "--kind", "model", "--name", "vib", "--keep", "5"); !strings.Contains(out, "none beyond the 5 to keep: nothing to do") {
		t.Errorf("retire --keep 5 with 1 version listed:\n%s", out)
	}
	if out := c.must("retire", "--sweep"); !strings.Contains(out, "removed 0") {
		t.Errorf("retire --sweep within the grace: %s", out)
	}
}

// `--gates min_accuracy=NaN` is refused at publish (issue 15 item 8).
func TestCLIPublishRefusesNaNGates(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	for _, g := range []string{"min_accuracy=NaN", "max_p99_ms=Inf", "max_rss_mb=-1"} {
		if _, _, err := c.run("publish", "--kind", "model", "--name", "vib", "--version", "1.0.0", "--gates", g, writeTemp(t, "m.onnx", "m")); err == nil || !strings.Contains(err.Error(), "finite") {
			t.Errorf("publish --gates %s = %v; want a refusal", g, err)
		}
	}
	if status := c.must("repo", "status"); strings.Contains(status, "models/vib") {
		t.Errorf("a refused publish is listed:\n%s", status)
	}
}

// A token created on the repository machine (--repo) is audited like one created
// through the server (issue 15 item 9), with the CLI user as the actor.
func TestLocalTokenCreateIsAudited(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.env["USER"] = "ursula"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	c.must("token", "create", "--name", "sam", "--role", "security-admin")
	repo, err := repository.Open(repository.Config{Dir: c.repo})
	if err != nil {
		t.Fatal(err)
	}
	l, db, err := reposerver.OpenAudit(t.Context(), repo)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(t.Context(), audit.Query{Kind: "token.create"})
	if err != nil || len(recs) != 1 || recs[0].Actor != "cli:ursula" || !strings.Contains(string(recs[0].Data), `"operator":"sam"`) {
		t.Fatalf("token.create records = %+v, %v; want one by cli:ursula for sam", recs, err)
	}
}
