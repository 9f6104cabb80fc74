package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/lab"
)

// walkthroughFence opens a documentation block that TestWalkthrough runs.
const walkthroughFence = "```sh walkthrough"

// walkthroughBlock is one marked shell block of the docs.
type walkthroughBlock struct {
	File string // relative to the module root
	Line int    // of the opening fence
	Code string
}

// walkthroughBlocks extracts the blocks marked walkthrough from README.md, then
// docs/*.md in name order, each file's blocks in order.
func walkthroughBlocks(root string) ([]walkthroughBlock, error) {
	files, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		return nil, err
	}
	sort.Strings(files)
	files = append([]string{filepath.Join(root, "README.md")}, files...)
	var out []walkthroughBlock
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		rel, _ := filepath.Rel(root, f)
		var cur *walkthroughBlock
		sc := bufio.NewScanner(strings.NewReader(string(data)))
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			switch {
			case cur == nil && strings.TrimSpace(line) == walkthroughFence:
				cur = &walkthroughBlock{File: rel, Line: n}
			case cur != nil && strings.HasPrefix(strings.TrimSpace(line), "```"):
				out = append(out, *cur)
				cur = nil
			case cur != nil:
				cur.Code += line + "\n"
			}
		}
		if cur != nil {
			return nil, fmt.Errorf("%s:%d: walkthrough block is not closed", rel, cur.Line)
		}
	}
	return out, nil
}

// TestWalkthrough runs the documented journey as written: every block marked
// "sh walkthrough" in README.md and docs/*.md (docs/WALKTHROUGH.md: a root of three
// holders' keys, publishing, the TLS server, tokens, one swtpm device enrolled by hand, a
// rollout, inference, the audit routine, a root rotation), in order, as one bash script
// with `set -euo pipefail` in an empty directory, with the binaries of this tree first
// on PATH. A doc that drifts from the code fails here.
func TestWalkthrough(t *testing.T) {
	need(t)
	for _, tool := range []string{"bash", "curl", "jq"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
				t.Fatalf("the walkthrough needs %s (scripts/deps/apt-packages.txt)", tool)
			}
			t.Skipf("the walkthrough needs %s", tool)
		}
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := walkthroughBlocks(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) < 10 {
		t.Fatalf("%d walkthrough blocks in README.md and docs/*.md; want the whole journey of docs/WALKTHROUGH.md", len(blocks))
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\n")
	for _, b := range blocks {
		// Each block announces itself, so a failure names the doc and line it broke.
		fmt.Fprintf(&script, "printf '\\n### %s:%d\\n'\n%s", b.File, b.Line, b.Code)
	}

	// The documented ports are defaults the script lets the environment override: the
	// test takes free ones, since other tests (and people) share this machine.
	lb, err := lab.New(t.TempDir(), bins)
	if err != nil {
		t.Fatal(err)
	}
	defer lb.Close()
	addr := func(pair bool) string {
		p, err := lb.Port(pair)
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("127.0.0.1:%d", p)
	}
	tpm, err := lb.Port(true)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, kv := range os.Environ() {
		// Nothing of the caller's own Edgeward setup may leak into the journey.
		if k, _, _ := strings.Cut(kv, "="); k == "PATH" || (strings.HasPrefix(k, "EDGEWARD_") && k != "EDGEWARD_REQUIRE_DEPS" && k != "EDGEWARD_DEPS_DIR") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env, "PATH="+filepath.Dir(bins.Edgeward)+string(os.PathListSeparator)+os.Getenv("PATH"),
		"HTTP_ADDR="+addr(false), "HTTPS_ADDR="+addr(false), "INFER_ADDR="+addr(false), fmt.Sprintf("TPM_PORT=%d", tpm))

	work := t.TempDir()
	outPath := filepath.Join(t.TempDir(), "walkthrough.out")
	out, err := os.Create(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script.String())
	cmd.Dir, cmd.Env, cmd.Stdout, cmd.Stderr = work, env, out, out
	// The script starts swtpm, the server and the agent in the background: they share
	// its process group, which is killed whatever happens.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	start := time.Now()
	runErr := cmd.Start()
	if runErr == nil {
		defer stopGroup(cmd.Process.Pid)
		runErr = cmd.Wait()
	}
	output, _ := os.ReadFile(outPath)
	if runErr != nil {
		for _, log := range []string{"server.log", "device1.log"} {
			t.Logf("--- %s (tail)\n%s", log, lab.Tail(filepath.Join(work, log), 30))
		}
		t.Fatalf("the walkthrough failed (%v) after %s; the last block run is the last ### line:\n%s", runErr, time.Since(start).Round(time.Second), tail(string(output), 80))
	}
	t.Logf("the walkthrough (%d blocks) ran in %s", len(blocks), time.Since(start).Round(time.Second))
	// What the journey must have shown, beyond every command exiting 0.
	for _, want := range []string{
		"root v1 published",
		"— completed (1 of 1 selected devices committed)",
		`"model_version":"1.0.0"`,
		"(from the running agent)",
		"ok: ",
		"root v2 published",
		"TUF: root v2",
	} {
		if !strings.Contains(string(output), want) {
			t.Errorf("the walkthrough's output lacks %q:\n%s", want, tail(string(output), 80))
		}
	}
}

// stopGroup ends what a script left running in its process group: SIGTERM, then SIGKILL.
func stopGroup(pgid int) {
	if syscall.Kill(-pgid, syscall.SIGTERM) != nil {
		return
	}
	for range 50 {
		time.Sleep(100 * time.Millisecond)
		if syscall.Kill(-pgid, 0) != nil {
			return
		}
	}
	syscall.Kill(-pgid, syscall.SIGKILL)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
