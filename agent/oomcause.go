package agent

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Telling an OOM kill of a runtime from any other SIGKILL. The kernel's log says which
// process its OOM killer killed ("Out of memory: Killed process 5665 (…)", "Memory
// cgroup out of memory: Killed process 5665 (…)"): exact where the agent may read it
// (/dev/kmsg; root, or CAP_SYSLOG where kernel.dmesg_restrict is set). Where it may not,
// the kernel's count of OOM kills (/proc/vmstat) is the evidence: it counts every
// process's, so a SIGKILL from elsewhere while the OOM killer took another process is
// put down to the OOM killer too.

// procVMStat holds the kernel's count of OOM kills (oom_kill, Linux 4.13 and later; both
// the whole system's and a memory cgroup's kills count).
const procVMStat = "/proc/vmstat"

// kernelLog is the kernel's log, one record per read.
const kernelLog = "/dev/kmsg"

// oomWatch is what a runtime process's start leaves to judge its death by: the count of
// OOM kills then, and the kernel's clock (CLOCK_MONOTONIC, which stamps the kernel's
// log records), so that a record of an earlier process with the same pid is not its.
type oomWatch struct {
	kills     int64  // readOOMKills at the start; -1: unknown
	startedUS uint64 // microseconds since boot at the start; 0: unknown
}

// oomEvidence is what oomWatch.after found at a death.
type oomEvidence struct {
	before, after int64 // the count of OOM kills at the start and at the death; -1: unknown
	// logged is whether the kernel's log records an OOM kill of the process since its
	// start: 1 yes, 0 no (the log was read whole since then), -1 unknown.
	logged int
}

func watchOOM() oomWatch {
	w := oomWatch{kills: readOOMKills(procVMStat)}
	var ts unix.Timespec
	if unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) == nil {
		// The log's clock and CLOCK_MONOTONIC may differ a little; a pid used again
		// within the second would be needed for the slack to matter.
		w.startedUS = uint64(max(ts.Nano()/1000-logClockSlackUS, 1))
	}
	return w
}

// logClockSlackUS is how far before a start the kernel's log records still count.
const logClockSlackUS = 1_000_000

// after gathers the evidence on the death of process pid, started under w.
func (w oomWatch) after(pid int) oomEvidence {
	ev := oomEvidence{before: w.kills, after: readOOMKills(procVMStat), logged: -1}
	if w.startedUS == 0 {
		return ev
	}
	records, complete, err := readKernelLog(kernelLog)
	if err != nil {
		return ev
	}
	switch {
	case oomKillLogged(records, pid, w.startedUS):
		ev.logged = 1
	case complete:
		ev.logged = 0
	}
	return ev
}

// readKernelLog reads every record the kernel's log at path still holds, oldest first;
// complete is false when records were overwritten while it read (EPIPE) so some are
// missing.
func readKernelLog(path string) (records []string, complete bool, err error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false, &os.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	complete = true
	buf := make([]byte, 8192) // a record is at most 1 KiB of text and its prefix
	for range 1 << 20 {       // bounded: the ring holds a few thousand records
		n, err := unix.Read(fd, buf)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return records, complete, nil
		case errors.Is(err, unix.EPIPE):
			complete = false // overwritten while read: go on from the oldest left
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return nil, false, &os.PathError{Op: "read", Path: path, Err: err}
		case n == 0:
			return records, complete, nil
		}
		records = append(records, string(buf[:n]))
	}
	return records, false, nil
}

// oomKilledRE matches the OOM killer's record of a kill: "Killed process PID (comm)"
// since Linux 5.x, "Kill process PID (comm) score …" before it.
var oomKilledRE = regexp.MustCompile(`\bKill(?:ed)? process (\d+) \(`)

// oomKillLogged says whether records (the kernel's log, "prio,seq,µs,flags;message")
// hold an OOM kill of pid stamped at or after sinceUS.
func oomKillLogged(records []string, pid int, sinceUS uint64) bool {
	want := strconv.Itoa(pid)
	for _, rec := range records {
		head, msg, ok := strings.Cut(rec, ";")
		if !ok {
			continue
		}
		f := strings.Split(head, ",")
		if len(f) < 3 {
			continue
		}
		us, err := strconv.ParseUint(f[2], 10, 64)
		if err != nil || us < sinceUS {
			continue
		}
		line, _, _ := strings.Cut(msg, "\n") // continuation lines (" KEY=value") follow
		if m := oomKilledRE.FindStringSubmatch(line); m != nil && m[1] == want {
			return true
		}
	}
	return false
}

// readOOMKills is the oom_kill count in the vmstat file at path, -1 when unknown.
func readOOMKills(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// deathCause says how a runtime process died, for the log, the device's health and a
// trial's report. A SIGKILL the agent did not send (hung empty) is put down to the OOM
// killer when the kernel's log records that it killed the process, to someone else when
// the log was read and does not; where the log cannot be read, to the OOM killer when
// the kernel's count of OOM kills rose while the process ran. A trial killed for memory
// was reported as "signal: killed", which sent no one to look at memory.
func deathCause(pid int, st *os.ProcessState, hung string, ev oomEvidence) string {
	cause := fmt.Sprintf("runtime pid %d: %v%s", pid, st, hung)
	if hung != "" || st == nil {
		return cause
	}
	ws, ok := st.Sys().(syscall.WaitStatus)
	if !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		return cause
	}
	const memory = ": the device ran out of memory; a model needs about 3× its size while it loads (docs/DEVICES.md)"
	switch {
	case ev.logged == 1:
		return cause + fmt.Sprintf(" by the kernel's OOM killer (the kernel's log: Killed process %d)", pid) + memory
	case ev.logged == 0:
		return cause + " (SIGKILL, not sent by the agent, and the kernel's log records no OOM kill of it: by another process)"
	case ev.before >= 0 && ev.after > ev.before:
		return cause + fmt.Sprintf(" by the kernel's OOM killer (oom_kill %d → %d in %s)", ev.before, ev.after, procVMStat) + memory
	}
	return cause + " (SIGKILL, not sent by the agent: the kernel's OOM killer counted none, so by another process)"
}
