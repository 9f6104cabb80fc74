package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestThresholdSigningWithHoldersKeys runs docs/REPOSITORY.md's "Threshold signing for
// targets, models and runtimes" with real processes and real key files: two holders
// make models keys under their own passphrases; the security team makes models a 2-of-2
// role of their keys (staged: models is re-signed under them); alice signs a copy away
// from the repository, bob the staged file in place, a third key's signature does not
// count; the operator publishes it once both have signed. A model publish is then staged
// until both sign it, and the audit log names the signers.
func TestThresholdSigningWithHoldersKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildCLI(t)
	work := t.TempDir()
	repo := filepath.Join(work, "edgeward-repo")
	must := func(env []string, args ...string) string {
		t.Helper()
		out, err := runAs(bin, env, args...)
		if err != nil {
			t.Fatalf("edgeward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	fails := func(env []string, want string, args ...string) string {
		t.Helper()
		out, err := runAs(bin, env, args...)
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("edgeward %s = %v; want an error saying %q\n%s", strings.Join(args, " "), err, want, out)
		}
		return out
	}
	ops := []string{"EDGEWARD_PASSPHRASE=operator-secret", "EDGEWARD_REPO=" + repo}
	keyRE := regexp.MustCompile(`written to (\S+\.key)`)
	pubRE := regexp.MustCompile(`public key: (\S+\.pub)`)
	keyFile, pubFile, env := map[string]string{}, map[string]string{}, map[string][]string{}
	for _, h := range []string{"alice", "bob", "mallory"} {
		env[h] = []string{"EDGEWARD_PASSPHRASE=" + h + "-secret", "EDGEWARD_REPO=" + repo}
		out := must(env[h], "keys", "gen", "--role", "models", "--out", filepath.Join(work, h))
		km, pm := keyRE.FindStringSubmatch(out), pubRE.FindStringSubmatch(out)
		if km == nil || pm == nil || !strings.Contains(out, "edgeward role keys --role models --add-key") {
			t.Fatalf("keys gen --role models:\n%s", out)
		}
		keyFile[h], pubFile[h] = km[1], pm[1]
	}
	must(ops, "repo", "init", repo)
	var status struct {
		Roles []struct {
			Role string   `json:"role"`
			Keys []string `json:"keys"`
		} `json:"roles"`
	}
	if err := json.Unmarshal([]byte(must(ops, "repo", "status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	var oldModelsKey string
	for _, r := range status.Roles {
		if r.Role == "models" {
			oldModelsKey = r.Keys[0]
		}
	}

	// 1. The security team makes models 2 of alice's and bob's keys.
	out := must(ops, "role", "keys", "--role", "models", "--add-key", pubFile["alice"], "--add-key", pubFile["bob"], "--revoke-key", oldModelsKey[:8], "--threshold", "2")
	if !strings.Contains(out, "models v2: 0 of 2 signatures by its keys (2 more needed)") || !strings.Contains(out, "targets v2: 1 of 1 signatures by its keys (enough)") {
		t.Fatalf("role keys does not say what it staged and what is missing:\n%s", out)
	}
	// 2. Alice reviews and signs a copy, away from the repository.
	proposal := filepath.Join(work, "proposal.json")
	copyFile(t, filepath.Join(repo, "staged", "models", "2.models.json"), proposal)
	if out := must(ops, "role", "show", "--role", "models", "--proposal", proposal); !strings.Contains(out, "models v2, replacing v1") ||
		!strings.Contains(out, "delegation models: 2 of 2 keys (was 1 of 1)") || !strings.Contains(out, oldModelsKey[:8]+" REVOKED") {
		t.Fatalf("role show does not show the delegation change:\n%s", out)
	}
	fails(env["bob"], "wrong passphrase", "role", "sign", "--role", "models", "--key", keyFile["alice"], "--proposal", proposal)
	if out := must(env["alice"], "role", "sign", "--role", "models", "--key", keyFile["alice"], "--proposal", proposal); !strings.Contains(out, "signing:\n  models v2") ||
		!strings.Contains(out, "models v2: 1 of 2 signatures by its keys (1 more needed)") {
		t.Fatalf("role sign by alice:\n%s", out)
	}
	fails(ops, "needs 2 signatures by its keys, has 1", "role", "publish", "--role", "models", "--proposal", proposal)
	// A key not in the role: refused in place; on a copy it signs, and does not count.
	fails(env["mallory"], "is not a key of models", "role", "sign", "--role", "models", "--key", keyFile["mallory"])
	must(env["mallory"], "role", "sign", "--role", "models", "--key", keyFile["mallory"], "--proposal", proposal)
	fails(ops, "needs 2 signatures by its keys, has 1", "role", "publish", "--role", "models", "--proposal", proposal)
	// Bob signs the staged file in place; the publication adds alice's from her copy.
	if out := must(env["bob"], "role", "sign", "--role", "models", "--key", keyFile["bob"]); !strings.Contains(out, "models v2: 1 of 2 signatures by its keys (1 more needed)") {
		t.Fatalf("role sign by bob in place:\n%s", out)
	}
	if out := must(ops, "role", "publish", "--role", "models", "--proposal", proposal); !strings.Contains(out, "models v2 published") || !strings.Contains(out, "targets v2 published") {
		t.Fatalf("role publish:\n%s", out)
	}

	// 3. A release is staged until both holders sign it.
	model := writeTemp(t, "iris.onnx", "model bytes")
	if out := must(ops, "publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", model); !strings.Contains(out, "models v3: 0 of 2 signatures by its keys (2 more needed)") || strings.Contains(out, "published models/") {
		t.Fatalf("publish to a 2-of-2 role:\n%s", out)
	}
	if out := must(ops, "repo", "status"); strings.Contains(out, "models/iris/1.0.0.onnx") {
		t.Fatalf("the staged model is listed before it is published:\n%s", out)
	}
	fails(ops, "a staged change of the role is pending", "publish", "--kind", "model", "--name", "iris", "--version", "1.0.1", model)
	if out := must(env["alice"], "role", "sign", "--role", "models", "--key", keyFile["alice"]); !strings.Contains(out, "ADDED models/iris/1.0.0.onnx: 11 bytes, sha256 ") {
		t.Fatalf("role sign does not show the target added:\n%s", out)
	}
	if out := must(env["bob"], "role", "sign", "--role", "models", "--key", keyFile["bob"]); !strings.Contains(out, "2 of 2 signatures by its keys (enough)") || !strings.Contains(out, "ready") {
		t.Fatalf("role sign by the second holder:\n%s", out)
	}
	must(ops, "role", "publish", "--role", "models")
	if out := must(ops, "repo", "status"); !strings.Contains(out, "models/iris/1.0.0.onnx") {
		t.Fatalf("the model is not listed once published:\n%s", out)
	}

	// The audit log names the signers of each publication.
	ids := map[string]string{}
	for h, f := range keyFile {
		var kf struct{ KeyID string }
		data, _ := os.ReadFile(f)
		json.Unmarshal(data, &kf)
		ids[h] = kf.KeyID
	}
	var pubs []string
	for _, line := range strings.Split(must(ops, "audit", "export"), "\n") {
		var r struct {
			Kind string         `json:"kind"`
			Data map[string]any `json:"data"`
		}
		if json.Unmarshal([]byte(line), &r) == nil && r.Kind == "repo.role.publish" {
			b, _ := json.Marshal(r.Data["signed_by"])
			pubs = append(pubs, string(b))
		}
	}
	if len(pubs) != 2 {
		t.Fatalf("repo.role.publish records: %q; want 2", pubs)
	}
	for _, p := range pubs {
		if !strings.Contains(p, ids["alice"]) || !strings.Contains(p, ids["bob"]) || strings.Contains(p, ids["mallory"]) {
			t.Errorf("repo.role.publish signed_by %s; want alice's and bob's keys, not mallory's", p)
		}
	}
}
