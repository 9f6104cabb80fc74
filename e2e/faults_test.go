package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// TestNetworkCut cuts the server off in the middle of a rollout: it is killed while
// the first wave's device runs its trial, so that device commits with the server gone
// and its report waits in its outbox, while every device's check-ins fail; a device
// restarted meanwhile serves its committed model without the server. After the
// server restarts every device catches up and commits, the server holds exactly one
// committed report per device and rollout, and no report is left in an outbox.
func TestNetworkCut(t *testing.T) {
	f := newFleet(t, 3)
	f.startAgents()
	f.commit("1.0.0")
	// A probe set with many runs makes the trial last long enough to cut the server
	// off during it.
	if _, err := f.repo.PublishModelRuns(f.ctx, "1.1.0", gates, 300000); err != nil {
		t.Fatal(err)
	}
	const id = "vib-1.1.0"
	ordered := lab.ByBucket(id, f.devs)
	first := ordered[0]
	mark := fileSize(first.Agent.LogPath)
	f.rollout(id, "1.1.0", []policy.WaveSpec{{Percent: lab.PercentFor(id, ordered, 1), Soak: "2s"}, {Percent: 100}})
	err := lab.WaitFor(f.ctx, wait, first.Name+" to start the trial of 1.1.0", func(context.Context) (bool, string, error) {
		return strings.Contains(tailFrom(first.Agent.LogPath, mark), `msg="model loaded" model=vibration-anomaly version=1.1.0 `), "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	f.srv.Kill()
	err = lab.WaitFor(f.ctx, wait, first.Name+" to commit 1.1.0 with the server away", func(context.Context) (bool, string, error) {
		return strings.Contains(tailFrom(first.Agent.LogPath, mark), "msg=\"install report\" kind=model version=1.1.0 outcome=committed"), "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Every agent notices the cut: its check-ins fail.
	for _, d := range f.devs {
		m := fileSize(d.Agent.LogPath)
		err := lab.WaitFor(f.ctx, wait, d.Name+" to fail a check-in", func(context.Context) (bool, string, error) {
			return strings.Contains(tailFrom(d.Agent.LogPath, m), "check-in round failed"), "", nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := outboxLen(t, first); n == 0 {
		t.Fatalf("%s: no report waiting in the outbox while the server is away", first.Name)
	}
	// A device that restarts during the outage serves its committed model at once.
	other := ordered[1]
	if err := other.StopAgent(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := other.StartAgentOffline(f.ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := other.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
		t.Fatalf("%s restarted without a server: %v", other.Name, err)
	}
	if err := f.srv.Start(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		if d.Agent.Exited() {
			t.Errorf("%s: agent exited during the cut:\n%s", d.Name, d.Agent.Tail(10))
		}
		err := lab.WaitFor(f.ctx, wait, d.Name+"'s outbox to drain", func(ctx context.Context) (bool, string, error) {
			n := outboxLen(t, d)
			return n == 0, fmt.Sprint(n, " waiting"), nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	for _, rollout := range []string{"vib-1.0.0", id} {
		reps := f.reports(rollout)
		for _, d := range f.devs {
			if rs := reps[d.ID]; len(rs) != 1 || rs[0].Outcome != wire.OutcomeCommitted {
				t.Errorf("%s: reports of %s = %+v; want exactly one commit", d.Name, rollout, rs)
			}
		}
	}
}

// outboxLen counts the reports waiting in a device's outbox.
func outboxLen(t *testing.T, d *lab.Device) int {
	t.Helper()
	ctx := context.Background()
	o, err := updater.OpenOutbox(ctx, filepath.Join(d.StateDir, "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	n, err := o.Len(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestAgentCrash kills agents with SIGKILL at crash points of an upgrade (after the
// download, at the start of the trial, right after the commit was persisted), checks
// the slot invariant on the state as the kill left it, restarts them, and checks that
// each finishes the upgrade, stays trusted, and serves the new version.
func TestAgentCrash(t *testing.T) {
	f := newFleet(t, 3)
	points := []string{"after-download", "after-trial-start", "after-commit"}
	for i, d := range f.devs {
		d.AgentBin = crashAgent
		// @2: the second time the point is reached, i.e. during the upgrade, not the
		// first install.
		d.AgentEnv = []string{"EDGEWARD_CRASHPOINT=" + points[i] + "@2"}
	}
	f.startAgents()
	f.commit("1.0.0")
	f.publish("1.1.0")
	f.rollout("vib-1.1.0", "1.1.0", nil)
	for i, d := range f.devs {
		if err := d.WaitStopped(f.ctx, wait); err != nil {
			t.Fatalf("crash point %s: %v", points[i], err)
		}
		if code := d.Agent.ExitCode(); code != -1 {
			t.Fatalf("%s: agent exited with %d; want killed at %s:\n%s", d.Name, code, points[i], d.Agent.Tail(10))
		}
		// As the kill left it, before any recovery: a complete committed version is
		// active. (The floor may lag a commit the kill interrupted: recovery raises it.)
		s := slotState(t, d)
		if s.Current == nil {
			t.Fatalf("%s after the kill at %s: no committed version (%v)", d.Name, points[i], s)
		}
		if sum, err := sha256File(d.ModelPayload(string(s.Active))); err != nil || sum != s.Current.SHA256 {
			t.Fatalf("%s after the kill at %s: active slot %s holds %s, %v; want %s complete", d.Name, points[i], s.Active, sum, err, s.Current.Version)
		}
		t.Logf("%s killed at %s: %v", d.Name, points[i], s)
		d.AgentEnv = nil
	}
	since := time.Now()
	f.startAgents()
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindModel, "1.1.0"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, since); err != nil {
		t.Fatal(err)
	}
	// The report of a commit a kill interrupted is sent by the restarted agent after the
	// check-in that shows the version: wait for every device's, then count them.
	var reps map[string][]wire.Report
	err := lab.WaitFor(f.ctx, wait, "every device's committed report of vib-1.1.0", func(context.Context) (bool, string, error) {
		reps = f.reports("vib-1.1.0")
		missing := 0
		for _, d := range f.devs {
			if !slices.ContainsFunc(reps[d.ID], func(r wire.Report) bool { return r.Outcome == wire.OutcomeCommitted }) {
				missing++
			}
		}
		return missing == 0, fmt.Sprint(missing, " devices without one"), nil
	})
	if err != nil {
		t.Error(err)
	}
	for i, d := range f.devs {
		if _, err := d.WaitServing(f.ctx, wait, "1.1.0"); err != nil {
			t.Error(err)
		}
		if err := d.StopAgent(f.ctx); err != nil {
			t.Fatal(err)
		}
		m, err := rollback.Open(f.ctx, rollback.Config{Dir: d.StateDir})
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CheckInvariant(f.ctx); err != nil {
			t.Errorf("%s (killed at %s) after the upgrade: %v", d.Name, points[i], err)
		}
		m.Close()
		committed := 0
		for _, r := range reps[d.ID] {
			if r.Outcome == wire.OutcomeCommitted {
				committed++
			}
		}
		// A kill right after the commit is persisted comes before the report is queued;
		// the restarted agent reports that commit (its report ID derives from the
		// commit, so it is reported exactly once).
		if committed != 1 {
			t.Errorf("%s (killed at %s): %d committed reports of vib-1.1.0; want 1: %+v", d.Name, points[i], committed, reps[d.ID])
		}
	}
}

// TestAgentCrashRuntime kills agents during a runtime update (a 35 MB ONNX Runtime
// library): one in the middle of the download, past its first durable checkpoint; one
// during the runtime trial, while the new runtime process is held beside the serving
// one. Both runtime processes go with the agent (the public port closes). After a
// restart each resumes or retries, commits the runtime, stays trusted and serves.
func TestAgentCrashRuntime(t *testing.T) {
	f := newFleet(t, 2)
	dl, trial := f.devs[0], f.devs[1]
	dl.AgentBin = crashAgent
	dl.AgentEnv = []string{"EDGEWARD_CRASHPOINT=mid-download"} // models are too small to reach a checkpoint
	dl.AgentArgs = []string{"--checkpoint-bytes", "4194304"}   // a checkpoint every 4 MiB of the 35 MB library
	f.startAgents()
	f.commit("1.0.0")
	if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.3", os.Getenv("ONNXRUNTIME_LIB")); err != nil {
		t.Fatal(err)
	}
	mark := fileSize(trial.Agent.LogPath)
	f.runtimeRollout("ort", "1.24.3")
	err := lab.WaitFor(f.ctx, wait, trial.Name+" to start the new runtime held", func(context.Context) (bool, string, error) {
		return strings.Contains(tailFrom(trial.Agent.LogPath, mark), "hold=true"), "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	trial.Agent.Kill()
	for _, d := range f.devs {
		if err := d.WaitStopped(f.ctx, wait); err != nil {
			t.Fatal(err)
		}
		if code := d.Agent.ExitCode(); code != -1 {
			t.Fatalf("%s: agent exited with %d; want killed:\n%s", d.Name, code, d.Agent.Tail(10))
		}
	}
	var part int64
	filepath.Walk(filepath.Join(dl.StateDir, "slots", "runtime"), func(p string, fi os.FileInfo, err error) error {
		if err == nil && strings.HasSuffix(p, ".part") {
			part = fi.Size()
		}
		return nil
	})
	if part <= 0 {
		t.Fatalf("%s: no partial download in the runtime slot after the kill", dl.Name)
	}
	t.Logf("%s killed with %d bytes of the runtime downloaded", dl.Name, part)
	dl.AgentEnv = nil
	since := time.Now()
	f.startAgents()
	if err := f.srv.WaitCommitted(f.ctx, wait, f.devs, artifact.KindRuntime, "1.24.3"); err != nil {
		t.Fatal(err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, since); err != nil {
		t.Fatal(err)
	}
	for _, d := range f.devs {
		if _, err := d.WaitServing(f.ctx, wait, "1.0.0"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestDiskFull gives a device a 4 MiB file system for its runtime slots and rolls out a
// runtime (a 35 MB ONNX Runtime library): the install fails cleanly for lack of space,
// the report says so, the device keeps serving its model from the runtime it had, stays
// trusted, and installs the next model.
func TestDiskFull(t *testing.T) {
	f := newFleet(t, 1)
	d := f.devs[0]
	slots := filepath.Join(d.StateDir, "slots", "runtime")
	if err := os.MkdirAll(slots, 0o700); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", slots).CombinedOutput()
	if err != nil {
		msg := fmt.Sprintf("mounting a 4 MiB tmpfs (needs root): %v %s", err, out)
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", slots).Run() })
	f.startAgents()
	f.commit("1.0.0")
	if _, err := f.repo.PublishRuntime(f.ctx, "onnxruntime", "1.24.3", os.Getenv("ONNXRUNTIME_LIB")); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.CreateRollout(policy.RolloutSpec{ID: "ort", Target: policy.TargetSpec{Kind: artifact.KindRuntime, Name: "onnxruntime", Version: "1.24.3"}}); err != nil {
		t.Fatal(err)
	}
	var rep wire.Report
	err = lab.WaitFor(f.ctx, wait, "the runtime install's failure report", func(context.Context) (bool, string, error) {
		for _, r := range f.reports("ort")[d.ID] {
			rep = r
			return true, "", nil
		}
		return false, "", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// No space is transient (27f5e65): reported as infrastructure and retried, never
	// counted against the wave.
	if rep.Outcome != wire.OutcomeInfrastructure || !strings.Contains(rep.Cause, "no space left") {
		t.Fatalf("report = %+v; want an infrastructure failure for lack of space", rep)
	}
	if r, err := d.Infer(f.ctx, lab.Model); err != nil || r.Code != 200 || r.Version != "1.0.0" {
		t.Errorf("inference after the full disk = %+v, %v; want 1.0.0 served", r, err)
	}
	if err := f.srv.WaitTrusted(f.ctx, wait, f.devs, time.Now()); err != nil {
		t.Fatal(err)
	}
	fds, err := f.srv.Devices(f.ctx, f.devs)
	if err != nil {
		t.Fatal(err)
	}
	if v := fds[d.Name].Slots[artifact.KindRuntime].Version; v != "" {
		t.Errorf("runtime slot = %q after a failed install; want none", v)
	}
	var left []string
	filepath.Walk(slots, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			left = append(left, fmt.Sprintf("%s (%d bytes)", p, fi.Size()))
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("files left in the runtime slots after the failure: %v", left)
	}
	f.commit("1.1.0")
	if _, err := d.WaitServing(f.ctx, wait, "1.1.0"); err != nil {
		t.Error(err)
	}
	if d.Agent.Exited() {
		t.Errorf("agent exited:\n%s", d.Agent.Tail(10))
	}
}

// TestServerRestartMidPublish publishes versions through the server's operator API
// while TUF clients refresh continuously, and kills the server (SIGKILL) in the middle
// of some publishes, restarting it each time. A client may fail to connect, but never
// sees an inconsistent repository; at the end every publish that succeeded is there and
// the repository verifies.
func TestServerRestartMidPublish(t *testing.T) {
	need(t)
	ctx := context.Background()
	lb, err := lab.New(t.TempDir(), bins)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lb.Close)
	const pass = "e2e-passphrase"
	lb.Env = []string{"EDGEWARD_PASSPHRASE=" + pass}
	repo, err := lab.InitRepo(ctx, filepath.Join(lb.Dir, "repo"), pass, attestationPolicy)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := exec.Command(bins.Edgeward, "token", "create", "--repo", repo.Dir, "--name", "rm", "--role", "release-manager").Output()
	if err != nil {
		t.Fatal(err)
	}
	token := strings.TrimSpace(string(tok))
	srv, err := lb.StartServer(ctx, lab.ServerConfig{Repo: repo.Dir, Args: []string{"--sign-delegated"}})
	if err != nil {
		t.Fatal(err)
	}
	root, err := os.ReadFile(repo.RootJSON())
	if err != nil {
		t.Fatal(err)
	}
	newClient := func(i int) *updater.TUF {
		dir := filepath.Join(lb.Dir, fmt.Sprintf("client-%d", i))
		if err := updater.PinRoot(dir, root); err != nil {
			t.Fatal(err)
		}
		c, err := updater.NewTUF(updater.TUFConfig{MetadataDir: dir, MetadataURL: srv.URL + "/metadata",
			Downloader: &updater.Downloader{Retry: updater.Backoff{Attempts: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var bad []string
	refreshes, failures := 0, 0
	for i := range 3 {
		c := newClient(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := c.Refresh(ctx)
				mu.Lock()
				refreshes++
				if err != nil {
					failures++
					if !unreachable(err) {
						bad = append(bad, err.Error())
					}
				}
				mu.Unlock()
				time.Sleep(20 * time.Millisecond)
			}
		}()
	}

	var published []string
	for i := 1; i <= 12; i++ {
		version := fmt.Sprintf("1.0.%d", i)
		file := filepath.Join(lb.Dir, version+".onnx")
		data := make([]byte, 256<<10)
		for j := range data {
			data[j] = byte(rand.IntN(256))
		}
		os.WriteFile(file, data, 0o644)
		cmd := exec.Command(bins.Edgeward, "publish", "--server", srv.URL, "--token", token, "--kind", "model", "--name", "m", "--version", version, file)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			time.Sleep(time.Duration(rand.IntN(150)) * time.Millisecond)
			srv.Kill()
			if err := srv.Start(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := cmd.Wait(); err == nil {
			published = append(published, version)
		} else {
			t.Logf("publish %s failed (server killed during it?): %v", version, err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d refreshes, %d failed to reach the server; %d of 12 publishes succeeded", refreshes, failures, len(published))
	if len(bad) > 0 {
		t.Errorf("%d refreshes saw something other than an unreachable server, e.g. %s", len(bad), bad[0])
	}
	if len(published) < 8 {
		t.Errorf("only %d of 12 publishes succeeded; want at least the 8 the server was not killed during", len(published))
	}
	c := newClient(99)
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("refresh after the last restart: %v", err)
	}
	for _, v := range published {
		if _, err := c.Target(ctx, "models/m/"+v+".onnx"); err != nil {
			t.Errorf("published %s is missing: %v", v, err)
		}
	}
	if out, err := exec.Command(bins.Edgeward, "repo", "status", "--repo", repo.Dir).CombinedOutput(); err != nil {
		t.Errorf("repo status: %v\n%s", err, out)
	}
}

// slotState reads the model slots of a device whose agent is not running, without
// recovering them.
func slotState(t *testing.T, d *lab.Device) rollback.State {
	t.Helper()
	m, err := rollback.Open(context.Background(), rollback.Config{Dir: d.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	s, err := m.State(context.Background(), artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sha256File(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:]), nil
}

// unreachable reports whether err only says the server could not be reached (refused,
// reset, cut short), as opposed to a verification failure.
func unreachable(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	s := err.Error()
	for _, m := range []string{"connection refused", "connection reset", "EOF", "broken pipe"} {
		if strings.Contains(s, m) {
			return true
		}
	}
	return false
}

func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// tailFrom returns a file's content from offset on.
func tailFrom(path string, off int64) string {
	b, err := os.ReadFile(path)
	if err != nil || int64(len(b)) < off {
		return ""
	}
	return string(b[off:])
}
