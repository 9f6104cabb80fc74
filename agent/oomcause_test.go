package agent

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestDeathCauseNamesTheOOMKiller: a runtime killed with SIGKILL that the agent did not
// send is put down to the kernel's OOM killer when the kernel's log records that it
// killed it, to another process when the log was read and does not, and, where the log
// cannot be read, by the kernel's count of OOM kills (a trial killed for memory was
// reported as "signal: killed", which sent no operator to memory). Any other death, and
// a kill by the agent itself, is said as before. Real processes, really killed.
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
		name      string
		st        *os.ProcessState
		hung      string
		ev        oomEvidence
		want, not string
	}{
		{"OOM kill in the kernel's log", killed, "", oomEvidence{3, 4, 1}, "by the kernel's OOM killer (the kernel's log: Killed process 42): the device ran out of memory", ""},
		// The count rose for another process's OOM kill; the log says it was not this one.
		{"SIGKILL from elsewhere, another OOM kill meanwhile", killed, "", oomEvidence{3, 4, 0}, "records no OOM kill of it: by another process", "OOM killer ("},
		{"no log: OOM kill counted", killed, "", oomEvidence{3, 4, -1}, "by the kernel's OOM killer (oom_kill 3 → 4 in /proc/vmstat): the device ran out of memory", ""},
		{"no log: SIGKILL from elsewhere", killed, "", oomEvidence{3, 3, -1}, "not sent by the agent", "OOM killer ("},
		{"nothing known", killed, "", oomEvidence{-1, -1, -1}, "not sent by the agent", "OOM killer ("},
		{"killed by the agent when hung", killed, ", killed after 3 health checks failed in a row", oomEvidence{3, 4, 1}, "health checks failed", "OOM"},
		{"another signal", termed, "", oomEvidence{3, 4, 1}, "signal: terminated", "OOM"},
	} {
		got := deathCause(42, tc.st, tc.hung, tc.ev)
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

// The kernel's log records, as /dev/kmsg gives them, of both kernels' wordings.
func TestOOMKillLogged(t *testing.T) {
	records := []string{
		"6,1200,1000,-;eth0: link up\n",
		// Linux 5.x and later, a memory cgroup's kill and the whole system's.
		"3,1201,2000000,-;Memory cgroup out of memory: Killed process 5665 (python3) total-vm:221368kB, anon-rss:32384kB, file-rss:6648kB, shmem-rss:0kB, UID:0 pgtables:132kB oom_score_adj:0\n",
		"3,1202,3000000,-;Out of memory: Killed process 7001 (edgeward-runtim) total-vm:1kB\n SUBSYSTEM=mem\n",
		// Linux 4.x.
		"3,1203,4000000,-;Out of memory: Kill process 8100 (edgeward-runtim) score 900 or sacrifice child\n",
		"6,1204,5000000,-;audit: pid=9000 comm=\"x\" Killed process 9000 (x) elsewhere\n",
		"garbage without a prefix",
	}
	for _, tc := range []struct {
		pid   int
		since uint64
		want  bool
	}{
		{5665, 0, true},
		{5665, 1999999, true},
		{5665, 2000001, false}, // an earlier process with the same pid
		{566, 0, false},
		{7001, 0, true},
		{8100, 0, true},
		{1201, 0, false}, // a sequence number is not a pid
		{4242, 0, false},
	} {
		if got := oomKillLogged(records, tc.pid, tc.since); got != tc.want {
			t.Errorf("oomKillLogged(pid %d since %d µs) = %v; want %v", tc.pid, tc.since, got, tc.want)
		}
	}
}

// A process really killed by the kernel's OOM killer, in a memory cgroup of 32 MiB, is
// said to be by its log; a process killed with SIGKILL by another meanwhile is not,
// although the kernel's count of OOM kills rose while it ran (the count alone put it
// down to the OOM killer). Needs a writable memory cgroup and the kernel's log (root).
func TestRealOOMKillIsTold(t *testing.T) {
	if _, _, err := readKernelLog(kernelLog); err != nil {
		t.Skipf("the kernel's log cannot be read here: %v", err)
	}
	cg := memoryCgroup(t, 32<<20)
	bystander := exec.Command("sleep", "60")
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	bystanderWatch := watchOOM()

	// A shell that joins the cgroup, then becomes a process allocating 256 MiB.
	hog := exec.Command("sh", "-c", `echo $$ > "$1" && exec python3 -c 'a = bytearray(256 << 20); import time; time.sleep(10)'`, "sh", cg)
	if _, err := exec.LookPath("python3"); err != nil {
		hog = exec.Command("sh", "-c", `echo $$ > "$1" && exec sh -c 'x=a; while :; do x=$x$x; done'`, "sh", cg)
	}
	hogWatch := watchOOM()
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	hog.Wait()
	if ws, ok := hog.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("the process allocating 256 MiB in a 32 MiB memory cgroup ended %v, not killed by the kernel", hog.ProcessState)
	}
	bystander.Process.Kill()
	bystander.Wait()

	ev := hogWatch.after(hog.Process.Pid)
	got := deathCause(hog.Process.Pid, hog.ProcessState, "", ev)
	t.Logf("hog: %s", got)
	if !strings.Contains(got, "by the kernel's OOM killer (the kernel's log: Killed process "+strconv.Itoa(hog.Process.Pid)+")") {
		t.Errorf("a process killed by the OOM killer: %q (evidence %+v)", got, ev)
	}
	ev = bystanderWatch.after(bystander.Process.Pid)
	if ev.after <= ev.before {
		t.Fatalf("the kernel counted no OOM kill while the bystander ran (%+v): the test proves nothing", ev)
	}
	got = deathCause(bystander.Process.Pid, bystander.ProcessState, "", ev)
	t.Logf("bystander: %s", got)
	if !strings.Contains(got, "by another process") || strings.Contains(got, "OOM killer (") {
		t.Errorf("a process killed by another while the OOM killer killed a third: %q (evidence %+v)", got, ev)
	}
}

// memoryCgroup makes a memory cgroup limited to limit bytes below this process's own
// (cgroup v2's memory.max or v1's memory.limit_in_bytes) and returns the file that a
// process writes its pid to, to join it; it skips the test where none can be made.
func memoryCgroup(t *testing.T, limit int64) string {
	t.Helper()
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		t.Skipf("no cgroups: %v", err)
	}
	defer f.Close()
	type cand struct{ dir, limitFile, swapFile, swapLimit string }
	var cands []cand
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		switch {
		case parts[0] == "0" && parts[1] == "":
			for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
				cands = append(cands, cand{filepath.Join(root, parts[2]), "memory.max", "memory.swap.max", "0"})
			}
		case strings.Contains(","+parts[1]+",", ",memory,"):
			cands = append(cands, cand{filepath.Join("/sys/fs/cgroup/memory", parts[2]), "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", strconv.FormatInt(limit, 10)})
		}
	}
	for _, c := range cands {
		dir := filepath.Join(c.dir, "edgeward-oom-test-"+strconv.Itoa(os.Getpid()))
		if err := os.Mkdir(dir, 0o755); err != nil {
			continue
		}
		t.Cleanup(func() { os.Remove(dir) })
		if err := os.WriteFile(filepath.Join(dir, c.limitFile), []byte(strconv.FormatInt(limit, 10)), 0o644); err != nil {
			continue
		}
		// No swap either, where it is accounted: the process is to be killed, not
		// swapped out.
		os.WriteFile(filepath.Join(dir, c.swapFile), []byte(c.swapLimit), 0o644)
		return filepath.Join(dir, "cgroup.procs")
	}
	t.Skip("no memory cgroup can be made here (needs root and a memory controller)")
	return ""
}
