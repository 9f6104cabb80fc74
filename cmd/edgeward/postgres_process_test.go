package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/pgtest"
)

// TestServerProcessOnPostgres: `edgeward server --db postgres://…` keeps the fleet
// store and the audit log in PostgreSQL. The repository's CLI records into the same log
// ($EDGEWARD_DB), a token made by the CLI works at the server, and the exported log
// verifies; nothing is written to DIR/fleet.db.
func TestServerProcessOnPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary against a PostgreSQL cluster")
	}
	pg := pgtest.New()
	t.Cleanup(func() { pg.Stop() })
	db := pg.Database(t)
	bin := filepath.Join(t.TempDir(), "edgeward")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	repo := filepath.Join(t.TempDir(), "repo")
	base := append(os.Environ(), "EDGEWARD_PASSPHRASE=pw", "EDGEWARD_REPO="+repo)
	env := append(base, "EDGEWARD_DB="+db)
	runBin := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("edgeward %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	runBin(env, "repo", "init", repo)
	// The server gets the database by flag (its environment has no EDGEWARD_DB).
	url := startServerProcess(t, bin, base, "--db", db, "--sign-delegated")
	model := writeTemp(t, "m.onnx", "real bytes")
	runBin(env, "publish", "--kind", "model", "--name", "m", "--version", "1.0.0", model)
	tok := strings.TrimSpace(runBin(env, "token", "create", "--name", "rita", "--role", "release-manager"))
	tok = tok[strings.LastIndex(tok, "\n")+1:]
	model2 := writeTemp(t, "m2.onnx", "api bytes")
	if out := runBin(env, "publish", "--server", url, "--token", tok, "--kind", "model", "--name", "m", "--version", "2.0.0", model2); !strings.Contains(out, "published models/m/2.0.0.onnx") {
		t.Fatalf("publish through the server: %s", out)
	}

	dir := t.TempDir()
	export, pub, state := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "audit.vkey"), filepath.Join(dir, "last-seen")
	runBin(env, "audit", "export", "-o", export)
	os.WriteFile(pub, []byte(runBin(env, "audit", "pubkey")), 0o644)
	out := runBin(env, "audit", "verify", export, "--key", pub, "--state", state)
	if !strings.Contains(out, "ok: ") {
		t.Fatalf("audit verify: %s", out)
	}
	log, _ := os.ReadFile(export)
	for _, want := range []string{`"kind":"repo.init"`, `"subject":"models/m/1.0.0.onnx"`, `"actor":"operator:rita@`} {
		if !strings.Contains(string(log), want) {
			t.Errorf("the exported audit log has no %s:\n%s", want, log)
		}
	}
	if _, err := os.Stat(filepath.Join(repo, "fleet.db")); !os.IsNotExist(err) {
		t.Errorf("DIR/fleet.db exists (%v): something wrote to sqlite instead of PostgreSQL", err)
	}
}
