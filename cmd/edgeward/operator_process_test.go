package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestServerProcessOperators runs `edgeward server` as a process on a fresh repository
// and drives it as operators do: tokens, a rollout created, paused and shown through the
// CLI, the dashboard's login page and the fleet metrics.
func TestServerProcessOperators(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := filepath.Join(t.TempDir(), "edgeward")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	repo := filepath.Join(t.TempDir(), "repo")
	env := append(os.Environ(), "EDGEWARD_PASSPHRASE=pw", "EDGEWARD_REPO="+repo)
	runBin := func(extra []string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(append([]string{}, env...), extra...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		if err != nil {
			return out.String(), fmt.Errorf("%w: %s", err, errb.String())
		}
		return out.String(), nil
	}
	must := func(extra []string, args ...string) string {
		t.Helper()
		out, err := runBin(extra, args...)
		if err != nil {
			t.Fatalf("edgeward %v: %v", args, err)
		}
		return out
	}
	must(nil, "repo", "init", repo)
	admin := strings.TrimSpace(must(nil, "token", "create", "--name", "sam", "--role", "security-admin"))

	url := startServerProcess(t, bin, env)
	if _, err := os.Stat(filepath.Join(repo, "policy", "fleet.yaml")); err != nil {
		t.Fatalf("the server did not create the starter policy: %v", err)
	}

	asAdmin := []string{"EDGEWARD_SERVER=" + url, "EDGEWARD_TOKEN=" + admin}
	rmTok := strings.TrimSpace(must(asAdmin, "token", "create", "--name", "rita", "--role", "release-manager"))
	asRM := []string{"EDGEWARD_SERVER=" + url, "EDGEWARD_TOKEN=" + rmTok}
	out := must(asRM, "rollout", "create", "--id", "iris-2", "--name", "iris", "--version", "2.0.0", "--waves", "10:5m,100")
	if !strings.Contains(out, "created rollout iris-2") || strings.Contains(out, "not loaded") {
		t.Fatalf("rollout create:\n%s", out)
	}
	must(asRM, "rollout", "pause", "iris-2", "--reason", "waiting for the probe set")
	out = must(asAdmin, "rollout", "status", "iris-2")
	if !strings.Contains(out, "paused") || !strings.Contains(out, "waiting for the probe set") {
		t.Fatalf("rollout status:\n%s", out)
	}
	if out := must(asAdmin, "devices", "list"); !strings.Contains(out, "0 devices") {
		t.Fatalf("devices list:\n%s", out)
	}

	get := func(path string) (int, string) {
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/ui/login"); code != 200 || !strings.Contains(body, "Operator API token") {
		t.Fatalf("dashboard login page = %d", code)
	}
	code, body := get("/metrics")
	for _, want := range []string{"edgeward_fleet_devices 0", `edgeward_rollout_status{rollout="iris-2",status="paused"} 1`, "edgeward_policy_valid 1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
