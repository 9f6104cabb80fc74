package main

import (
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestRepoRenewAsDocumentedWithAThresholdRole runs docs/REPOSITORY.md's 'repo renew
// --role targets --role models --role runtimes' once models needs 2 of 2 holders' keys:
// targets and runtimes, whose keys are here, are renewed; models is staged on its own
// for its holders. All three were staged together, and none renewed.
func TestRepoRenewAsDocumentedWithAThresholdRole(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "operator-secret"
	c.must("repo", "init", c.repo)
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

	out := c.must("repo", "renew", "--role", "targets", "--role", "models", "--role", "runtimes")
	for _, want := range []string{"targets renewed: expires", "runtimes renewed: expires", "models v3: 0 of 2 signatures by its keys (2 more needed)", "'edgeward role publish --role models'"} {
		if !strings.Contains(out, want) {
			t.Errorf("repo renew --role targets --role models --role runtimes lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "staged") && (strings.Contains(out, "targets v3:") || strings.Contains(out, "runtimes v2:")) {
		t.Errorf("repo renew staged a role whose key is here:\n%s", out)
	}
}
