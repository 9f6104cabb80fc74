package main

import (
	"os"
	"strings"
	"testing"
)

// TestRepoStatusShowsAPendingRootChange: after 'keys rotate --role timestamp' without
// root keys (the rotation after a theft, waiting for the holders), repo status says that
// a root proposal is pending, how many signatures it lacks, that the current keys stay
// in force until it is published, and which key it revokes. It showed the table alone.
func TestRepoStatusShowsAPendingRootChange(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "pending-secret"
	c.must("repo", "init", c.repo)
	before := c.must("repo", "status")
	if strings.Contains(before, "pending:") {
		t.Fatalf("repo status with no proposal says pending:\n%s", before)
	}
	c.must("keys", "rotate", "--role", "timestamp")
	out := c.must("repo", "status")
	for _, want := range []string{"pending: root v2: 0 of 2 signatures", "the keys above stay in force", "timestamp: 1 of 1 keys", "REVOKED"} {
		if !strings.Contains(out, want) {
			t.Errorf("repo status after a staged timestamp rotation lacks %q:\n%s", want, out)
		}
	}
}

// TestKeysGenSaysWhereThePublicKeyGoes: a targets key's public half goes into a root
// change ('root propose --add-key targets=FILE'), not 'repo init --root-key', which is
// what keys gen told the holder of every role's key.
func TestKeysGenSaysWhereThePublicKeyGoes(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "gen-secret"
	dir := t.TempDir()
	if out := c.must("keys", "gen", "--role", "targets", "--out", dir); !strings.Contains(out, "'edgeward root propose --add-key targets=") || strings.Contains(out, "repo init") {
		t.Errorf("keys gen --role targets = %q; want it to point at root propose --add-key targets=", out)
	}
	if out := c.must("keys", "gen", "--role", "root", "--out", dir); !strings.Contains(out, "'edgeward repo init --root-key'") {
		t.Errorf("keys gen --role root = %q; want it to point at repo init --root-key", out)
	}
}

// TestKeysGenRefusesOnlineRoles: a snapshot or timestamp key made by keys gen is
// encrypted and away from the repository, and the server signs with the clear key in
// keys/online only; keys gen advised adding it to root ('root propose --add-key
// timestamp=FILE'), after which the server could re-sign neither role and the devices
// stopped once the timestamp expired (Refresh: "key file is encrypted: a passphrase is
// needed"). It is refused, pointing at 'keys rotate', and writes nothing.
func TestKeysGenRefusesOnlineRoles(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "gen-secret"
	for _, role := range []string{"snapshot", "timestamp"} {
		dir := t.TempDir()
		_, _, err := c.run("keys", "gen", "--role", role, "--out", dir)
		if err == nil || !strings.Contains(err.Error(), "'edgeward keys rotate --role "+role+"'") || !strings.Contains(err.Error(), "nothing was written") {
			t.Errorf("keys gen --role %s = %v; want it refused, pointing at keys rotate", role, err)
		}
		if files, _ := os.ReadDir(dir); len(files) != 0 {
			t.Errorf("keys gen --role %s wrote %d files", role, len(files))
		}
	}
}
