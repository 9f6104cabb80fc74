package updater

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/testport"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

func TestTransient(t *testing.T) {
	// A port reserved for this process and never listened on (testport): refused.
	port, err := testport.Take()
	if err != nil {
		t.Fatal(err)
	}
	_, refused := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port)) // a runtime or server that is down
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{fmt.Errorf("install: %w", &DownloadError{Err: fmt.Errorf("%w: 4 MiB needed", ErrDiskFull), perm: true}), true},
		{&os.PathError{Op: "write", Path: "/slots/b/payload", Err: syscall.ENOSPC}, true},
		{fmt.Errorf("load: %w", refused), true},
		{&DownloadError{URL: "u", Status: 503, Err: errors.New("unavailable")}, true},
		// A target listed in signed metadata that a server or mirror does not serve, or
		// metadata that is stale, replayed, expired or too large: the repository's or
		// the path's state, not the version's (one forged 404 used to burn it).
		{&DownloadError{URL: "u", Status: 404, Err: errors.New("not found")}, true},
		{&DownloadError{URL: "u", Status: 403, Err: errors.New("forbidden")}, true},
		{fmt.Errorf("tuf target t: %w", &metadata.ErrDownloadHTTP{StatusCode: 404, URL: "u/5.models.json"}), true},
		{fmt.Errorf("tuf target t: %w", &metadata.ErrExpiredMetadata{Msg: "models.json is expired"}), true},
		{fmt.Errorf("tuf target t: %w", ErrMetadataTooLarge), true},
		{fmt.Errorf("tuf target t: %w: target t not found", ErrNotListed), true},
		{errors.New("target models/m/1.0.0.onnx is built for [jetson], not for this device (rpi4)"), false},
		{errors.New("target models/m/1.0.0.onnx is a runtime, not a model"), false},
		{&DownloadError{URL: "u", Status: 416, Err: errors.New("range not satisfiable: starting over")}, true},
		{&DownloadError{Err: ErrHashMismatch, perm: true}, true}, // a mirror's wrong bytes: the version is not at fault
		{&DownloadError{Err: ErrTooLong, perm: true}, true},
		{fmt.Errorf("target: %w", &metadata.ErrUnsignedMetadata{Msg: "Verifying models failed, not enough signatures"}), true},
		{&metadata.ErrBadVersionNumber{Msg: "new snapshot version 3 must be >= 4"}, true},
		{errors.New("accuracy 0.91 < 0.95"), false},
		{context.Canceled, false},
		{nil, false},
	} {
		if got := Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%v) = %v; want %v", tc.err, got, tc.want)
		}
	}
}

// TestNoSpaceIsRetried fills the file system of the model slots: the install fails
// cleanly for lack of space and is reported as an infrastructure failure, the version
// is not refused, and once space is freed the same running agent installs it at its
// next attempt (issue 14: only a restart used to).
func TestNoSpaceIsRetried(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatal("mounting a tmpfs needs root and EDGEWARD_REQUIRE_DEPS=1")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 4<<20)
	state := t.TempDir()
	slots := filepath.Join(state, "slots", "model")
	if err := os.MkdirAll(slots, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", slots).CombinedOutput(); err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("mount tmpfs: %v: %s (EDGEWARD_REQUIRE_DEPS=1)", err, out)
		}
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", slots).Run() })
	filler := filepath.Join(slots, "filler")
	if err := os.WriteFile(filler, make([]byte, 6<<20), 0o600); err != nil {
		t.Fatal(err)
	}

	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	c := newClient(t, r, filepath.Join(state, "tuf"))
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	o, err := OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: p1}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
		Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil {
			return ""
		}
		return s.Current.Version
	}

	err = a.Step(ctx)
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("Step on a full disk = %v; want ErrDiskFull", err)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != rollback.Failed || current() != "" {
		t.Fatalf("slot after the full disk = %s, committed %q; want failed, nothing committed", s.Phase, current())
	}
	// Within the backoff the agent does not try again, and is still stuck.
	now = now.Add(30 * time.Second)
	if err := a.Step(ctx); err != nil {
		t.Errorf("Step within the backoff = %v; want no attempt", err)
	}
	if e := a.LastError(); e == nil || e.Kind != wire.ErrorNoSpace || !strings.Contains(e.Message, "no space left") {
		t.Errorf("LastError() on a full disk = %+v; want no_space", e)
	}
	now = now.Add(31 * time.Second)
	if err := a.Step(ctx); !errors.Is(err, ErrDiskFull) || !strings.Contains(err.Error(), "attempt 2") {
		t.Errorf("Step after the backoff with the disk still full = %v; want attempt 2 failing", err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute) // the backoff doubled to 2m
	if err := a.Step(ctx); err != nil {
		t.Errorf("Step within the doubled backoff = %v; want no attempt", err)
	}
	now = now.Add(time.Minute)
	if err := a.Step(ctx); err != nil {
		t.Fatalf("Step after freeing space = %v", err)
	}
	if got := current(); got != "1.0.0" {
		t.Fatalf("committed %q after freeing space; want 1.0.0, with no restart", got)
	}
	if e := a.LastError(); e != nil {
		t.Errorf("LastError() after the update = %+v; want nil", e)
	}

	msgs, _ := o.Due(ctx, now, 10)
	var outcomes []string
	for _, msg := range msgs {
		var rep wire.Report
		json.Unmarshal(msg.Body, &rep)
		outcomes = append(outcomes, string(rep.Outcome))
		if rep.Outcome == wire.OutcomeInfrastructure && (!strings.Contains(rep.Cause, "no space left") || !strings.Contains(rep.Cause, "retrying in")) {
			t.Errorf("infrastructure report cause = %q; want the lack of space and the retry", rep.Cause)
		}
	}
	if got, want := strings.Join(outcomes, ", "), "infrastructure, infrastructure, committed"; got != want {
		t.Errorf("reports = %s; want %s", got, want)
	}
}

// TestWrongBytesAreRetried (issue 12): a mirror that serves a target whose bytes do
// not match their signed hash, or a delegated role's metadata whose signature does not
// verify, does not burn the version on the device. The install is refused (nothing is
// staged or committed), reported as an infrastructure failure naming the cause, held
// back for its backoff and tried again; once the good bytes are served the same running
// agent installs the version.
func TestWrongBytesAreRetried(t *testing.T) {
	get := func(t *testing.T, url string) []byte {
		t.Helper()
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %d, %v", url, resp.StatusCode, err)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		cause  string // in the infrastructure report and the step's error
		tamper func(t *testing.T, r *tuftest.Repo, p string, data []byte) (restore func())
	}{
		{"target", "hash mismatch", func(t *testing.T, r *tuftest.Repo, p string, data []byte) func() {
			// Both consistent-snapshot names (sha256 and sha512) of the model.
			var urls []string
			for _, h := range []hash.Hash{sha256.New(), sha512.New()} {
				h.Write(data)
				dir, base := path.Split(p)
				urls = append(urls, "/targets/"+dir+hex.EncodeToString(h.Sum(nil))+"."+base)
			}
			bad := slices.Clone(data)
			bad[len(bad)/2] ^= 0x01
			for _, u := range urls {
				r.Put(u, bad)
			}
			return func() {
				for _, u := range urls {
					r.Put(u, data)
				}
			}
		}},
		{"metadata", "Verifying models failed", func(t *testing.T, r *tuftest.Repo, _ string, _ []byte) func() {
			u := "/metadata/3.models.json" // Publish made version 2 of the new role, AddModel 3
			good := get(t, r.MetadataURL()+"/3.models.json")
			bad := slices.Clone(good)
			i := bytes.Index(bad, []byte(`"sig":"`)) + len(`"sig":"`)
			if i < len(`"sig":"`) {
				t.Fatalf("no signature in %s", good)
			}
			bad[i] = map[bool]byte{true: '1', false: '0'}[bad[i] == '0']
			r.Put(u, bad)
			return func() { r.Put(u, good) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r := tuftest.New(t)
			r.Delegate("models", "models/*/*", "probes/*/*")
			r.Publish()
			p, data := r.AddModel("iris", "1.0.0", 0)
			restore := tc.tamper(t, r, p, data)
			c, m, o := deviceState(t, r)
			now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
			d := &director{want: map[artifact.Kind]string{artifact.KindModel: p}}
			a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
				Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			current := func() string {
				s, _ := m.State(ctx, artifact.KindModel)
				if s.Current == nil {
					return ""
				}
				return s.Current.Version
			}
			for attempt := 1; attempt <= 2; attempt++ {
				err := a.Step(ctx)
				if err == nil || !strings.Contains(err.Error(), tc.cause) || !strings.Contains(err.Error(), fmt.Sprintf("attempt %d", attempt)) {
					t.Fatalf("Step %d with the tampered %s = %v; want attempt %d failing with %q", attempt, tc.name, err, attempt, tc.cause)
				}
				if s, _ := m.State(ctx, artifact.KindModel); current() != "" || (s.Phase != rollback.Idle && s.Phase != rollback.Failed) {
					t.Fatalf("slot after the tampered %s = %s, committed %q; want nothing staged or committed", tc.name, s.Phase, current())
				}
				if e := a.LastError(); e == nil || e.Kind != wire.ErrorDownload || !strings.Contains(e.Message, tc.cause) {
					t.Errorf("LastError() = %+v; want a download error naming %q", e, tc.cause)
				}
				// Within the backoff the agent does not try again.
				now = now.Add(20 * time.Second)
				if err := a.Step(ctx); err != nil {
					t.Errorf("Step within the backoff = %v; want no attempt", err)
				}
				now = now.Add(2 * time.Minute)
			}
			restore()
			if err := a.Step(ctx); err != nil || current() != "1.0.0" {
				t.Fatalf("Step once the good bytes are served = %v, committed %q; want 1.0.0 with no restart", err, current())
			}
			msgs, _ := o.Due(ctx, now, 10)
			var outcomes []string
			for _, msg := range msgs {
				var rep wire.Report
				json.Unmarshal(msg.Body, &rep)
				outcomes = append(outcomes, string(rep.Outcome))
				if rep.Outcome == wire.OutcomeInfrastructure && (!strings.Contains(rep.Cause, tc.cause) || rep.Name != "iris" || rep.Version != "1.0.0") {
					t.Errorf("infrastructure report = %+v; want iris 1.0.0 naming %q", rep, tc.cause)
				}
			}
			if got, want := strings.Join(outcomes, ", "), "infrastructure, infrastructure, committed"; got != want {
				t.Errorf("reports = %s; want %s", got, want)
			}
		})
	}
}

// downRuntimeJudge fails trials as a judge does whose runtime is down (a refused
// connection) while down is set, and passes them otherwise.
type downRuntimeJudge struct {
	down   bool
	trials int
}

func (j *downRuntimeJudge) Judge(_ context.Context, _ Trial) Verdict {
	j.trials++
	if j.down {
		err := fmt.Errorf("runtime POST /v2/repository/models/iris/load: %w", &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)})
		return Verdict{Reason: "trial: " + err.Error(), Err: err}
	}
	return Verdict{Pass: true}
}

// TestRuntimeDownDuringTrialIsRetried: a trial that fails because the runtime refused
// the connection rolls back as infrastructure, not probe_failed; the version is tried
// again once the runtime is back, and only MaxTrialRetries times if it never is.
func TestRuntimeDownDuringTrialIsRetried(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: p1}}
	j := &downRuntimeJudge{down: true}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: j,
		Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	current := func() string {
		s, _ := m.State(ctx, artifact.KindModel)
		if s.Current == nil {
			return ""
		}
		return s.Current.Version
	}
	if err := a.Step(ctx); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("Step with the runtime down = %v; want ECONNREFUSED", err)
	}
	if e := a.LastError(); e == nil || e.Kind != wire.ErrorRuntimeDown || !e.At.Equal(now) {
		t.Errorf("LastError() with the runtime down = %+v; want runtime_down at %v", e, now)
	}
	j.down = false
	now = now.Add(time.Minute)
	if err := a.Step(ctx); err != nil || current() != "1.0.0" {
		t.Fatalf("Step with the runtime back = %v, committed %q; want 1.0.0", err, current())
	}

	// A runtime that never comes back: bounded retries, then the version is refused.
	j.down, j.trials = true, 0
	d.want[artifact.KindModel] = p2
	for range MaxTrialRetries + 3 {
		a.Step(ctx)
		now = now.Add(2 * time.Hour)
	}
	if j.trials != MaxTrialRetries+1 {
		t.Errorf("%d trials with the runtime down for good; want %d", j.trials, MaxTrialRetries+1)
	}
	outcomes := dueOutcomes(ctx, o, now, 20)
	want := []string{"1.0.0 infrastructure", "1.0.0 committed"}
	for n := 1; n <= MaxTrialRetries; n++ {
		if n&(n-1) == 0 { // the same cause is reported at attempts 1, 2, 4, …
			want = append(want, "2.0.0 infrastructure")
		}
	}
	want = append(want, "2.0.0 probe_failed")
	slices.Sort(outcomes)
	slices.Sort(want)
	if got := strings.Join(outcomes, ", "); got != strings.Join(want, ", ") {
		t.Errorf("reports = %s\nwant %s", got, strings.Join(want, ", "))
	}
}

func TestClassifyError(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want wire.UpdateErrorKind
	}{
		{fmt.Errorf("tuf refresh: %w", &metadata.ErrExpiredMetadata{Msg: "timestamp.json is expired"}), wire.ErrorExpiredMetadata},
		{&DownloadError{Err: fmt.Errorf("%w: 4 MiB needed", ErrDiskFull), perm: true}, wire.ErrorNoSpace},
		{fmt.Errorf("trial: %w: %w", ErrRuntimeDown, syscall.ECONNREFUSED), wire.ErrorRuntimeDown},
		{&DownloadError{URL: "u", Status: 503, Err: errors.New("unavailable")}, wire.ErrorDownload},
		{errors.New("refusing model version 0.5.0"), wire.ErrorOther},
	} {
		if got := ClassifyError(tc.err); got != tc.want {
			t.Errorf("ClassifyError(%v) = %s; want %s", tc.err, got, tc.want)
		}
	}
}

// TestStuckTargetIsNotReportedAtEveryRetry: a target that stays out of reach (listed in
// no metadata the device can fetch) is retried with backoff for as long as it is
// desired; its infrastructure reports come at attempts 1, 2, 4, 8, 16 (and whenever the
// cause changes), not at every hourly attempt (about 24 a day per device, for good).
func TestStuckTargetIsNotReportedAtEveryRetry(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.AddModel("iris", "1.0.0", 0)
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{want: map[artifact.Kind]string{artifact.KindModel: "models/iris/9.9.9/model.onnx"}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{},
		Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 20 {
		if err := a.Step(ctx); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("attempt %d", i+1)) {
			t.Fatalf("step %d = %v; want attempt %d failing", i, err, i+1)
		}
		now = now.Add(2 * time.Hour)
	}
	msgs, _ := o.Due(ctx, now, 100)
	var attempts []int
	for _, msg := range msgs {
		var rep wire.Report
		json.Unmarshal(msg.Body, &rep)
		var n int
		if rep.Outcome != wire.OutcomeInfrastructure {
			t.Fatalf("report %+v; want infrastructure", rep)
		}
		fmt.Sscanf(rep.Cause[strings.Index(rep.Cause, "(attempt "):], "(attempt %d", &n)
		attempts = append(attempts, n)
	}
	slices.Sort(attempts)
	if got := fmt.Sprint(attempts); got != "[1 2 4 8 16]" {
		t.Errorf("infrastructure reports at attempts %s; want 1 2 4 8 16", got)
	}
}

// dyingRuntimeJudge fails every trial as a judge does whose runtime died during it.
type dyingRuntimeJudge struct{ trials int }

func (j *dyingRuntimeJudge) Judge(_ context.Context, _ Trial) Verdict {
	j.trials++
	err := fmt.Errorf("%w: runtime POST /v2/repository/models/iris/load: %w", ErrDiedInTrial, io.ErrUnexpectedEOF)
	return Verdict{Reason: "trial: " + err.Error(), Err: err}
}

// TestRuntimeDeathDuringTrialIsRetriedOnce: a version during whose trial the runtime
// died (a model too large for the device's memory: the OOM killer) is tried once more,
// then refused as the version's fault: each death took serving down with it (six of
// them, 72 s without inference, before: found from outside, 2 Dec).
func TestRuntimeDeathDuringTrialIsRetriedOnce(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	c, m, o := deviceState(t, r)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	j := &dyingRuntimeJudge{}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{want: map[artifact.Kind]string{artifact.KindModel: p1}}, Judge: j,
		Outbox: o, Interval: time.Minute, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	a.Step(ctx)
	if e := a.LastError(); e == nil || e.Kind != wire.ErrorRuntimeDown {
		t.Errorf("LastError() after a death in the trial = %+v; want runtime_down", e)
	}
	for range 4 {
		now = now.Add(2 * time.Hour)
		a.Step(ctx)
	}
	if j.trials != MaxTrialDeaths+1 {
		t.Errorf("%d trials with the runtime dying in each; want %d", j.trials, MaxTrialDeaths+1)
	}
	outcomes := dueOutcomes(ctx, o, now, 20)
	if got, want := strings.Join(outcomes, ", "), "1.0.0 infrastructure, 1.0.0 probe_failed"; got != want {
		t.Errorf("reports = %s; want %s", got, want)
	}
}

func TestCauseShape(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		same bool
	}{
		{"dial tcp 10.0.0.2:41234: connection refused", "dial tcp 10.0.0.2:51877: connection refused", true},
		{"body shorter than the target's TUF length 4228098 at offset 1048576", "body shorter than the target's TUF length 4228098 at offset 2097152", true},
		{"GET https://m/targets/x: HTTP 404", "GET https://m/targets/x: HTTP 503", false},
		{"models/iris/1.0.0.onnx: no space", "models/iris/1.1.0.onnx: no space", false},
	} {
		if got := causeShape(tc.a) == causeShape(tc.b); got != tc.same {
			t.Errorf("causeShape(%q) == causeShape(%q) is %v; want %v", tc.a, tc.b, got, tc.same)
		}
	}
}

// dueOutcomes lists the reports due in the outbox at at (at most n) as "VERSION OUTCOME".
func dueOutcomes(ctx context.Context, o *Outbox, at time.Time, n int) []string {
	msgs, _ := o.Due(ctx, at, n)
	var out []string
	for _, msg := range msgs {
		var rep wire.Report
		json.Unmarshal(msg.Body, &rep)
		out = append(out, rep.Version+" "+string(rep.Outcome))
	}
	return out
}

// dyingAgentJudge is the trial of a version that takes the device down: the agent's
// goroutine ends in the middle of the trial, with nothing after it run, as a kill or a
// reset would leave it.
type dyingAgentJudge struct{ trials int }

func (j *dyingAgentJudge) Judge(context.Context, Trial) Verdict {
	j.trials++
	runtime.Goexit()
	return Verdict{}
}

// TestTrialInterruptedByRestartsIsRefused: a version during whose trial the device
// restarts every time (a kernel panic, a watchdog reset, the OOM killer taking the
// agent) is tried rollback.MaxTrialStarts times, then refused and reported. Before, the
// trial was resumed at every boot for good, and the rollout never heard of it.
func TestTrialInterruptedByRestartsIsRefused(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	j := &dyingAgentJudge{}
	boot := func() (*rollback.Manager, *Outbox) {
		c := newClient(t, r, filepath.Join(state, "tuf"))
		m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher(), Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		o, err := OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
		if err != nil {
			t.Fatal(err)
		}
		a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{want: map[artifact.Kind]string{artifact.KindModel: p1}},
			Judge: j, Outbox: o, Interval: time.Minute, TrialTimeout: time.Hour, Now: clock})
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			m.Recover(ctx)
			a.Step(ctx) // ends early through the judge's Goexit in a trial
		}()
		<-done
		return m, o
	}
	var m *rollback.Manager
	var o *Outbox
	for range 2 * rollback.MaxTrialStarts {
		if m != nil {
			m.Close()
			o.Close()
		}
		m, o = boot()
		now = now.Add(5 * time.Minute)
	}
	if j.trials != rollback.MaxTrialStarts {
		t.Errorf("%d trials, each ended by a restart; want %d", j.trials, rollback.MaxTrialStarts)
	}
	s, err := m.State(ctx, artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	if s.Phase != rollback.RolledBack || s.Abandoned == nil || s.Abandoned.Path != p1 || !strings.Contains(s.Reason, "interrupted by a restart") {
		t.Errorf("slot state = %s; want rolled back, %s abandoned, interrupted by restarts", s, p1)
	}
	if got, want := strings.Join(dueOutcomes(ctx, o, now, 20), ", "), "1.0.0 probe_failed"; got != want {
		t.Errorf("reports = %s; want %s (once, however many restarts since)", got, want)
	}
	refused, err := o.Refused(ctx)
	if err != nil || refused[string(artifact.KindModel)] != p1 {
		t.Errorf("refused = %v, %v; want %s", refused, err, p1)
	}
}
