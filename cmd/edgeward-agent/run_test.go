package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/updater/tuftest"
)

func TestRunOnce(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, d1 := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	state := t.TempDir()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	agent := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, args, &out, &out)
		return code, out.String()
	}
	if code, out := agent("enroll", "--state-dir", state, "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 || !strings.Contains(out, "enrolled "+state+": TUF root v1 pinned") {
		t.Fatalf("enroll = %d; want 0 and a line saying what was pinned:\n%s", code, out)
	}
	judge := `test "$EDGEWARD_VERSION" = 1.0.0 && cmp -s "$EDGEWARD_PAYLOAD" ` + filepath.Join(state, "want")
	os.WriteFile(filepath.Join(state, "want"), d1, 0o600)
	if code, out := agent("run", "--state-dir", state, "--once", "--want", "model="+p1, "--judge-cmd", judge); code != 0 {
		t.Fatalf("run 1.0.0: %s", out)
	}
	if code, out := agent("run", "--state-dir", state, "--once", "--want", "model="+p2, "--judge-cmd", judge); code != 0 {
		t.Fatalf("run 2.0.0: %s", out)
	}
	code, out := agent("status", "--state-dir", state)
	if code != 0 || !strings.Contains(out, "model: rolled_back") || !strings.Contains(out, "active slot a: 1.0.0") || !strings.Contains(out, "floor: 1.0.0") {
		t.Errorf("status after a failed 2.0.0 trial:\n%s", out)
	}
	if !strings.Contains(out, "last check-in: 20") || !strings.Contains(out, "reports waiting: 2") || !strings.Contains(out, "(from the state directory)") {
		t.Errorf("status does not show the last check-in and the two waiting reports, read from the state directory:\n%s", out)
	}

	// While an agent runs, status asks it over the state directory's socket (it never
	// opens the state or the TPM the agent holds), in text and in JSON.
	rctx, stop := context.WithCancel(ctx)
	done := make(chan int)
	go func() {
		var out bytes.Buffer
		done <- run(rctx, []string{"run", "--state-dir", state, "--interval", "1h", "--want", "model=" + p1, "--judge-cmd", judge}, &out, &out)
	}()
	var st struct {
		Source         string
		Slots          []struct{ Kind, Phase, Version string }
		ReportsWaiting int `json:"reports_waiting"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, out = agent("status", "--state-dir", state, "--json")
		if code == 0 {
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				t.Fatalf("status --json is not JSON: %v\n%s", err, out)
			}
			if st.Source == "running agent" {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("status never answered from the running agent: %d\n%s", code, out)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(st.Slots) == 0 || st.Slots[0].Kind != "model" || st.Slots[0].Version != "1.0.0" {
		t.Errorf("status --json from the running agent = %+v; want the model slot on 1.0.0", st)
	}
	if code, out = agent("status", "--state-dir", state); code != 0 || !strings.Contains(out, "active slot a: 1.0.0") || !strings.Contains(out, "(from the running agent)") {
		t.Errorf("status while the agent runs = %d:\n%s", code, out)
	}
	stop()
	if code := <-done; code != 0 {
		t.Errorf("agent run exited %d after its context ended", code)
	}
	if _, err := os.Stat(filepath.Join(state, "status.sock")); !os.IsNotExist(err) {
		t.Errorf("the stopped agent left its status socket: %v", err)
	}
}

// TestSubcommandHelp checks that every command's --help prints its flags with their help
// and exits 0, and that a bad flag still fails.
func TestSubcommandHelp(t *testing.T) {
	ctx := context.Background()
	for cmd, flag := range map[string]string{
		"tuf-client": "-metadata-dir", "enroll": "-state-dir", "install": "-target", "trial": "-timeout",
		"confirm": "-pass", "recover": "-state-dir", "status": "-state-dir", "run": "-judge-cmd", "device": "-server-ca",
	} {
		for _, h := range []string{"--help", "-h"} {
			var stdout, stderr bytes.Buffer
			code := run(ctx, []string{cmd, h}, &stdout, &stderr)
			if code != 0 || !strings.Contains(stdout.String(), flag) || !strings.Contains(stdout.String(), "usage: edgeward-agent "+cmd) {
				t.Errorf("edgeward-agent %s %s = exit %d, stdout:\n%s\nstderr:\n%s\nwant exit 0 and the flags (%s) on stdout", cmd, h, code, stdout.String(), stderr.String(), flag)
			}
		}
		var out bytes.Buffer
		if code := run(ctx, []string{cmd, "--no-such-flag"}, &out, &out); code == 0 || !strings.Contains(out.String(), "no-such-flag") {
			t.Errorf("edgeward-agent %s --no-such-flag = exit %d, output:\n%s\nwant a failure naming the flag", cmd, code, out.String())
		}
	}
}

// TestCompletion sources `edgeward-agent completion bash` in a real bash and completes a
// command word.
func TestCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("bash: %v (EDGEWARD_REQUIRE_DEPS=1)", err)
		}
		t.Skip("no bash")
	}
	var script, errb bytes.Buffer
	if code := run(context.Background(), []string{"completion", "bash"}, &script, &errb); code != 0 {
		t.Fatalf("completion bash = %d: %s", code, errb.String())
	}
	out, err := exec.Command(bash, "-c", script.String()+"\nCOMP_WORDS=(edgeward-agent st)\nCOMP_CWORD=1\n_edgeward_agent\necho \"${COMPREPLY[*]}\"\n").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "status" {
		t.Errorf("edgeward-agent st<TAB> = %q, %v; want status", out, err)
	}
	if code := run(context.Background(), []string{"completion", "fish"}, &script, &errb); code != 2 {
		t.Errorf("completion fish = %d; want 2", code)
	}
}
