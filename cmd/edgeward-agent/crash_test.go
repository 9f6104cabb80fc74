package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/rollback/crashpoint"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// requireDep skips the test when something external is missing, unless
// EDGEWARD_REQUIRE_DEPS=1 makes that a failure.
func requireDep(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
		t.Fatalf("%s: %v", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

// buildAgent builds this command with crash points enabled.
func buildAgent(t *testing.T) string {
	t.Helper()
	gobin, err := exec.LookPath("go")
	requireDep(t, "the go tool builds the agent with -tags crashpoints", err)
	bin := filepath.Join(t.TempDir(), "edgeward-agent")
	out, err := exec.Command(gobin, "build", "-tags", "crashpoints", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build -tags crashpoints: %v\n%s", err, out)
	}
	return bin
}

type agentRunner struct {
	t     *testing.T
	bin   string
	state string
}

// run runs one agent command; it reports whether the process was killed by a crash point.
func (a agentRunner) run(crash string, args ...string) (code int, killed bool) {
	a.t.Helper()
	code, killed, _ = a.runOut(crash, args...)
	return code, killed
}

// runOut is run that also returns the command's output.
func (a agentRunner) runOut(crash string, args ...string) (code int, killed bool, output string) {
	a.t.Helper()
	cmd := exec.Command(a.bin, append(args[:1:1], append([]string{"--state-dir", a.state}, args[1:]...)...)...)
	cmd.Env = append(os.Environ(), crashpoint.Env+"="+crash)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return -1, true, out.String()
		}
		code = ee.ExitCode()
	} else if err != nil {
		a.t.Fatalf("run %v: %v", args, err)
	}
	if code != 0 {
		a.t.Logf("edgeward-agent %v: exit %d\n%s", args, code, out.String())
	}
	return code, false, out.String()
}

// inspect opens the state in-process, as a restarted agent would find it, without recovering.
func inspect(t *testing.T, state string) (rollback.State, uint64, *rollback.Manager) {
	t.Helper()
	m, err := rollback.Open(context.Background(), rollback.Config{Dir: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	s, err := m.State(context.Background(), artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	f, err := m.Floor(context.Background(), artifact.KindModel)
	if err != nil {
		t.Fatal(err)
	}
	return s, f, m
}

// TestCrashPoints kills the agent at every named crash point during an upgrade from 1.0.0
// to 2.0.0 and checks, after the kill and after the restart, that the active slot holds a
// complete committed version, that the floor never dropped and that finishing the
// transaction reaches the intended outcome.
func TestCrashPoints(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and runs it a hundred times")
	}
	bin := buildAgent(t)
	ctx := context.Background()
	for _, point := range crashpoint.DeltaNames() {
		t.Run(point+"/delta", func(t *testing.T) { deltaCrash(t, bin, point) })
	}
	for _, point := range crashpoint.Names() {
		for _, outcome := range []string{"pass", "fail"} {
			if point == "after-rollback" && outcome == "pass" || (strings.Contains(point, "commit") || point == "after-floor-raise") && outcome == "fail" {
				continue
			}
			t.Run(point+"/"+outcome, func(t *testing.T) {
				r := tuftest.New(t)
				p1, _ := r.AddModel("iris", "1.0.0", 256<<10)
				p2, _ := r.AddModel("iris", "2.0.0", 1<<20)
				state := t.TempDir()
				rootFile := filepath.Join(state, "..", "root.json")
				os.WriteFile(rootFile, r.RootBytes(1), 0o600)
				a := agentRunner{t: t, bin: bin, state: state}
				if code, _ := a.run("", "enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
					t.Fatal("enroll failed")
				}
				for _, step := range [][]string{{"install", "--target", p1}, {"trial"}, {"confirm", "--pass"}} {
					if code, _ := a.run("", step...); code != 0 {
						t.Fatalf("%v failed", step)
					}
				}
				_, floor1, m := inspect(t, state)
				m.Close()

				confirm := []string{"confirm", "--pass"}
				if outcome == "fail" {
					confirm = []string{"confirm", "--fail", "probe accuracy below gate"}
				}
				steps := [][]string{{"install", "--target", p2, "--checkpoint-bytes", "65536"}, {"trial"}, confirm}
				killed := false
				for _, step := range steps {
					code, k := a.run(point, step...)
					if k {
						killed = true
						break
					}
					if code != 0 && step[0] != "confirm" {
						t.Fatalf("%v: exit %d", step, code)
					}
				}
				if !killed {
					t.Fatalf("crash point %s was never reached", point)
				}

				// As found after the kill, before any recovery.
				s, floor, m := inspect(t, state)
				if s.Current == nil {
					t.Fatalf("after the kill at %s: no committed version: %v", point, s)
				}
				if floor < floor1 && floor < s.Current.Floor {
					t.Errorf("after the kill at %s: floor dropped", point)
				}
				if err := m.CheckActive(ctx); err != nil {
					t.Errorf("after the kill at %s, before recovery: %v", point, err)
				}
				if point == "mid-download" {
					// The checkpoint is durable: the restart resumes rather than starts over.
					part := m.Payload(artifact.KindModel, s.Inactive()) + ".part.state"
					var cp struct{ Offset int64 }
					b, err := os.ReadFile(part)
					if err == nil {
						err = json.Unmarshal(b, &cp)
					}
					if err != nil || cp.Offset < 65536 || cp.Offset >= 1<<20 {
						t.Errorf("after the kill at mid-download: checkpoint %s offset %d, %v; want a partial offset", part, cp.Offset, err)
					}
				}
				m.Close()

				// Restart, then finish the transaction.
				code, _, out := a.runOut("", "recover")
				if code != 0 {
					t.Fatalf("recover after the kill at %s failed", point)
				}
				// A slot written by the killed process is hashed again by the next one: at
				// once when its download or verification was cut short (the fetcher finds a
				// complete file and hashes it, or the slot is read), and before its trial
				// when it was staged.
				// After the download, either the fetcher hashes the complete file it finds
				// (the plain slot fetcher) or the slot reads it (a fetcher that does not
				// prove, such as the delta-aware one): both hash it again.
				rehash := map[string][]string{
					"mid-download":   {`how="read and hashed"`},
					"after-download": {`how="hashed by the fetcher in this process"`, `how="read and hashed"`},
					"after-verify":   {`how="read and hashed"`},
				}[point]
				if len(rehash) > 0 && !slices.ContainsFunc(rehash, func(h string) bool { return strings.Contains(out, h) }) {
					t.Errorf("recover after the kill at %s did not hash the slot again (want one of %s):\n%s", point, rehash, out)
				}
				s, _, m = inspect(t, state)
				if err := m.CheckInvariant(ctx); err != nil {
					t.Fatalf("after recovery from %s: %v", point, err)
				}
				m.Close()
				rest := map[rollback.Phase][][]string{
					rollback.Staged: {{"trial"}, confirm},
					rollback.Trial:  {confirm},
				}[s.Phase]
				for _, step := range rest {
					_, _, out := a.runOut("", step...)
					if step[0] == "trial" && !strings.Contains(out, "slot verified before its trial") {
						t.Errorf("the trial after the kill at %s started without hashing the slot an earlier process staged:\n%s", point, out)
					}
				}
				s, floor, m = inspect(t, state)
				if err := m.CheckInvariant(ctx); err != nil {
					t.Errorf("after finishing: %v", err)
				}
				want, wantPhase := "2.0.0", rollback.Committed
				if outcome == "fail" {
					want, wantPhase = "1.0.0", rollback.RolledBack
				}
				if s.Phase != wantPhase || s.Current.Version != want {
					t.Errorf("after the kill at %s and a restart: %v; want %s with %s active", point, s, wantPhase, want)
				}
				if floor < floor1 {
					t.Errorf("floor dropped from %d to %d", floor1, floor)
				}
			})
		}
	}
}

// deltaCrash kills the agent at a crash point of an upgrade built from a delta (1.0.0 →
// 2.0.0, its head retrained, the delta listed) and checks that the committed slot is
// intact after the kill, that the restart finds the mark of an apply that did not
// finish (the apply runs while the delta downloads, so both points are inside it) and
// installs the full target, and that 2.0.0 commits with no delta file left behind.
func deltaCrash(t *testing.T, bin, point string) {
	ctx := context.Background()
	r := tuftest.New(t)
	mlp := modelgen.Random(1, 64, 512, 512, 10)
	v1, v2 := mlp.ONNX("m", nil, nil), mlp.RetrainLast(2).ONNX("m", nil, nil)
	add := func(version string, b []byte) string {
		p := artifact.TargetPath(artifact.KindModel, "iris", version, ".onnx")
		r.AddTarget(p, b, artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: version, Format: "onnx"})
		return p
	}
	p1, p2 := add("1.0.0", v1), add("2.0.0", v2)
	var d bytes.Buffer
	if _, err := delta.Diff(ctx, bytes.NewReader(v1), bytes.NewReader(v2), &d); err != nil {
		t.Fatal(err)
	}
	dp := artifact.DeltaPath(p2, hexSum(v1))
	r.AddTarget(dp, d.Bytes(), artifact.DeltaCustom{Delta: &artifact.Delta{Method: delta.MethodCDC,
		Base:   artifact.DeltaRef{Path: p1, SHA256: hexSum(v1), Length: int64(len(v1))},
		Result: artifact.DeltaRef{Path: p2, SHA256: hexSum(v2), Length: int64(len(v2))}}})
	r.Publish()
	fullURL, deltaURL := snapshotURL(p2, v2), snapshotURL(dp, d.Bytes())

	state := t.TempDir()
	rootFile := filepath.Join(state, "..", "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	a := agentRunner{t: t, bin: bin, state: state}
	if code, _ := a.run("", "enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
		t.Fatal("enroll failed")
	}
	for _, step := range [][]string{{"install", "--target", p1}, {"trial"}, {"confirm", "--pass"}} {
		if code, _ := a.run("", step...); code != 0 {
			t.Fatalf("%v failed", step)
		}
	}
	if _, killed := a.run(point, "install", "--target", p2); !killed {
		t.Fatalf("crash point %s was never reached", point)
	}

	// As found after the kill: 1.0.0 active and intact.
	s, _, m := inspect(t, state)
	if s.Current == nil || s.Current.Version != "1.0.0" {
		t.Fatalf("after the kill at %s: committed %v; want 1.0.0", point, s.Current)
	}
	if err := m.CheckActive(ctx); err != nil {
		t.Errorf("after the kill at %s: %v", point, err)
	}
	if got, err := os.ReadFile(m.Payload(artifact.KindModel, s.Active)); err != nil || !bytes.Equal(got, v1) {
		t.Errorf("after the kill at %s: the active slot does not hold 1.0.0 (%v)", point, err)
	}
	payload := m.Payload(artifact.KindModel, s.Inactive())
	_, markErr := os.Stat(payload + ".delta.applying")
	if markErr != nil {
		t.Errorf("after the kill at %s: no mark of the apply: %v", point, markErr)
	}
	m.Close()
	if r.Hits(fullURL) != 0 || r.Hits(deltaURL) != 1 {
		t.Fatalf("before the kill at %s: full target requested %d times, delta %d; want the delta once", point, r.Hits(fullURL), r.Hits(deltaURL))
	}

	// The restart finishes the download from the full target.
	code, _, out := a.runOut("", "recover")
	if code != 0 {
		t.Fatalf("recover after the kill at %s failed:\n%s", point, out)
	}
	if r.Hits(fullURL) != 1 || r.Hits(deltaURL) != 1 {
		t.Errorf("recover after the kill at %s: full target requested %d times, delta %d; want 1 and 1 (the delta not again)\n%s",
			point, r.Hits(fullURL), r.Hits(deltaURL), out)
	}
	if !strings.Contains(out, "did not finish") {
		t.Errorf("recover after the kill at %s does not say why it fell back to the full target:\n%s", point, out)
	}
	for _, step := range [][]string{{"trial"}, {"confirm", "--pass"}} {
		if code, _, out := a.runOut("", step...); code != 0 {
			t.Fatalf("%v after the kill at %s: exit %d\n%s", step, point, code, out)
		}
	}
	s, _, m = inspect(t, state)
	if err := m.CheckInvariant(ctx); err != nil {
		t.Errorf("after finishing: %v", err)
	}
	if s.Phase != rollback.Committed || s.Current == nil || s.Current.Version != "2.0.0" {
		t.Fatalf("after the kill at %s and a restart: %v; want 2.0.0 committed", point, s)
	}
	if got, err := os.ReadFile(m.Payload(artifact.KindModel, s.Active)); err != nil || !bytes.Equal(got, v2) {
		t.Errorf("after the kill at %s: the committed slot does not hold 2.0.0 (%v)", point, err)
	}
	if left, _ := filepath.Glob(payload + ".delta*"); len(left) > 0 {
		t.Errorf("after the kill at %s: delta files left behind: %v", point, left)
	}
}

func hexSum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }

// snapshotURL is the consistent-snapshot URL path of a target's content.
func snapshotURL(path string, b []byte) string {
	dir, base := filepath.Split(path)
	return "/targets/" + dir + hexSum(b) + "." + base
}

// TestDeltaInstallMemory measures the peak RSS of `edgeward-agent install` building a
// 23 MB model's retrained head from its delta (applied while it downloads) against the
// same install of the full target (--deltas=false), each in a process of its own: the
// delta install must stay under the 64 MiB bound of a full install, and within 8 MiB of
// the full install's own peak (holding the base or the result would be 22 MiB more).
func TestDeltaInstallMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and installs a 23 MB model four times")
	}
	bin := buildAgent(t)
	ctx := context.Background()
	r := tuftest.New(t)
	mlp := modelgen.Random(1, 784, 2048, 2048, 10)
	v1, v2 := mlp.ONNX("m", nil, nil), mlp.RetrainLast(2).ONNX("m", nil, nil)
	add := func(version string, b []byte) string {
		p := artifact.TargetPath(artifact.KindModel, "big", version, ".onnx")
		r.AddTarget(p, b, artifact.Meta{Kind: artifact.KindModel, Name: "big", Version: version, Format: "onnx"})
		return p
	}
	p1, p2 := add("1.0.0", v1), add("2.0.0", v2)
	var d bytes.Buffer
	if _, err := delta.Diff(ctx, bytes.NewReader(v1), bytes.NewReader(v2), &d); err != nil {
		t.Fatal(err)
	}
	r.AddTarget(artifact.DeltaPath(p2, hexSum(v1)), d.Bytes(), artifact.DeltaCustom{Delta: &artifact.Delta{Method: delta.MethodCDC,
		Base:   artifact.DeltaRef{Path: p1, SHA256: hexSum(v1), Length: int64(len(v1))},
		Result: artifact.DeltaRef{Path: p2, SHA256: hexSum(v2), Length: int64(len(v2))}}})
	r.Publish()
	fullURL := snapshotURL(p2, v2)
	rss := map[bool]float64{}
	for _, deltas := range []bool{true, false} {
		state := t.TempDir()
		rootFile := filepath.Join(state, "..", "root.json")
		os.WriteFile(rootFile, r.RootBytes(1), 0o600)
		a := agentRunner{t: t, bin: bin, state: state}
		if code, _ := a.run("", "enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
			t.Fatal("enroll failed")
		}
		for _, step := range [][]string{{"install", "--target", p1}, {"trial"}, {"confirm", "--pass"}} {
			if code, _ := a.run("", step...); code != 0 {
				t.Fatalf("%v failed", step)
			}
		}
		full := r.Hits(fullURL)
		peak, out, err := peakRSS(bin, "install", "--state-dir", state, "--target", p2, fmt.Sprintf("--deltas=%v", deltas))
		if err != nil {
			t.Fatalf("install --deltas=%v: %v\n%s", deltas, err, out)
		}
		rss[deltas] = peak
		if fetched := r.Hits(fullURL) - full; (fetched == 0) != deltas {
			t.Fatalf("install --deltas=%v requested the full target %d times", deltas, fetched)
		}
		s, _, m := inspect(t, state)
		if got, err := os.ReadFile(m.Payload(artifact.KindModel, s.Inactive())); err != nil || !bytes.Equal(got, v2) {
			t.Fatalf("install --deltas=%v: the slot does not hold 2.0.0 (%v)", deltas, err)
		}
		m.Close()
	}
	t.Logf("install of a %d-byte target: from a %d-byte delta peak RSS %.1f MiB; full target %.1f MiB", len(v2), d.Len(), rss[true], rss[false])
	if rss[true] >= 64 || rss[true] > rss[false]+8 {
		t.Errorf("install from a delta: peak RSS %.1f MiB; want under 64 MiB and within 8 MiB of the full install's %.1f MiB (less than the %d-byte base or result)", rss[true], rss[false], len(v2))
	}
}

// peakRSS runs a command and returns its peak resident memory in MiB: VmHWM of
// /proc/PID/status, polled every 2 ms until it exits (as bench/driver does; the
// rusage's maxrss of a child would count this test's own memory, shared until exec).
func peakRSS(bin string, args ...string) (float64, string, error) {
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return 0, "", err
	}
	status := fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)
	var peak int64
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(status); err == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
					var kb int64
					fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), &kb)
					peak = max(peak, kb)
				}
			}
		}
		select {
		case err := <-done:
			return float64(peak) / 1024, out.String(), err
		case <-tick.C:
		}
	}
}
