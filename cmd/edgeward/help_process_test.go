package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// TestEveryCommandExplainsItself runs the built binary: --version and version name the
// commit it was built from and the Go version; -h and --help on every command print its
// flags and exit 0.
func TestEveryCommandExplainsItself(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildCLI(t)
	// The commit is the one the binary was built from when the build stamps VCS
	// information (GOFLAGS here may say -buildvcs=false: then "unknown").
	want := "commit unknown"
	if bi, err := exec.Command("go", "version", "-m", bin).Output(); err == nil {
		for _, l := range strings.Split(string(bi), "\n") {
			if f := strings.Fields(l); len(f) == 2 && f[0] == "build" && strings.HasPrefix(f[1], "vcs.revision=") {
				want = "commit " + strings.TrimPrefix(f[1], "vcs.revision=")
			}
		}
	}
	for _, arg := range []string{"version", "--version"} {
		out, err := runAs(bin, nil, arg)
		if err != nil || !strings.HasPrefix(out, "edgeward ") || !strings.Contains(out, want) || !strings.Contains(out, runtime.Version()) {
			t.Errorf("edgeward %s = %v\n%s\nwant %q and %s", arg, err, out, want, runtime.Version())
		}
	}
	// A group's word with -h lists the group's commands (it was an "unknown command").
	for _, group := range []string{"keys", "root", "audit", "rollout", "devices"} {
		out, err := runAs(bin, nil, group, "--help")
		if err != nil || !strings.Contains(out, "usage: edgeward "+group+" <command>") || strings.Contains(out, "unknown command") {
			t.Errorf("edgeward %s --help = %v; want its commands\n%s", group, err, out)
		}
	}
	for _, c := range commands() {
		for _, h := range []string{"-h", "--help"} {
			args := append(strings.Fields(c.name), h)
			out, err := runAs(bin, []string{"EDGEWARD_REPO=" + t.TempDir()}, args...)
			if err != nil {
				t.Errorf("edgeward %s = %v; want exit 0\n%s", strings.Join(args, " "), err, out)
				continue
			}
			if !strings.Contains(out, "Usage of "+c.name) || strings.Contains(out, "flag: help requested") {
				t.Errorf("edgeward %s printed no flags:\n%s", strings.Join(args, " "), out)
			}
			if strings.Contains(out, "(default 0.1) (default") || strings.Contains(out, "(default -1)") {
				t.Errorf("edgeward %s shows a default twice or a sentinel:\n%s", strings.Join(args, " "), out)
			}
		}
	}
}

// TestCompletion sources `edgeward completion bash` in a real bash and completes command
// words and a command's flags (asked of the built binary on PATH).
func TestCompletion(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("bash: %v (EDGEWARD_REQUIRE_DEPS=1)", err)
		}
		t.Skip("no bash")
	}
	bin := buildCLI(t)
	script, err := runAs(bin, nil, "completion", "bash")
	if err != nil {
		t.Fatalf("completion bash: %v\n%s", err, script)
	}
	complete := func(words ...string) string {
		t.Helper()
		var quoted []string
		for _, w := range words {
			quoted = append(quoted, "'"+w+"'")
		}
		prog := script + "\nCOMP_WORDS=(edgeward " + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" + strconv.Itoa(len(words)) +
			"\n_edgeward\necho \"${COMPREPLY[*]}\"\n"
		cmd := exec.Command(bash, "-c", prog)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(bin)+string(os.PathListSeparator)+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("completing %q: %v\n%s", words, err, out)
		}
		return strings.TrimSpace(string(out))
	}
	for _, c := range []struct {
		words []string
		want  string
	}{
		{[]string{"ro"}, "root role rollout"},
		{[]string{"rollout", "s"}, "status"},
		{[]string{"root", "sign", "--pro"}, "--proposal"},
		{[]string{"keys", "gen", "--r"}, "--role"},
		{[]string{"publish", "--k"}, "--kek --key --kind"},
	} {
		if got := complete(c.words...); got != c.want {
			t.Errorf("edgeward %s<TAB> = %q; want %q", strings.Join(c.words, " "), got, c.want)
		}
	}
	if out, err := runAs(bin, nil, "completion", "fish"); err == nil || !strings.Contains(out, "want bash or zsh") {
		t.Errorf("completion fish = %v\n%s", err, out)
	}
	if out, err := runAs(bin, nil, "completion", "zsh"); err != nil || !strings.Contains(out, "bashcompinit") {
		t.Errorf("completion zsh = %v\n%s", err, out)
	}
}
