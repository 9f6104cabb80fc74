package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/testport"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestDeviceModeRestartsOnFullDisk runs the agent in device mode end to end (the real
// repo-server with the device API and its audit log, the TPM simulator, a real
// edgeward-runtime and ONNX Runtime) with its whole state directory on a tmpfs. The
// device witnesses the server's audit log (Config.AuditKey, as `device --audit-key`),
// commits 1.0.0 through a rollout and serves it; the agent is stopped (a reboot: the
// state directory stays), the disk fills up and the agent is started again in the same
// process. It must come up, start the runtime and serve the committed model (the same
// answer as before the stop), and keep checking in trusted round after round, its
// status recording each check-in. The server's audit log grows: the device verifies
// the new checkpoint and keeps acting on the answers though it cannot save it. 1.1.0
// rolls out: the device reports that it has no space for it (no_space at check-in),
// keeping 1.0.0 and failing nothing. Once space is freed it carries on without a
// restart: the measurement log and the audit checkpoint are saved again, and 1.1.0
// installs, commits, serves and is reported.
//
// Before the fixes it failed: the second Run could not bind the public socket ("bind:
// address already in use": the first had not closed it); then, some 20 rounds after the
// restart, the outbox could no longer record check-ins ("outbox: record check-in:
// database or disk is full (13)": its kept write-ahead log had outgrown its blocks);
// and once the audit log grew every check-in answer was refused ("audit checkpoint:
// write …/audit-checkpoint: …: no space left on device", logged as a forked audit log).
func TestDeviceModeRestartsOnFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts edgeward-runtime")
	}
	lib := ortLibrary(t)
	t.Setenv("ONNXRUNTIME_LIB", lib)
	bin := filepath.Join(t.TempDir(), "edgeward-runtime")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/edgeward-runtime").CombinedOutput(); err != nil {
		t.Fatalf("go build edgeward-runtime: %v\n%s", err, out)
	}
	ctx := context.Background()

	// Server side: the repository with 1.0.0 published and rolled out, the device API.
	lab := newDeviceAPILab(ctx, t, t.TempDir())
	rig := &storyRig{repo: lab.res.Repo, keys: &repository.KeyRing{Passphrase: func() ([]byte, error) { return []byte("pw"), nil }}}
	rig.publish(t, "1.0.0")
	var pol atomic.Pointer[policy.Policy]
	pol.Store(rolloutPolicy(t, "1.0.0", ""))
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: lab.res.Repo})
	if err != nil {
		t.Fatal(err)
	}
	// The server suggests the interval its agents here use (250 ms): its per-device
	// check-in bound follows it (one per interval / 5).
	if err := srv.EnableDeviceAPI(reposerver.DeviceConfig{Fleet: lab.store, AttestCA: lab.ca, Policy: pol.Load, CheckInInterval: 250 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	auditLog, err := srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var checkIns atomic.Int64 // answered check-ins
	h := srv.Handler()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if r.URL.Path == wire.PathCheckIn && (rec.status == 0 || rec.status == http.StatusOK) {
			checkIns.Add(1)
		}
	}))
	t.Cleanup(hs.Close)

	// Device side: the TPM (kept across the agent's restarts, as the hardware TPM is
	// across an agent restart) and the state directory on a small tmpfs.
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := lab.maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	base := t.TempDir()
	fill, free := fullDisk(t, base)
	dir := StateDir(filepath.Join(base, "st"))
	root, err := os.ReadFile(filepath.Join(lab.res.Repo.MetadataDir(), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := Enroll(dir, root, Enrollment{MetadataURL: hs.URL + "/metadata", TargetsURL: hs.URL + "/targets", TPM: "sim"}); err != nil {
		t.Fatal(err)
	}
	// The public socket's port, bound by the agent at each start (and again after the
	// stop): one outside the ephemeral range and reserved for this process (testport),
	// so that no other test's connection or listener takes it meanwhile ("bind: address
	// already in use", as an e2e agent's --listen once failed in CI).
	port, err := testport.Take()
	if err != nil {
		t.Fatal(err)
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)

	// start runs the agent in device mode; stop cancels it and fails the test unless
	// it returns nil. exited reports an early return.
	type agentRun struct {
		logs   *syncBuffer
		ran    chan error
		cancel context.CancelFunc
	}
	start := func(interval time.Duration) *agentRun {
		ctx, cancel := context.WithCancel(ctx)
		a := &agentRun{logs: &syncBuffer{}, ran: make(chan error, 1), cancel: cancel}
		go func() {
			a.ran <- Run(ctx, Config{StateDir: dir, Server: hs.URL, TPM: tpm, RuntimeBinary: bin, Listen: addr, AuditKey: auditLog.Verifier(),
				Interval: interval, Logger: slog.New(slog.NewTextHandler(a.logs, nil))})
		}()
		// A failed test stops the agent before the tmpfs is unmounted.
		t.Cleanup(func() {
			cancel()
			select {
			case <-a.ran:
			case <-time.After(30 * time.Second):
			}
		})
		return a
	}
	exited := func(a *agentRun) {
		t.Helper()
		select {
		case err := <-a.ran:
			a.ran <- err // for the cleanup
			t.Fatalf("the agent exited: Run = %v\nlog:\n%s", err, a.logs)
		default:
		}
	}
	stop := func(a *agentRun) {
		t.Helper()
		a.cancel()
		select {
		case err := <-a.ran:
			a.ran <- nil // for the cleanup
			if err != nil {
				t.Fatalf("Run = %v; want nil when stopped\nlog:\n%s", err, a.logs)
			}
		case <-time.After(30 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("Run did not return 30 s after it was stopped:\n%s", buf[:goruntime.Stack(buf, true)])
		}
	}
	// waitFor polls cond (which says what it saw) until it holds, the agent exits or
	// the deadline passes.
	waitFor := func(a *agentRun, what string, d time.Duration, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			ok, saw := cond()
			if ok {
				return
			}
			exited(a)
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %v; last: %s\nlog:\n%s", what, d, saw, a.logs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	input := []byte(`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[0.1,0.2,0.3,0.4]}]}`)
	// infer sends one inference request to the agent's public socket and returns the
	// served version and the outputs' data, or what went wrong.
	infer := func() (version, outputs string, err error) {
		resp, err := client.Post("http://"+addr+"/v2/models/vibration-anomaly/infer", "application/json", bytes.NewReader(input))
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return "", "", fmt.Errorf("HTTP %d %s", resp.StatusCode, b)
		}
		var ir runtimeapi.InferResponse
		if err := json.Unmarshal(b, &ir); err != nil || len(ir.Outputs) == 0 {
			return "", "", fmt.Errorf("answer %s (%v); want outputs", b, err)
		}
		var outs []string
		for _, o := range ir.Outputs {
			outs = append(outs, fmt.Sprintf("%s%v=%s", o.Name, o.Shape, o.Data))
		}
		return ir.ModelVersion, strings.Join(outs, " "), nil
	}
	serves := func(version string) func() (bool, string) {
		return func() (bool, string) {
			v, outs, err := infer()
			if err != nil {
				return false, err.Error()
			}
			return v == version, "serving " + v + ": " + outs
		}
	}
	reported := func(version string, outcome wire.Outcome) func() (bool, string) {
		return func() (bool, string) {
			reps, err := lab.store.Reports(ctx, fleet.ReportFilter{RolloutID: "vib-" + version})
			for _, r := range reps {
				if r.Version == version && r.Outcome == outcome {
					return true, ""
				}
			}
			return false, fmt.Sprintf("reports %+v, %v", reps, err)
		}
	}
	device := func() fleet.Device {
		t.Helper()
		devs, err := lab.store.Devices(ctx, fleet.ListOptions{})
		if err != nil || len(devs) != 1 {
			t.Fatalf("devices = %+v, %v; want one", devs, err)
		}
		return devs[0]
	}
	// checksIn waits for two more check-ins answered to a trusted, unquarantined device.
	checksIn := func(a *agentRun, when string) {
		t.Helper()
		n := checkIns.Load()
		waitFor(a, "two check-ins "+when, 60*time.Second, func() (bool, string) {
			return checkIns.Load() >= n+2, fmt.Sprintf("%d check-in(s)", checkIns.Load()-n)
		})
		if d := device(); d.Verdict != policy.VerdictTrusted || d.Quarantined {
			t.Fatalf("device %s: verdict %q, quarantined %v (%s); want trusted\nlog:\n%s", when, d.Verdict, d.Quarantined, d.QuarantineReason, a.logs)
		}
	}

	// checksInRecorded waits for n more check-ins, then for one more, which the
	// running agent's status must have recorded (its outbox).
	checksInRecorded := func(a *agentRun, n int64, when string) {
		t.Helper()
		m := checkIns.Load()
		waitFor(a, fmt.Sprintf("%d check-ins %s", n, when), 120*time.Second, func() (bool, string) {
			return checkIns.Load() >= m+n, fmt.Sprintf("%d check-in(s)", checkIns.Load()-m)
		})
		after := time.Now()
		checksIn(a, when)
		s, err := AskStatus(ctx, dir)
		if err != nil || !s.LastCheckIn.After(after) || s.LastCheckInResult != "ok" {
			t.Fatalf("status %s: last check-in %v (%q), %v; want one after %v, ok\nlog:\n%s", when, s.LastCheckIn, s.LastCheckInResult, err, after, a.logs)
		}
	}

	// 1.0.0 rolls out to the device in device mode, is committed, reported and served.
	a := start(2 * time.Second)
	waitFor(a, "1.0.0 committed and reported", 120*time.Second, reported("1.0.0", wire.OutcomeCommitted))
	waitFor(a, "1.0.0 served", 60*time.Second, serves("1.0.0"))
	_, answer, _ := infer()
	checksIn(a, "after the commit")
	stop(a) // a reboot: the state directory stays

	// The disk fills up; the agent starts again, and checks in more often than before
	// (more rounds than the first run did, each recorded in the outbox).
	fill()
	a = start(250 * time.Millisecond)
	waitFor(a, "the committed 1.0.0 served again on the full disk", 60*time.Second, serves("1.0.0"))
	if _, got, err := infer(); err != nil || got != answer {
		t.Fatalf("inference on the full disk = %s, %v; want %s, as before the stop", got, err, answer)
	}
	checksInRecorded(a, 40, "on the full disk")

	// The server's audit log grows (an operator's change, its new checkpoint in every
	// answer from the next second on): the device verifies it and goes on acting on
	// the answers, though it cannot save the checkpoint.
	if _, err := auditLog.Append(ctx, "operator", "policy.update", "vib-1.1.0", nil); err != nil {
		t.Fatal(err)
	}
	cp, err := auditLog.Checkpoint(ctx) // as the server's checkpoint loop does
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // the server's checkpoint cache (CheckpointRefresh)
	checksInRecorded(a, 4, "after the audit log grew")
	// The change rolls out 1.1.0, which the device has no room to download: no_space
	// at check-in, retried; the version is not failed, and 1.0.0 keeps serving.
	rig.publish(t, "1.1.0")
	pol.Store(rolloutPolicy(t, "1.1.0", ""))
	waitFor(a, "no_space at check-in", 60*time.Second, func() (bool, string) {
		d := device()
		return d.LastError != nil && d.LastError.Kind == wire.ErrorNoSpace, fmt.Sprintf("last error %+v", d.LastError)
	})
	checksInRecorded(a, 4, "while the rollout waits for space")
	if d := device(); d.Slots["model"].Version != "1.0.0" || d.Slots["model"].Failed != "" {
		t.Fatalf("device's model slot on the full disk = %+v; want 1.0.0, nothing failed", d.Slots["model"])
	}
	if _, got, err := infer(); err != nil || got != answer {
		t.Fatalf("inference while the rollout waits for space = %s, %v; want %s", got, err, answer)
	}

	// Space is freed: the agent carries on without a restart.
	free()
	waitFor(a, "1.1.0 committed and reported after space was freed", 120*time.Second, reported("1.1.0", wire.OutcomeCommitted))
	waitFor(a, "1.1.0 served", 60*time.Second, serves("1.1.0"))
	checksInRecorded(a, 2, "after space was freed")
	if d := device(); d.LastError != nil {
		t.Errorf("device's last error after space was freed = %+v; want none", d.LastError)
	}
	// The measurement log on disk caught up: it replays to the PCR and holds 1.1.0.
	data, err := os.ReadFile(dir.Measurements())
	if err != nil {
		t.Fatal(err)
	}
	l, err := eventlog.Parse(data)
	if err != nil {
		t.Fatalf("measurement log after space was freed: %v", err)
	}
	pcrs, err := tpm.ReadPCRs(ctx, eventlog.PCRDevelopment)
	if err != nil {
		t.Fatal(err)
	}
	if want := l.Replay()[eventlog.PCRDevelopment]; string(want[:]) != string(pcrs[eventlog.PCRDevelopment]) || !strings.Contains(string(data), `"1.1.0"`) {
		t.Errorf("measurement log after space was freed (%d events) does not replay to PCR %d or lacks 1.1.0", len(l), eventlog.PCRDevelopment)
	}
	// So did the audit checkpoint: the one the operator's change was signed into.
	saved, err := os.ReadFile(dir.AuditCheckpoint())
	if err != nil {
		t.Fatal(err)
	}
	if c, err := checkpoint.ParseUnverified(saved); err != nil || c.Size < cp.Size {
		t.Errorf("audit checkpoint saved after space was freed: %+v, %v; want one of at least %d records", c, err, cp.Size)
	}
	stop(a)
}
