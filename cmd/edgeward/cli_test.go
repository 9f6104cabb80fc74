package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/testport"
	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

type cli struct {
	t    *testing.T
	env  map[string]string
	repo string
}

func newCLI(t *testing.T) *cli {
	return &cli{t: t, env: map[string]string{}, repo: filepath.Join(t.TempDir(), "repo")}
}

// run runs the CLI in-process with the given arguments and returns stdout, stderr.
func (c *cli) run(args ...string) (string, string, error) {
	var out, errb bytes.Buffer
	env := &cliEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string {
		if k == "EDGEWARD_REPO" {
			return c.repo
		}
		return c.env[k]
	}}
	err := run(context.Background(), env, args)
	return out.String(), errb.String(), err
}

func (c *cli) must(args ...string) string {
	c.t.Helper()
	out, errs, err := c.run(args...)
	if err != nil {
		c.t.Fatalf("edgeward %s: %v\n%s", strings.Join(args, " "), err, errs)
	}
	return out
}

func writeTemp(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCLIRepositoryLifecycle(t *testing.T) {
	c := newCLI(t)
	pass := writeTemp(t, "pass", "s3cret\n")
	// The audit key stays inside here so that the test can move it out itself below.
	out := c.must("repo", "init", c.repo, "--passphrase-file", pass, "--key-type", "ecdsa-p256", "--audit-key", "inside")
	if !strings.Contains(out, "root: 2 of 3 ecdsa-p256 keys") {
		t.Fatalf("repo init output:\n%s", out)
	}
	if _, _, err := c.run("repo", "init", c.repo, "--passphrase-file", pass); err == nil || !strings.Contains(err.Error(), "already") {
		t.Fatalf("second init = %v; want a refusal", err)
	}

	model := writeTemp(t, "model.onnx", "model bytes v1")
	// No passphrase anywhere, no terminal: a clear error, nothing published.
	if _, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", model); err == nil || !strings.Contains(err.Error(), "no passphrase") {
		t.Fatalf("publish without passphrase = %v", err)
	}
	c.env["EDGEWARD_PASSPHRASE"] = "wrong"
	if _, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", model); err == nil || !strings.Contains(err.Error(), "wrong passphrase") {
		t.Fatalf("publish with a wrong passphrase = %v", err)
	}
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	// Gates are judged on the probe set: a gated model before its probe set is refused.
	gated := []string{"publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", "--gates", "min_accuracy=0.95,max_p99_ms=5", "--custom", `{"owner":"vision"}`, model}
	if _, _, err := c.run(gated...); !errors.Is(err, repository.ErrNoProbeSet) || !strings.Contains(err.Error(), "publish the probe set first") {
		t.Fatalf("gated model before its probe set = %v; want ErrNoProbeSet", err)
	}
	c.must("publish", "--kind", "probe", "--name", "iris", "--version", "1.0.0", writeTemp(t, "probe.json", `{"inputs":[[5.1,3.5,1.4,0.2]],"labels":[0]}`))
	out = c.must(gated...)
	if !strings.Contains(out, "published models/iris/1.0.0.onnx") {
		t.Fatalf("publish output: %s", out)
	}
	if _, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", "--gates", "min_acuracy=1", model); err == nil || !strings.Contains(err.Error(), "unknown gate") {
		t.Fatalf("misspelt gate = %v", err)
	}
	other := writeTemp(t, "model.onnx", "other bytes")
	if _, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", other); err == nil || !strings.Contains(err.Error(), "different content") {
		t.Fatalf("republish = %v; want refused", err)
	}
	if _, _, err := c.run("publish", "--kind", "model", "--name", "iris", "--version", "1.0.0", "--key", "/nonexistent.key", model+"x"); err == nil {
		t.Fatal("publish of a missing file succeeded")
	}

	if out := c.must("repo", "renew", "--role", "targets", "--role", "models"); !strings.Contains(out, "targets renewed: expires") || !strings.Contains(out, "models renewed: expires") {
		t.Fatalf("repo renew:\n%s", out)
	}
	if _, _, err := c.run("repo", "renew", "--role", "root"); err == nil || !strings.Contains(err.Error(), "root propose --expires") {
		t.Fatalf("repo renew --role root = %v; want pointed to the ceremony", err)
	}
	var status struct {
		Roles []struct {
			Role    string `json:"role"`
			Version int64  `json:"version"`
		} `json:"roles"`
		Targets []repository.TargetInfo `json:"targets"`
	}
	if err := json.Unmarshal([]byte(c.must("repo", "status", "--json")), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Targets) != 2 || status.Targets[0].Path != "models/iris/1.0.0.onnx" || status.Targets[0].Meta.Probe != "probes/iris/1.0.0.json" ||
		status.Targets[0].Meta.Gates.MinAccuracy != 0.95 || string(status.Targets[0].Meta.Extra["owner"]) != `"vision"` {
		t.Fatalf("status targets = %+v", status.Targets)
	}

	// Root ceremony: a holder makes a new key on their machine; root v2 adds it with
	// threshold 3; signed by two holders (old threshold 2) and ... the new threshold 3.
	holder := t.TempDir()
	out = c.must("keys", "gen", "--role", "root", "--out", holder)
	newKey, _ := filepath.Glob(filepath.Join(holder, "root-*.key"))
	if len(newKey) != 1 {
		t.Fatalf("keys gen wrote %v (%s)", newKey, out)
	}
	if _, _, err := c.run("root", "propose", "--threshold", "root=3", "--expires", "-1h"); err == nil || !strings.Contains(err.Error(), "positive lifetime") {
		t.Fatalf("root propose of a root already expired = %v; want refused", err)
	}
	c.must("root", "propose", "--add-key", "root="+newKey[0], "--threshold", "root=3")
	old, _ := filepath.Glob(filepath.Join(c.repo, "keys", "offline", "root-*.key"))
	// Copy the proposal away and sign the copy, as a holder on another machine would.
	prop := filepath.Join(c.repo, "staged", "root", "2.root.json")
	c.must("root", "sign", "--key", old[0])
	c.must("root", "sign", "--key", old[1])
	if _, _, err := c.run("root", "publish"); err == nil || !strings.Contains(err.Error(), "threshold") {
		t.Fatalf("root publish with 2 of 3 new signatures = %v; want a threshold error", err)
	}
	copyFile(t, prop, filepath.Join(holder, "2.root.json"))
	// Away from the repository the holder compares the proposal with the root in force.
	if out := c.must("root", "show", "--proposal", filepath.Join(holder, "2.root.json"), "--current", filepath.Join(c.repo, "repository", "metadata", "1.root.json")); !strings.Contains(out, "root: 3 of 4 keys (was 2 of 3)") || !strings.Contains(out, " ADDED") {
		t.Fatalf("root show --current does not name the added key and the threshold:\n%s", out)
	}
	// A key of neither root is refused: its signature would count for nothing.
	stranger := t.TempDir()
	c.must("keys", "gen", "--role", "targets", "--out", stranger)
	strangerKey, _ := filepath.Glob(filepath.Join(stranger, "targets-*.key"))
	if len(strangerKey) != 1 {
		t.Fatalf("keys gen wrote %v", strangerKey)
	}
	if _, _, err := c.run("root", "sign", "--proposal", filepath.Join(holder, "2.root.json"), "--key", strangerKey[0]); err == nil || !strings.Contains(err.Error(), "count for neither") {
		t.Fatalf("root sign --proposal with a targets key = %v; want a refusal", err)
	}
	c.must("root", "sign", "--proposal", filepath.Join(holder, "2.root.json"), "--key", newKey[0])
	out = c.must("root", "publish", "--proposal", filepath.Join(holder, "2.root.json"))
	if !strings.Contains(out, "root v2 published") {
		t.Fatalf("root publish: %s", out)
	}
	out = c.must("keys", "rotate", "--role", "models")
	if !strings.Contains(out, "models: new key") {
		t.Fatalf("keys rotate: %s", out)
	}
	// The models key rotated away is named as still on disk (root publish says so).
	if r, err := repository.Open(repository.Config{Dir: c.repo}); err != nil {
		t.Fatal(err)
	} else if stale := staleKeyFiles(context.Background(), r); len(stale) != 1 || !strings.HasPrefix(filepath.Base(stale[0]), "models-") {
		t.Errorf("stale key files after a models rotation = %v; want the old models key", stale)
	}
	out = c.must("keys", "rotate", "--role", "timestamp")
	if !strings.Contains(out, "root proposal staged") {
		t.Fatalf("keys rotate timestamp without root keys should stage a proposal: %s", out)
	}
	// Nothing is revoked yet: the old key goes with the root the holders publish.
	if !strings.Contains(out, "will be revoked when root v3 is published") || strings.Contains(out, "; revoked") {
		t.Fatalf("keys rotate timestamp says the old key is revoked before root v3 is published: %s", out)
	}

	// The auditor exports and verifies the log offline with the log key, keeping the
	// checkpoint it verified in a state file.
	dir := t.TempDir()
	export, pub, state := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "audit.vkey"), filepath.Join(dir, "last-seen")
	c.must("audit", "export", "-o", export)
	os.WriteFile(pub, []byte(c.must("audit", "pubkey")), 0o644)
	out = c.must("audit", "verify", export, "--key", pub, "--state", state)
	// init, publish (probe set, model), targets and models renewed, root v2 proposed,
	// signed twice, published, models rotated, root v3 proposed
	if !strings.Contains(out, "ok: 11 records") || !strings.Contains(out, "last-seen now holds checkpoint 11") {
		t.Fatalf("audit verify: %s", out)
	}
	// One record with its inclusion proof, checked alone against the state.
	proof := filepath.Join(dir, "proof.json")
	c.must("audit", "prove", "3", "--state", state, "-o", proof)
	out = c.must("audit", "verify", "--proof", proof, "--key", pub, "--state", state)
	if !strings.Contains(out, "ok: record 3 (repo.publish models/iris/1.0.0.onnx") {
		t.Fatalf("audit verify --proof: %s", out)
	}
	// The checkpoint key leaves the data directory; the log goes on, signed by it.
	if _, _, err := c.run("audit", "move-key", "--to", filepath.Join(c.repo, "inside.key")); err == nil {
		t.Fatal("audit move-key into the repository directory succeeded")
	}
	c.must("audit", "move-key", "--to", filepath.Join(dir, "audit.key"))
	if m, _ := filepath.Glob(filepath.Join(c.repo, "keys", "online", "audit-*")); len(m) != 0 {
		t.Fatalf("the audit key is still in the data directory: %v", m)
	}
	c.must("audit", "export", "-o", export)
	if out := c.must("audit", "verify", export, "--key", pub, "--state", state); !strings.Contains(out, "ok: 11 records") {
		t.Fatalf("audit verify after move-key: %s", out)
	}
	// A state file that exists but is empty (truncated, or a failed restore) is refused
	// and left as it is: it would turn the rollback and fork checks off silently, and be
	// overwritten with whatever verified next (found by an outside audit, 1 Dec).
	empty := filepath.Join(dir, "empty-state")
	os.WriteFile(empty, []byte("\n"), 0o644)
	if _, _, err := c.run("audit", "verify", export, "--key", pub, "--state", empty); err == nil || !strings.Contains(err.Error(), "is empty") {
		t.Fatalf("audit verify with an empty --state = %v; want it refused", err)
	}
	if b, _ := os.ReadFile(empty); string(b) != "\n" {
		t.Fatalf("the empty state file was overwritten: %q", b)
	}
	data, _ := os.ReadFile(export)
	os.WriteFile(export, []byte(strings.Replace(string(data), "models/iris/1.0.0.onnx", "models/iris/6.6.6.onnx", 1)), 0o644)
	if _, _, err := c.run("audit", "verify", export, "--key", pub); err == nil || !strings.Contains(err.Error(), "the log was rewritten") {
		t.Fatalf("audit verify of a modified export = %v; want a rewrite reported", err)
	}
	// An export cut short (head -n 3) is caught: no checkpoint covers it.
	lines := strings.SplitAfter(string(data), "\n")
	os.WriteFile(export, []byte(strings.Join(lines[:3], "")), 0o644)
	if _, _, err := c.run("audit", "verify", export, "--key", pub); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("audit verify of a truncated export = %v; want truncation reported", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestServerProcess runs the real binary as a server process and a go-tuf client
// against it over HTTP, while the CLI publishes into the same directory.
func TestServerProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "edgeward")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	repo := filepath.Join(t.TempDir(), "repo")
	env := append(os.Environ(), "EDGEWARD_PASSPHRASE=pw", "EDGEWARD_REPO="+repo)
	runBin := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("edgeward %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	runBin("repo", "init", repo)
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsAddr := tlsLn.Addr().String()
	tlsLn.Close()
	url := startServerProcess(t, bin, env, "--sign-delegated", "--tls-listen", tlsAddr)
	model := writeTemp(t, "m.onnx", "real bytes")
	runBin("publish", "--kind", "model", "--name", "m", "--version", "1.0.0", model)

	// Publishing through the server's operator API, with a release manager's token.
	tok := strings.TrimSpace(runBin("token", "create", "--name", "rita", "--role", "release-manager"))
	tok = tok[strings.LastIndex(tok, "\n")+1:]
	model2 := writeTemp(t, "m2.onnx", "api bytes")
	// Its gates need its probe set, published first.
	runBin("publish", "--kind", "probe", "--name", "m", "--version", "2.0.0", writeTemp(t, "probe.json", `{"inputs":[[1]],"labels":[0]}`))
	// With --tls-listen the plain listener does not serve the operator API: a valid
	// token sent there is refused (403) and nothing is published.
	args := []string{"publish", "--server", url, "--token", tok, "--kind", "model", "--name", "m", "--version", "2.0.0", "--gates", "min_accuracy=0.5", model2}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "403") || !strings.Contains(string(out), "https://"+tlsAddr) {
		t.Fatalf("publish over the plain listener = %v\n%s; want 403 naming the TLS address", err, out)
	}
	// Over HTTPS: refused without trusting the server's certificate, accepted with
	// $EDGEWARD_SERVER_CA.
	args[2] = "https://" + tlsAddr
	cmd = exec.Command(bin, args...)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "certificate") {
		t.Fatalf("publish over https to an untrusted certificate = %v\n%s", err, out)
	}
	env = append(env, "EDGEWARD_SERVER_CA="+filepath.Join(repo, "tls", "server.pem"))
	if out := runBin(args...); !strings.Contains(out, "published models/m/2.0.0.onnx") {
		t.Fatalf("publish over https: %s", out)
	}
	// An operator certificate from the server's device CA instead of a token.
	prefix := filepath.Join(t.TempDir(), "ops")
	if out := runBin("token", "create", "--name", "ops", "--role", "auditor", "--cert", prefix); !strings.Contains(out, "operator certificate for ops") || strings.Contains(out, "ewo_") {
		t.Fatalf("token create --cert printed %q; want the certificate's files and no token", out)
	}
	if fi, err := os.Stat(prefix + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("operator key file: %v, %v; want mode 0600", fi, err)
	}
	// The same prefix again: refused before a token is made, the key left alone (a key
	// used to be written into whatever file was there, keeping its mode).
	keyBefore, _ := os.ReadFile(prefix + ".key")
	cmd = exec.Command(bin, "token", "create", "--name", "ops2", "--role", "auditor", "--cert", prefix)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "exists") {
		t.Fatalf("token create --cert over existing files = %v\n%s; want a refusal", err, out)
	}
	if keyAfter, _ := os.ReadFile(prefix + ".key"); !bytes.Equal(keyBefore, keyAfter) {
		t.Fatal("the existing operator key was overwritten")
	}
	certEnv := append(env, "EDGEWARD_CLIENT_CERT="+prefix+".pem", "EDGEWARD_CLIENT_KEY="+prefix+".key")
	cmd = exec.Command(bin, "devices", "list", "--server", "https://"+tlsAddr, "--json")
	cmd.Env = certEnv
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "devices") {
		t.Fatalf("devices list with an operator certificate = %v\n%s", err, out)
	}

	root, _ := os.ReadFile(filepath.Join(repo, "repository", "metadata", "1.root.json"))
	cfg, _ := config.New(url+"/metadata", root)
	cfg.RemoteTargetsURL = url + "/targets"
	cfg.LocalMetadataDir = t.TempDir()
	cfg.LocalTargetsDir = t.TempDir()
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Refresh(); err != nil {
		t.Fatalf("refresh against the server process: %v", err)
	}
	tf, err := up.GetTargetInfo("models/m/1.0.0.onnx")
	if err != nil {
		t.Fatal(err)
	}
	_, data, err := up.DownloadTarget(tf, filepath.Join(cfg.LocalTargetsDir, "m"), "")
	if err != nil || string(data) != "real bytes" {
		t.Fatalf("download = %q, %v", data, err)
	}
	tf, err = up.GetTargetInfo("models/m/2.0.0.onnx")
	if err != nil {
		t.Fatal(err)
	}
	_, data, err = up.DownloadTarget(tf, filepath.Join(cfg.LocalTargetsDir, "m2"), "")
	if err != nil || string(data) != "api bytes" {
		t.Fatalf("download of the API-published target = %q, %v", data, err)
	}
}

// TestDemoRefusesForeignDir: the demo recreates its folder, but never one that holds
// something it did not make. (The scenario itself runs over real processes in
// e2e.TestDemo.)
func TestDemoRefusesForeignDir(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	keep := filepath.Join(dir, "precious.txt")
	os.WriteFile(keep, []byte("x"), 0o600)
	_, _, err := c.run("demo", "--dir", dir)
	if err == nil || !strings.Contains(err.Error(), "refusing to delete it") {
		t.Fatalf("demo on a foreign folder: %v; want a refusal", err)
	}
	if _, err := os.Stat(keep); err != nil {
		t.Fatalf("the demo deleted a file it did not make: %v", err)
	}
	if _, _, err := c.run("demo", "--dir", filepath.Join(t.TempDir(), "d"), "--devices", "2"); err == nil {
		t.Fatal("demo --devices 2 succeeded; want an error (the story needs 3)")
	}
}

// startServerProcess starts `edgeward server` (the built binary) on a free loopback port
// with extra flags, waits until /healthz answers 200, and returns its URL. The process
// is killed when the test ends; its log is shown if it never becomes healthy.
func startServerProcess(t *testing.T, bin string, env []string, extra ...string) string {
	t.Helper()
	port, err := testport.Take()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	srv := exec.Command(bin, append([]string{"server", "--listen", addr}, extra...)...)
	srv.Env = env
	var logs bytes.Buffer
	srv.Stderr = &logs
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	url := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return url
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy: %v\n%s", err, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestInitKeepsTheAuditKeyOutside: by default 'repo init' leaves no checkpoint key in the
// data directory (issue 13: never in clear beside the database), and the log is still
// signed and verifiable with the key where it went.
func TestInitKeepsTheAuditKeyOutside(t *testing.T) {
	c := newCLI(t)
	pass := writeTemp(t, "pass", "s3cret\n")
	out := c.must("repo", "init", c.repo, "--passphrase-file", pass)
	keyFile := filepath.Clean(c.repo) + ".audit.key"
	if !strings.Contains(out, keyFile) {
		t.Fatalf("repo init does not say where the audit key went (%s):\n%s", keyFile, out)
	}
	if m, _ := filepath.Glob(filepath.Join(c.repo, "keys", "*", "audit-*")); len(m) != 0 {
		t.Fatalf("audit key left inside the data directory: %v", m)
	}
	fi, err := os.Stat(keyFile)
	if err != nil {
		t.Fatalf("audit key not at %s: %v", keyFile, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("audit key mode %v; want no group or other access", fi.Mode().Perm())
	}
	dir := t.TempDir()
	export, pub, state := filepath.Join(dir, "audit.jsonl"), filepath.Join(dir, "audit.vkey"), filepath.Join(dir, "last-seen")
	os.WriteFile(pub, []byte(c.must("audit", "pubkey")), 0o644)
	c.must("audit", "export", "-o", export)
	if out := c.must("audit", "verify", export, "--key", pub, "--state", state); !strings.Contains(out, "ok: ") {
		t.Fatalf("audit verify with the key outside: %s", out)
	}
	// move-key has nothing to move, and says where the key already is.
	if _, stderr, err := c.run("audit", "move-key", "--to", filepath.Join(dir, "moved.key")); err == nil || !strings.Contains(err.Error()+stderr, "already outside the repository directory, at "+keyFile) {
		t.Fatalf("audit move-key after a default init = %v\n%s; want it to say the key is already at %s", err, stderr, keyFile)
	}
	// An explicit place inside the data directory is refused, and nothing is left behind.
	c2 := newCLI(t)
	if _, _, err := c2.run("repo", "init", c2.repo, "--passphrase-file", pass, "--audit-key", filepath.Join(c2.repo, "k")); err == nil {
		t.Fatal("repo init --audit-key inside the data directory succeeded")
	}
	if _, err := os.Stat(c2.repo); err == nil {
		if m, _ := filepath.Glob(filepath.Join(c2.repo, "keys", "*", "*")); len(m) != 0 {
			t.Fatalf("a refused init left keys behind: %v", m)
		}
	}
}

// A local token create needs a repository: a missing or empty directory gets a message
// that names the fix, and no stray fleet.db is left behind.
func TestTokenCreateNeedsARepository(t *testing.T) {
	c := newCLI(t)
	empty := t.TempDir()
	for _, dir := range []string{filepath.Join(t.TempDir(), "missing"), empty} {
		_, _, err := c.run("token", "create", "--repo", dir, "--name", "sam", "--role", "security-admin")
		if err == nil || !strings.Contains(err.Error(), "edgeward repo init "+dir) || !strings.Contains(err.Error(), "--server") {
			t.Errorf("token create --repo %s = %v; want an error naming 'edgeward repo init' and --server", dir, err)
		}
	}
	if left, _ := os.ReadDir(empty); len(left) != 0 {
		t.Errorf("token create left %v in an empty directory", left)
	}
}

// TestUsageNeverShowsSecrets: a mistyped flag prints the command's usage; the token
// and a database URL's password, defaults taken from the environment, are not in it
// (the URL is shown redacted). Before, every usage message printed
// $EDGEWARD_TOKEN whole (found from outside, 2 Dec). The values still apply.
func TestUsageNeverShowsSecrets(t *testing.T) {
	const token, password = "ewo_0123456789abcdef_SECRETSECRETSECRET", "hunter2hunter2"
	c := newCLI(t)
	c.env["EDGEWARD_TOKEN"] = token
	c.env["EDGEWARD_DB"] = "postgres://edgeward:" + password + "@db.example:5432/fleet?sslmode=verify-full"
	for _, args := range [][]string{
		{"rollout", "status", "--bogus"},
		{"devices", "list", "--bogus"},
		{"audit", "export", "--bogus"},
		{"audit", "prove", "--bogus"},
		{"publish", "--bogus"},
	} {
		_, stderr, err := c.run(args...)
		if err == nil {
			t.Errorf("edgeward %s: accepted", strings.Join(args, " "))
			continue
		}
		if strings.Contains(stderr, token) || strings.Contains(stderr, password) {
			t.Errorf("edgeward %s: the usage shows a secret:\n%s", strings.Join(args, " "), stderr)
		}
		if !strings.Contains(stderr, "-token") && !strings.Contains(stderr, "-db") {
			t.Errorf("edgeward %s: no usage printed:\n%s", strings.Join(args, " "), stderr)
		}
	}
	_, stderr, _ := c.run("publish", "--bogus")
	if !strings.Contains(stderr, "postgres://edgeward:xxxxx@db.example:5432/fleet") {
		t.Errorf("the database URL is not shown redacted:\n%s", stderr)
	}
	// A password as a parameter, or in a URL that does not parse, is not shown either
	// (found in review).
	for _, db := range []string{"postgres://edgeward@db/fleet?sslmode=require&password=" + password, "postgres://u:" + password + "%zz@db/x"} {
		c.env["EDGEWARD_DB"] = db
		if _, stderr, _ := c.run("publish", "--bogus"); strings.Contains(stderr, password) || !strings.Contains(stderr, "-db") {
			t.Errorf("usage with --db %s shows the password:\n%s", db, stderr)
		}
	}
	var op opClient
	fs := newFlagSet("t", &cliEnv{stderr: new(bytes.Buffer)})
	op.register(fs, &cliEnv{getenv: func(k string) string { return c.env[k] }})
	if err := fs.Parse(nil); err != nil || op.token != token {
		t.Errorf("token from the environment = %q, %v; want it applied", op.token, err)
	}
	if err := fs.Parse([]string{"--token", "other"}); err != nil || op.token != "other" {
		t.Errorf("--token other = %q, %v", op.token, err)
	}
}

// TestMistypedValuesSayWhatIsWanted: a duration the flag package cannot parse says what
// a duration looks like (it said only "parse error"), and --waves blames the part that
// is wrong: a third part is "approve" (a typo there was blamed on the soak).
func TestMistypedValuesSayWhatIsWanted(t *testing.T) {
	c := newCLI(t)
	_, _, err := c.run("token", "create", "--role", "auditor", "--name", "x", "--ttl", "30d")
	if err == nil || !strings.Contains(err.Error(), `--ttl "30d": want a duration such as 90s, 30m or 720h`) {
		t.Errorf("token create --ttl 30d = %v; want what a duration looks like", err)
	}
	for _, tc := range []struct{ waves, want string }{
		{"50:1h:aprove", `"aprove": want approve`},
		{"50:aprove", `soak "aprove": want a duration such as 30m or 2h`},
		{"50:10:approve", `soak "10": want a duration`},
		{"50:1h:approve:x", `want PERCENT[:SOAK][:approve]`},
	} {
		if _, err := parseWaves(tc.waves); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--waves %s = %v; want %q", tc.waves, err, tc.want)
		}
	}
	w, err := parseWaves("1:30m,10:1h:approve,50:approve,100")
	if err != nil || len(w) != 4 || w[1].Soak != "1h" || !w[1].Approval || !w[2].Approval || w[2].Soak != "" {
		t.Errorf("parseWaves = %+v, %v", w, err)
	}
}
