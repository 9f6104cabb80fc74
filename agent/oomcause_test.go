package agent

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDeathCauseNamesTheOOMKiller: a runtime killed with SIGKILL that the agent did not
// send is put down to the kernel's OOM killer when its count of OOM kills rose while
// the runtime ran (a trial killed for memory was reported as "signal: killed", which
// sent no operator to memory), to another process when it did not; any other death,
// and a kill by the agent itself, is said as before. Real processes, really killed.
func TestDeathCauseNamesTheOOMKiller(t *testing.T) {
	exited := func(sig syscall.Signal) *os.ProcessState {
		t.Helper()
		cmd := exec.Command("sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmd.Process.Signal(sig)
		cmd.Wait()
		return cmd.ProcessState
	}
	killed, termed := exited(syscall.SIGKILL), exited(syscall.SIGTERM)
	for _, tc := range []struct {
		name          string
		st            *os.ProcessState
		hung          string
		before, after int64
		want, not     string
	}{
		{"OOM kill", killed, "", 3, 4, "by the kernel's OOM killer (oom_kill 3 → 4 in /proc/vmstat): the device ran out of memory", ""},
		{"SIGKILL from elsewhere", killed, "", 3, 3, "not sent by the agent", "OOM killer ("},
		{"count unknown", killed, "", -1, -1, "not sent by the agent", "OOM killer ("},
		{"killed by the agent when hung", killed, ", killed after 3 health checks failed in a row", 3, 4, "health checks failed", "OOM"},
		{"another signal", termed, "", 3, 4, "signal: terminated", "OOM"},
	} {
		got := deathCause(42, tc.st, tc.hung, tc.before, tc.after)
		if !strings.Contains(got, tc.want) || (tc.not != "" && strings.Contains(got, tc.not)) {
			t.Errorf("%s: deathCause = %q; want it to contain %q and not %q", tc.name, got, tc.want, tc.not)
		}
	}

	dir := t.TempDir()
	for _, tc := range []struct {
		content string
		want    int64
	}{
		{"pgfault 10\noom_kill 7\nnr_free_pages 1\n", 7},
		{"pgfault 10\n", -1},
		{"oom_kill x\n", -1},
	} {
		p := filepath.Join(dir, "vmstat")
		os.WriteFile(p, []byte(tc.content), 0o644)
		if got := readOOMKills(p); got != tc.want {
			t.Errorf("readOOMKills(%q) = %d; want %d", tc.content, got, tc.want)
		}
	}
	if got := readOOMKills(filepath.Join(dir, "none")); got != -1 {
		t.Errorf("readOOMKills(missing file) = %d; want -1", got)
	}
	if got := readOOMKills(procVMStat); got < 0 {
		t.Errorf("readOOMKills(%s) = %d on this machine; want the kernel's count", procVMStat, got)
	}
}
