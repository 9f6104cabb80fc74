// Package e2e tests Edgeward end to end over real processes: the binaries built from
// this tree, `edgeward server`, swtpm TPMs with EK certificates from one manufacturer CA,
// `edgeward-agent device` processes and their edgeward-runtime (ONNX Runtime). The
// orchestration is the lab (lab/), shared with `edgeward demo` (lab/demo).
//
// A missing swtpm or ONNX Runtime skips the tests, unless EDGEWARD_REQUIRE_DEPS=1 makes
// that a failure.
package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

var (
	bins       lab.Bins
	crashAgent string // edgeward-agent built with -tags crashpoints
	buildErr   error
)

func TestMain(m *testing.M) {
	code := func() int {
		dir, err := os.MkdirTemp("", "edgeward-e2e-bin-")
		if err != nil {
			buildErr = err
			return m.Run()
		}
		defer os.RemoveAll(dir)
		if !testingShort() {
			buildErr = build(dir)
		}
		return m.Run()
	}()
	os.Exit(code)
}

func testingShort() bool {
	for _, a := range os.Args {
		if a == "-test.short" || a == "-test.short=true" {
			return true
		}
	}
	return false
}

// build compiles the three binaries, and an agent with crash points, into dir.
func build(dir string) error {
	gobin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("the go tool builds the binaries: %w", err)
	}
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	run := func(args ...string) error {
		cmd := exec.Command(gobin, args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := run("build", "-o", dir+"/", "./cmd/edgeward", "./cmd/edgeward-agent", "./cmd/edgeward-runtime"); err != nil {
		return err
	}
	crash := filepath.Join(dir, "crash")
	if err := run("build", "-tags", "crashpoints", "-o", crash+"/", "./cmd/edgeward-agent"); err != nil {
		return err
	}
	bins = lab.Bins{Edgeward: filepath.Join(dir, "edgeward"), Agent: filepath.Join(dir, "edgeward-agent"), Runtime: filepath.Join(dir, "edgeward-runtime")}
	crashAgent = filepath.Join(crash, "edgeward-agent")
	return nil
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// need fails the test when the binaries could not be built, and skips it (or fails it
// with EDGEWARD_REQUIRE_DEPS=1) when swtpm or ONNX Runtime is missing.
func need(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: real processes; not in -short")
	}
	if os.Getenv("ONNXRUNTIME_LIB") == "" {
		if root, err := moduleRoot(); err == nil {
			lib := filepath.Join(root, ".deps", "onnxruntime", "lib", "libonnxruntime.so.1")
			if _, err := os.Stat(lib); err == nil {
				os.Setenv("ONNXRUNTIME_LIB", lib)
			}
		}
	}
	if buildErr != nil {
		// The tree does not build: a failure, never a missing dependency.
		t.Fatalf("e2e: building the binaries: %v", buildErr)
	}
	err := lab.CheckDeps()
	if err == nil {
		return
	}
	if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
		t.Fatalf("e2e dependencies: %v", err)
	}
	t.Skipf("e2e dependencies missing: %v", err)
}

const wait = 90 * time.Second

// fleetLab is a lab with a repository, a server and enrolled devices.
type fleetLab struct {
	t    *testing.T
	ctx  context.Context
	lab  *lab.Lab
	repo *lab.Repo
	srv  *lab.Server
	devs []*lab.Device
}

const attestationPolicy = "version: 1\nattestation: {required: true, max_age: 5m}\n"

// newFleet starts a server and n devices (not their agents: see startAgents), with the
// binaries built by TestMain. Everything is stopped at cleanup; process logs are
// printed when the test failed.
func newFleet(t *testing.T, n int) *fleetLab {
	t.Helper()
	need(t)
	ctx := context.Background()
	lb, err := lab.New(t.TempDir(), bins)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleetLab{t: t, ctx: ctx, lab: lb}
	t.Cleanup(func() {
		lb.Close()
		if t.Failed() {
			entries, _ := os.ReadDir(filepath.Join(lb.Dir, "logs"))
			for _, e := range entries {
				t.Logf("--- %s (tail)\n%s", e.Name(), lab.Tail(filepath.Join(lb.Dir, "logs", e.Name()), 25))
			}
		}
	})
	f.repo, err = lab.InitRepo(ctx, filepath.Join(lb.Dir, "repo"), "e2e-passphrase", attestationPolicy)
	if err != nil {
		t.Fatal(err)
	}
	f.srv, err = lb.StartServer(ctx, lab.ServerConfig{Repo: f.repo.Dir})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		d, err := lb.NewDevice(ctx, fmt.Sprintf("device-%d", i+1), nil, f.srv, f.repo.RootJSON())
		if err != nil {
			t.Fatal(err)
		}
		f.devs = append(f.devs, d)
	}
	return f
}

// startAgents starts the agents of devs (all devices if none given) in parallel.
func (f *fleetLab) startAgents(devs ...*lab.Device) {
	f.t.Helper()
	if len(devs) == 0 {
		devs = f.devs
	}
	errs := make(chan error, len(devs))
	for _, d := range devs {
		go func() { errs <- d.StartAgent(f.ctx) }()
	}
	for range devs {
		if err := <-errs; err != nil {
			f.t.Fatal(err)
		}
	}
}

var gates = artifact.Gates{MinAccuracy: 0.85}

// publish publishes a model version, failing the test on error.
func (f *fleetLab) publish(version string) {
	f.t.Helper()
	if _, err := f.repo.PublishModel(f.ctx, version, gates); err != nil {
		f.t.Fatal(err)
	}
}

// commit publishes a model version, rolls it out to every device in one wave and waits
// until all of devs (default: all) committed it.
func (f *fleetLab) commit(version string, devs ...*lab.Device) {
	f.t.Helper()
	if len(devs) == 0 {
		devs = f.devs
	}
	f.publish(version)
	f.rollout("vib-"+version, version, nil)
	if err := f.srv.WaitCommitted(f.ctx, wait, devs, artifact.KindModel, version); err != nil {
		f.t.Fatal(err)
	}
}

// rollout creates a model rollout of version (nil waves: one wave of 100%).
func (f *fleetLab) rollout(id, version string, waves []policy.WaveSpec) {
	f.t.Helper()
	if _, err := f.repo.CreateRollout(policy.RolloutSpec{ID: id, Target: policy.TargetSpec{Kind: artifact.KindModel, Name: lab.Model, Version: version}, Waves: waves}); err != nil {
		f.t.Fatal(err)
	}
}

// reports returns the server's reports of one rollout, by device ID.
func (f *fleetLab) reports(rollout string) map[string][]wire.Report {
	f.t.Helper()
	reps, err := f.srv.Reports(f.ctx, fleet.ReportFilter{RolloutID: rollout})
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string][]wire.Report{}
	for _, r := range reps {
		out[r.DeviceID] = append(out[r.DeviceID], r)
	}
	return out
}
