package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// buildCLI builds the edgeward binary once for a test.
func buildCLI(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "edgeward")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

// runAs runs the binary with env on top of the process environment (minus the
// EDGEWARD_ variables) and returns its combined output and error.
func runAs(bin string, env []string, args ...string) (string, error) {
	cmd := exec.Command(bin, args...)
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "EDGEWARD_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestRootCeremonyWithHoldersKeys is the documented ceremony with real processes and
// real key files: three holders make their keys with their own passphrases, the
// repository is created from their public halves only, root v1 is signed by two of them
// and published; a holder changes their passphrase and the key then signs a root
// rotation with the new passphrase and refuses the old one; every step is in the audit
// log with keys, thresholds and signers.
func TestRootCeremonyWithHoldersKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildCLI(t)
	work := t.TempDir()
	repo := filepath.Join(work, "repo")
	must := func(env []string, args ...string) string {
		t.Helper()
		out, err := runAs(bin, env, args...)
		if err != nil {
			t.Fatalf("edgeward %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	holders := []string{"alice", "bob", "carol"}
	keyFile, pubFile, pass := map[string]string{}, map[string]string{}, map[string]string{}
	keyRE := regexp.MustCompile(`written to (\S+\.key)`)
	pubRE := regexp.MustCompile(`public key: (\S+\.pub)`)
	for _, h := range holders {
		pass[h] = h + "-own-passphrase"
		dir := filepath.Join(work, h)
		out := must([]string{"EDGEWARD_PASSPHRASE=" + pass[h]}, "keys", "gen", "--role", "root", "--out", dir)
		km, pm := keyRE.FindStringSubmatch(out), pubRE.FindStringSubmatch(out)
		if km == nil || pm == nil {
			t.Fatalf("keys gen output names no key and public key file:\n%s", out)
		}
		keyFile[h], pubFile[h] = km[1], pm[1]
		if data, _ := os.ReadFile(pubFile[h]); strings.Contains(string(data), "ciphertext") || strings.Contains(string(data), "private") {
			t.Fatalf("%s holds private material:\n%s", pubFile[h], data)
		}
	}
	// The operator's passphrase protects only the targets and delegated keys. --key is
	// accepted as a synonym and must be used too.
	ops := []string{"EDGEWARD_PASSPHRASE=operator-pass", "EDGEWARD_REPO=" + repo}
	out := must(ops, "repo", "init", repo, "--root-key", pubFile["alice"], "--root-key", pubFile["bob"], "--key", pubFile["carol"])
	if !strings.Contains(out, "root v1 staged") {
		t.Fatalf("repo init with holders' keys:\n%s", out)
	}
	offline, _ := filepath.Glob(filepath.Join(repo, "keys", "offline", "root-*"))
	if len(offline) != 0 {
		t.Fatalf("init made root keys of its own: %v", offline)
	}
	if out, err := runAs(bin, ops, "repo", "status"); err == nil || !strings.Contains(out, "root sign") {
		t.Fatalf("status before root v1 is published = %v, want an error naming 'root sign':\n%s", err, out)
	}
	proposal := filepath.Join(repo, "staged", "root", "1.root.json")
	var rootV1 struct {
		Signed struct {
			Roles map[string]struct{ KeyIDs []string } `json:"roles"`
		} `json:"signed"`
	}
	data, err := os.ReadFile(proposal)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(data, &rootV1); err != nil {
		t.Fatal(err)
	}
	if n := len(rootV1.Signed.Roles["root"].KeyIDs); n != 3 {
		t.Fatalf("staged root v1 has %d root keys; want the 3 holders'", n)
	}

	// Alice signs on her machine with her own passphrase; bob's passphrase does not
	// open her key.
	holderEnv := func(h string) []string { return []string{"EDGEWARD_PASSPHRASE=" + pass[h], "EDGEWARD_REPO=" + repo} }
	if out, err := runAs(bin, []string{"EDGEWARD_PASSPHRASE=" + pass["bob"]}, "root", "sign", "--key", keyFile["alice"], "--proposal", proposal); err == nil || !strings.Contains(out, "wrong passphrase") {
		t.Fatalf("alice's key with bob's passphrase = %v\n%s", err, out)
	}
	if out := must([]string{"EDGEWARD_PASSPHRASE=" + pass["alice"]}, "root", "sign", "--key", keyFile["alice"], "--proposal", proposal); !strings.Contains(out, "1 of 2 signatures by its own root keys (1 more needed)") {
		t.Fatalf("root sign does not say how many signatures are still needed:\n%s", out)
	}
	if out, err := runAs(bin, ops, "root", "publish"); err == nil || !strings.Contains(out, "needs 2 signatures") {
		t.Fatalf("publish with 1 of 2 signatures = %v\n%s", err, out)
	}
	if out := must(holderEnv("bob"), "root", "sign", "--key", keyFile["bob"]); !strings.Contains(out, "2 of 2 signatures by its own root keys (enough)") || !strings.Contains(out, "ready") {
		t.Fatalf("root sign by the second holder does not say root v1 is ready:\n%s", out)
	}
	if out := must(ops, "root", "publish"); !strings.Contains(out, "root v1 published") {
		t.Fatalf("publish root v1:\n%s", out)
	}
	must(ops, "repo", "status")
	model := writeTemp(t, "m.onnx", "model bytes")
	must(ops, "publish", "--kind", "model", "--name", "m", "--version", "1.0.0", model)

	// Carol changes her passphrase: the old one no longer opens her key, the new one
	// signs root v2 (which raises the root threshold to 3).
	newPass := writeTemp(t, "carol-new", "carol-second-passphrase\n")
	must([]string{"EDGEWARD_PASSPHRASE=" + pass["carol"]}, "keys", "passwd", keyFile["carol"], "--new-passphrase-file", newPass)
	if out, err := runAs(bin, []string{"EDGEWARD_PASSPHRASE=carol-wrong"}, "keys", "passwd", keyFile["carol"], "--new-passphrase-file", newPass); err == nil || !strings.Contains(out, "wrong passphrase") {
		t.Fatalf("keys passwd with a wrong current passphrase = %v\n%s", err, out)
	}
	must(ops, "root", "propose", "--threshold", "root=3")
	// A holder reviews what the proposal changes before signing, and sees it again when signing.
	if out := must(ops, "root", "show"); !strings.Contains(out, "root v2, replacing v1") || !strings.Contains(out, "root: 3 of 3 keys (was 2 of 3)") {
		t.Fatalf("root show of root v2 does not say the root threshold rises to 3:\n%s", out)
	}
	if out, err := runAs(bin, holderEnv("carol"), "root", "sign", "--key", keyFile["carol"]); err == nil || !strings.Contains(out, "wrong passphrase") {
		t.Fatalf("carol's key with her old passphrase = %v\n%s", err, out)
	}
	must([]string{"EDGEWARD_REPO=" + repo}, "root", "sign", "--key", keyFile["carol"], "--passphrase-file", newPass)
	if out := must(holderEnv("alice"), "root", "sign", "--key", keyFile["alice"]); !strings.Contains(out, "2 of 3 signatures by its own root keys (1 more needed); 2 of 2 by the keys of root v1 (enough)") ||
		!strings.Contains(out, "signing:\n  root v2, replacing v1") || !strings.Contains(out, "root: 3 of 3 keys (was 2 of 3)") {
		t.Fatalf("root sign of root v2 does not count old and new signatures:\n%s", out)
	}
	if out, err := runAs(bin, ops, "root", "publish"); err == nil || !strings.Contains(out, "needs 3 signatures") {
		t.Fatalf("publish root v2 with 2 of the new 3 = %v\n%s", err, out)
	}
	// Past a threshold it says how many there are and how many are needed, not "3 of 2".
	if out := must(holderEnv("bob"), "root", "sign", "--key", keyFile["bob"]); !strings.Contains(out, "3 of 3 signatures by its own root keys (enough); 3 by the keys of root v1, 2 needed (enough)") {
		t.Fatalf("root sign of root v2 past the threshold of root v1:\n%s", out)
	}
	if out := must(ops, "root", "publish"); !strings.Contains(out, "root v2 published") {
		t.Fatalf("publish root v2:\n%s", out)
	}

	// The audit log names what changed and who signed.
	ids := map[string]string{}
	for _, h := range holders {
		data, err := os.ReadFile(keyFile[h])
		if err != nil {
			t.Fatal(err)
		}
		var kf struct{ KeyID string }
		json.Unmarshal(data, &kf)
		ids[h] = kf.KeyID
	}
	export := must(ops, "audit", "export")
	type rec struct {
		Kind    string         `json:"kind"`
		Subject string         `json:"subject"`
		Data    map[string]any `json:"data"`
	}
	var recs []rec
	for _, line := range strings.Split(export, "\n") {
		var r rec
		if json.Unmarshal([]byte(line), &r) == nil && strings.HasPrefix(r.Kind, "repo.root.") {
			recs = append(recs, r)
		}
	}
	find := func(kind, subject string) []rec {
		var out []rec
		for _, r := range recs {
			if r.Kind == kind && r.Subject == subject {
				out = append(out, r)
			}
		}
		return out
	}
	pub1 := find("repo.root.publish", "root v1")
	if len(pub1) != 1 {
		t.Fatalf("audit records of root changes: %+v\nexport:\n%s", recs, export)
	}
	signers, _ := json.Marshal(pub1[0].Data["signed_by"])
	added, _ := json.Marshal(pub1[0].Data["keys_added"])
	for _, h := range []string{"alice", "bob"} {
		if !strings.Contains(string(signers), ids[h]) {
			t.Errorf("root v1 publication names signers %s; want %s's key %s", signers, h, ids[h][:8])
		}
	}
	if strings.Contains(string(signers), ids["carol"]) {
		t.Errorf("root v1 publication names carol as a signer: %s", signers)
	}
	for _, h := range holders {
		if !strings.Contains(string(added), ids[h]) {
			t.Errorf("root v1 publication: keys added %s lack %s's key", added, h)
		}
	}
	if len(find("repo.root.sign", "root v1")) != 1 { // alice signed a copy away from the repository
		t.Errorf("want one repo.root.sign for root v1 (bob's, in the repository): %+v", recs)
	}
	prop2 := find("repo.root.propose", "root v2")
	pub2 := find("repo.root.publish", "root v2")
	if len(prop2) != 1 || len(pub2) != 1 || len(find("repo.root.sign", "root v2")) != 3 {
		t.Fatalf("root v2 records: %+v", recs)
	}
	for _, r := range []rec{prop2[0], pub2[0]} {
		th, _ := r.Data["thresholds"].(map[string]any)
		if th["root"] != float64(3) {
			t.Errorf("%s records thresholds %v; want root=3", r.Kind, r.Data["thresholds"])
		}
	}
	signers, _ = json.Marshal(pub2[0].Data["signed_by"])
	for _, h := range holders {
		if !strings.Contains(string(signers), ids[h]) {
			t.Errorf("root v2 publication names signers %s; want %s", signers, h)
		}
	}
}
