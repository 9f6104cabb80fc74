package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/rollback"
)

// Issue 14, "the device keeps serving whatever happens", over real processes: a dead
// runtime (item 2), a runtime that dies mid-trial (item 3), an agent restarted while
// the server is down (item 4), a disk that fills and frees (item 5), and the crash
// matrix that kills the agent and the runtime and resets the TPM.

// runtimePIDs lists the edgeward-runtime processes of a device (their control sockets
// live in its state directory, which their command line names).
func runtimePIDs(t *testing.T, d *lab.Device) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "edgeward-runtime") && strings.Contains(string(b), d.StateDir+"/") {
			pids = append(pids, pid)
		}
	}
	return pids
}

// killRuntimes SIGKILLs every runtime process of d and returns how many there were.
func killRuntimes(t *testing.T, d *lab.Device) int {
	t.Helper()
	pids := runtimePIDs(t, d)
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	return len(pids)
}

// inferOnce sends one inference request on a new connection with a 2 s timeout: a
// request that hangs is an error.
func inferOnce(ctx context.Context, d *lab.Device) (code int, body string, err error) {
	b, err := lab.InferBody()
	if err != nil {
		return 0, "", err
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v2/models/%s/infer", d.Port, lab.Model), bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, string(out), nil
}

// waitLastError waits until the server shows kind as the device's last error.
func (f *fleetLab) waitLastError(d *lab.Device, kind wire.UpdateErrorKind) *wire.UpdateError {
	f.t.Helper()
	var got *wire.UpdateError
	err := lab.WaitFor(f.ctx, wait, fmt.Sprintf("the server to show %s's last error %s", d.Name, kind), func(ctx context.Context) (bool, string, error) {
		fds, err := f.srv.Devices(ctx, []*lab.Device{d})
		if err != nil {
			return false, "", err
		}
		got = fds[d.Name].LastError
		return got != nil && got.Kind == kind, fmt.Sprintf("%+v", got), nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return got
}

// agentStarts counts the starts of a device's agent in its log (the lab writes a
// header line at each).
func agentStarts(d *lab.Device) int {
	b, _ := os.ReadFile(d.Agent.LogPath)
	return strings.Count(string(b), "=== ")
}

// TestRuntimeDies kills the serving edgeward-runtime of a running device, twice: once
// while it serves (item 2) and once in the middle of a model trial (item 3). Every
// request in between is answered (503 with a JSON error, or 200), none hangs; the agent
// restarts the runtime and serves again without being restarted itself, and the
// server sees last_error runtime_down. The trial the runtime died in is an
// infrastructure failure, not probe_failed: it is retried once the runtime is back and
// commits, and the version is never marked Failed.
func TestRuntimeDies(t *testing.T) {
	f := newFleet(t, 1)
	d := f.devs[0]
	f.startAgents()
	f.commit("1.0.0")

	// Item 2: a runtime that dies while serving.
	if n := killRuntimes(t, d); n != 1 {
		t.Fatalf("%d runtime processes; want the serving one", n)
	}
	killed := time.Now()
	refused := 0
	for {
		code, body, err := inferOnce(f.ctx, d)
		if err != nil {
			t.Fatalf("request %v after the runtime was killed: %v; want an answer, not a hang", time.Since(killed).Round(time.Millisecond), err)
		}
		if code == http.StatusOK {
			break
		}
		if code != http.StatusServiceUnavailable || !strings.Contains(body, `"error"`) {
			t.Fatalf("request while the runtime is down = HTTP %d %s; want 503 with a JSON error", code, body)
		}
		refused++
		if time.Since(killed) > wait {
			t.Fatalf("still refused %v after the runtime was killed", time.Since(killed))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("runtime killed while serving: %d requests refused with 503, serving again after %v", refused, time.Since(killed).Round(time.Millisecond))
	if _, err := d.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
		t.Fatal(err)
	}
	e := f.waitLastError(d, wire.ErrorRuntimeDown)
	t.Logf("server's last error for the device: %s: %s", e.Kind, e.Message)

	// Item 3: a runtime that dies during a trial. A probe set with many runs makes the
	// trial last long enough to kill the runtime in it.
	if _, err := f.repo.PublishModelRuns(f.ctx, "1.1.0", gates, 300000); err != nil {
		t.Fatal(err)
	}
	mark := fileSize(d.Agent.LogPath)
	f.rollout("vib-1.1.0", "1.1.0", nil)
	err := lab.WaitFor(f.ctx, wait, d.Name+" to start the trial of 1.1.0", func(context.Context) (bool, string, error) {
		return strings.Contains(tailFrom(d.Agent.LogPath, mark), `msg="model loaded" model=vibration-anomaly version=1.1.0 `), "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n := killRuntimes(t, d); n == 0 {
		t.Fatal("no runtime process to kill during the trial")
	}
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitServing(f.ctx, wait, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	var infra, committed int
	for _, r := range f.reports("vib-1.1.0")[d.ID] {
		switch r.Outcome {
		case wire.OutcomeInfrastructure:
			infra++
			t.Logf("retried: %s", r.Cause)
		case wire.OutcomeCommitted:
			committed++
		default:
			t.Errorf("report %s: %s; want only infrastructure failures and one commit", r.Outcome, r.Cause)
		}
	}
	if infra == 0 || committed != 1 {
		t.Errorf("reports of vib-1.1.0: %d infrastructure, %d committed; want the trial the runtime died in as infrastructure, then one commit", infra, committed)
	}
	if st, err := f.srv.RolloutState(f.ctx, "vib-1.1.0"); err != nil || st.Status == policy.StatusPaused {
		t.Errorf("rollout state = %+v, %v; a runtime death must not pause it", st, err)
	}
	if n := agentStarts(d); n != 1 {
		t.Errorf("the agent started %d times; want once (the runtime is restarted, not the agent)", n)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now()); err != nil {
		t.Fatal(err)
	}
}

// TestServeFirstServerDown is item 4: an agent killed in the middle of a download, then
// restarted while the server is down, serves its committed model within 2 s of its
// start (the requirement) and keeps serving while it cannot reach the server;
// once the server is back it resumes the download and commits. (No systemd here: the
// restart is the one the unit's Restart=always would do.)
func TestServeFirstServerDown(t *testing.T) {
	f := newFleet(t, 1)
	d := f.devs[0]
	d.AgentBin = crashAgent
	d.AgentEnv = []string{"EDGEWARD_CRASHPOINT=mid-download"} // the runtime download's first checkpoint
	d.AgentArgs = []string{"--checkpoint-bytes", "4194304"}   // a checkpoint every 4 MiB of the 35 MB library
	f.startAgents()
	f.commit("1.0.0")
	if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.3", os.Getenv("ONNXRUNTIME_LIB")); err != nil {
		t.Fatal(err)
	}
	f.runtimeRollout("ort", "1.24.3")
	if err := d.WaitStopped(f.ctx, wait); err != nil {
		t.Fatal(err)
	}
	if code := d.Agent.ExitCode(); code != -1 {
		t.Fatalf("agent exited with %d; want killed mid-download:\n%s", code, d.Agent.Tail(10))
	}
	if s := slotState(t, d); s.Current == nil || s.Current.Version != "1.0.0" {
		t.Fatalf("model slot after the kill: %v; want 1.0.0 committed", s)
	}
	f.srv.Kill()
	d.AgentBin, d.AgentEnv = "", nil

	for restart := 1; restart <= 2; restart++ {
		start := time.Now()
		if err := d.StartAgentOffline(f.ctx); err != nil {
			t.Fatal(err)
		}
		var code int
		var body string
		var err error
		for time.Since(start) < 10*time.Second {
			if code, body, err = inferOnce(f.ctx, d); err == nil && code == http.StatusOK {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(start)
		if code != http.StatusOK {
			t.Fatalf("restart %d with the server down: no inference 10 s after the start: HTTP %d %s %v\n%s", restart, code, body, err, d.Agent.Tail(15))
		}
		t.Logf("restart %d with the server down: inference answered %v after the agent started", restart, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("restart %d with the server down: inference answered %v after the start; want within 2 s", restart, took)
		}
		// It keeps serving while it retries the server.
		mark := fileSize(d.Agent.LogPath)
		err = lab.WaitFor(f.ctx, wait, d.Name+" to retry the server", func(context.Context) (bool, string, error) {
			if d.Agent.Exited() {
				return false, "", lab.Final(fmt.Errorf("agent exited (%d) with the server down:\n%s", d.Agent.ExitCode(), d.Agent.Tail(10)))
			}
			return strings.Contains(tailFrom(d.Agent.LogPath, mark), "cannot connect to the server yet"), "", nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if r, err := d.Infer(f.ctx, lab.Model); err != nil || r.Code != http.StatusOK || r.Version != "1.0.0" {
			t.Fatalf("inference while the server is down = %+v, %v; want 1.0.0", r, err)
		}
		if restart == 1 {
			if err := d.StopAgent(f.ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	since := time.Now()
	if err := f.srv.Start(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindRuntime, "1.24.3"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, since); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
		t.Fatal(err)
	}
}

// TestDiskFillsThenFrees is item 5: the device's model slots are on a small tmpfs that
// fills up. The update fails for lack of space as an infrastructure failure (retried,
// not Failed), the server shows last_error no_space, the device keeps serving its
// committed version from an intact slot; once space is freed the same update completes
// without an agent restart and without an operator's clear-failed.
func TestDiskFillsThenFrees(t *testing.T) {
	f := newFleet(t, 1)
	d := f.devs[0]
	slots := filepath.Join(d.StateDir, "slots", "model")
	if err := os.MkdirAll(slots, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatal("mounting a tmpfs needs root")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", slots).CombinedOutput(); err != nil {
		t.Fatalf("mount a 4 MiB tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", slots).Run() })
	f.startAgents()
	f.commit("1.0.0")
	s := slotState(t, d)
	active := d.ModelPayload(string(s.Active))

	// Fill the disk: a file of everything that is left.
	filler := filepath.Join(slots, ".filler")
	fill, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	var filled int64
	for {
		n, err := fill.Write(buf)
		filled += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
	}
	fill.Close()
	t.Logf("filled the model slots' file system with %d bytes", filled)

	f.publish("1.1.0")
	f.rollout("vib-1.1.0", "1.1.0", nil)
	var rep wire.Report
	err = lab.WaitFor(f.ctx, wait, "a report of the failed install", func(context.Context) (bool, string, error) {
		for _, r := range f.reports("vib-1.1.0")[d.ID] {
			rep = r
			return true, "", nil
		}
		return false, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Outcome != wire.OutcomeInfrastructure || !strings.Contains(rep.Cause, "no space left") {
		t.Fatalf("report with the disk full = %s: %s; want infrastructure, no space left", rep.Outcome, rep.Cause)
	}
	e := f.waitLastError(d, wire.ErrorNoSpace)
	t.Logf("server's last error for the device: %s: %s", e.Kind, e.Message)
	if r, err := d.Infer(f.ctx, lab.Model); err != nil || r.Code != http.StatusOK || r.Version != "1.0.0" {
		t.Errorf("inference with the disk full = %+v, %v; want 1.0.0 served", r, err)
	}
	if sum, err := sha256File(active); err != nil || sum != s.Current.SHA256 {
		t.Errorf("active slot with the disk full holds %s, %v; want 1.0.0 intact (%s)", sum, err, s.Current.SHA256)
	}

	// Free the space: the agent retries on its own.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	freed := time.Now()
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	t.Logf("space freed: 1.1.0 committed %v later", time.Since(freed).Round(time.Millisecond))
	if _, err := d.WaitServing(f.ctx, wait, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if n := agentStarts(d); n != 1 || d.Agent.Exited() {
		t.Errorf("agent started %d times (exited: %v); want one run throughout", n, d.Agent.Exited())
	}
	for _, r := range f.reports("vib-1.1.0")[d.ID] {
		if r.Outcome != wire.OutcomeInfrastructure && r.Outcome != wire.OutcomeCommitted {
			t.Errorf("report %s: %s; want only infrastructure failures and the commit", r.Outcome, r.Cause)
		}
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now()); err != nil {
		t.Fatal(err)
	}
	err = lab.WaitFor(f.ctx, wait, "the server to clear the device's last error", func(ctx context.Context) (bool, string, error) {
		fds, err := f.srv.Devices(ctx, f.devs)
		if err != nil {
			return false, "", err
		}
		e := fds[d.Name].LastError
		return e == nil, fmt.Sprintf("%+v", e), nil
	})
	if err != nil {
		t.Error(err)
	}
	if err := d.StopAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(f.ctx, rollback.Config{Dir: d.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.CheckInvariant(f.ctx); err != nil {
		t.Error(err)
	}
}

// Faults of the crash matrix.
const (
	faultAgent   = "agent"   // SIGKILL the agent (its runtimes go with it)
	faultRuntime = "runtime" // SIGKILL the device's runtime processes; the agent stays
	faultReboot  = "reboot"  // SIGKILL the agent and the swtpm, restart the swtpm (a TPM reset: PCRs cleared), restart the agent
)

// TestCrashMatrix grows the crash matrix beyond the agent: three devices go through a
// model upgrade (1.0.0 → 1.1.0) and then a runtime update (a 35 MB ONNX Runtime
// library), and at a random moment of each, every device suffers one fault: the agent
// killed, the runtime killed, or a reboot with the TPM reset. Each device gets each
// fault once over the two rounds; the runtime kill of the runtime update comes as the
// new runtime starts held for its trial (a killed runtime is not the version's fault:
// retried, then committed). After a kill the active slots hold complete
// committed versions as the kill left them; after each round every device has
// committed the update exactly once, checks in trusted (a reset TPM included) and
// serves; at the end every slot invariant holds.
func TestCrashMatrix(t *testing.T) {
	f := newFleet(t, 3)
	f.startAgents()
	f.commit("1.0.0")
	seed := time.Now().UnixNano()
	rng := rand.New(rand.NewPCG(uint64(seed), 14))
	t.Logf("seed %d", seed)
	faults := []string{faultAgent, faultRuntime, faultReboot}

	round := func(n int, rollout string, kind artifact.Kind, version, serving string, window time.Duration, start func()) {
		t.Helper()
		start()
		since := time.Now()
		errs := make(chan error, len(f.devs))
		for i, d := range f.devs {
			fault := faults[(i+n)%len(faults)]
			delay := time.Duration(rng.Int64N(int64(window)))
			mark := fileSize(d.Agent.LogPath)
			go func() {
				if kind == artifact.KindRuntime && fault == faultRuntime {
					// Deterministically in the runtime trial: the new runtime is starting,
					// held beside the serving one, when both are killed.
					err := lab.WaitFor(f.ctx, wait, d.Name+" to start the new runtime held", func(context.Context) (bool, string, error) {
						return strings.Contains(tailFrom(d.Agent.LogPath, mark), "hold=true"), "", nil
					})
					if err != nil {
						errs <- err
						return
					}
					delay = 0
				}
				errs <- f.fault(d, fault, delay)
			}()
		}
		for range f.devs {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, kind, version); err != nil {
			t.Fatal(err)
		}
		if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, since); err != nil {
			t.Fatal(err)
		}
		reps := f.reports(rollout)
		for _, d := range f.devs {
			if _, err := d.WaitServing(f.ctx, wait, serving); err != nil {
				t.Fatal(err)
			}
			committed := 0
			for _, r := range reps[d.ID] {
				switch r.Outcome {
				case wire.OutcomeCommitted:
					committed++
				case wire.OutcomeInfrastructure:
				default:
					t.Errorf("%s: report of %s: %s %s; want only commits and infrastructure retries", d.Name, rollout, r.Outcome, r.Cause)
				}
			}
			if committed != 1 {
				t.Errorf("%s: %d committed reports of %s; want exactly 1", d.Name, committed, rollout)
			}
		}
	}
	round(0, "vib-1.1.0", artifact.KindModel, "1.1.0", "1.1.0", 2500*time.Millisecond, func() {
		if _, err := f.repo.PublishModelRuns(f.ctx, "1.1.0", gates, 50000); err != nil {
			t.Fatal(err)
		}
		f.rollout("vib-1.1.0", "1.1.0", nil)
	})
	round(1, "ort", artifact.KindRuntime, "1.24.3", "1.1.0", 6*time.Second, func() {
		if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.3", os.Getenv("ONNXRUNTIME_LIB")); err != nil {
			t.Fatal(err)
		}
		f.runtimeRollout("ort", "1.24.3")
	})
	for _, d := range f.devs {
		if err := d.StopAgent(f.ctx); err != nil {
			t.Fatal(err)
		}
		m, err := rollback.Open(f.ctx, rollback.Config{Dir: d.StateDir})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CheckInvariant(f.ctx); err != nil {
			t.Errorf("%s at the end: %v", d.Name, err)
		}
		m.Close()
	}
}

// fault waits delay, then applies one fault of the crash matrix to d and brings the
// device back (restarting what the fault stopped). After a kill it checks that the
// active slots hold their committed versions intact, as the kill left them.
func (f *fleetLab) fault(d *lab.Device, fault string, delay time.Duration) error {
	time.Sleep(delay)
	logf := func() {
		f.t.Logf("%s: %s fault %v into the round; slots: %s", d.Name, fault, delay.Round(time.Millisecond), phases(f.ctx, d))
	}
	switch fault {
	case faultRuntime:
		if n := killRuntimes(f.t, d); n == 0 {
			return fmt.Errorf("%s: no runtime process to kill", d.Name)
		}
		logf()
		return nil
	case faultAgent, faultReboot:
		if err := d.KillAgent(f.ctx); err != nil {
			return err
		}
		logf()
		if fault == faultReboot {
			d.Swtpm.Kill()
			if err := d.StartTPM(f.ctx); err != nil {
				return err
			}
		}
		m, err := rollback.Open(f.ctx, rollback.Config{Dir: d.StateDir})
		if err != nil {
			return err
		}
		err = m.CheckActive(f.ctx)
		m.Close()
		if err != nil {
			return fmt.Errorf("%s after the %s fault, before recovery: %w", d.Name, fault, err)
		}
		return d.StartAgent(f.ctx)
	}
	return fmt.Errorf("unknown fault %q", fault)
}

// phases says in which phase each slot kind of d is (read beside a running agent: sqlite WAL).
func phases(ctx context.Context, d *lab.Device) string {
	m, err := rollback.Open(ctx, rollback.Config{Dir: d.StateDir})
	if err != nil {
		return err.Error()
	}
	defer m.Close()
	var out []string
	for _, k := range rollback.Kinds() {
		s, err := m.State(ctx, k)
		if err != nil {
			out = append(out, fmt.Sprintf("%s: %v", k, err))
			continue
		}
		v := ""
		if s.Current != nil {
			v = " " + s.Current.Version
		}
		if s.Pending != nil {
			v += " → " + s.Pending.Version
		}
		out = append(out, fmt.Sprintf("%s %s%s", k, s.Phase, v))
	}
	return strings.Join(out, ", ")
}
