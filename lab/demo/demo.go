// Package demo is Edgeward's demonstration scenario, played with real processes by the
// lab: the server, and per device a swtpm and an edgeward-agent with its
// edgeward-runtime. The security team creates the repository and publishes the agent's
// build, devices boot (a real TCG boot log replayed into their swtpm) and enroll, three
// model versions roll out (the third fails its probe on the canary and pauses its
// rollout), a device is tampered with and quarantined, the runtime is updated, a device
// booting an unreviewed kernel is quarantined and the auditor verifies the audit log
// offline. `edgeward demo` runs it; the e2e suite checks its
// outcome.
//
// Like the lab it is a top floor: it imports the server's packages, and nothing but a
// command (cmd/edgeward) may import it.
package demo

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/lab"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// Config configures a demo run. The zero value runs five devices in ./demo-data with the
// binaries next to the running executable.
type Config struct {
	// Dir is the working folder. Run recreates it, so it must be absent, empty, or a
	// previous demo's (which holds the marker file .edgeward-demo); anything else is
	// refused. Empty means "demo-data".
	Dir string
	// Devices is the number of devices, at least 3 (a canary, a tampered device and the
	// rest). Zero means 5.
	Devices int
	// RuntimeVersion is the version under which the ONNX Runtime library
	// ($ONNXRUNTIME_LIB) is published as a runtime update. Empty means "1.24.3".
	RuntimeVersion string
	// Listen is the server's address. Empty means a free port on 127.0.0.1.
	Listen string
	// Serve keeps the server and the devices running after the scenario, until ctx is done.
	Serve bool
	// Bins are the executables the lab starts. The zero value means those next to the
	// running executable (lab.FindBins), which must then be edgeward itself.
	Bins lab.Bins
	// Out receives the narration and the summary. Nil means io.Discard.
	Out io.Writer
}

// scenario is one demo run. It works in its own folder, which it recreates, with demo
// keys whose passphrase is printed: never use them for anything else.
type scenario struct {
	out         io.Writer
	dir         string
	n           int
	lab         *lab.Lab
	srv         *lab.Server
	r           *lab.Repo
	repoDir     string
	devs        []*lab.Device
	step        int
	title       string
	start       time.Time
	canary      *lab.Device
	victim      *lab.Device
	rtVer       string
	listen      string
	tokenFile   string
	rootVersion int64
	// bootLog is the real TCG boot log every device boots with (go-attestation's
	// Ubuntu 21.04 log); nil when its test data cannot be found, and the demo then runs
	// without measured boot.
	bootLog []byte
	rogue   *lab.Device
}

const (
	demoPassphrase = "edgeward-demo-only"
	demoModel      = "vibration-anomaly"
	demoMarker     = ".edgeward-demo"
	demoAgent      = "0.1.0"
	// The boot applications (PCR 4) of the Ubuntu 21.04 boot log: shim, then GRUB.
	ubuntuShim  = "6265b732b005b3f330bcd1843374e5ec6ec5aef27cdb97a23daeb8580abbf526"
	ubuntuGrub  = "b0a836fec2faf4a9bea0e1a5f1945bc86ddc03ac98ce0ae172ed9b1e536d7595"
	stepTimeout = 90 * time.Second
)

// Run plays the scenario and prints a summary to cfg.Out. Every process it starts is
// stopped before it returns (with Serve, after ctx is done). An error names the step
// that failed and where the process logs are.
func Run(ctx context.Context, cfg Config) error {
	d := &scenario{out: cfg.Out, dir: cfg.Dir, n: cfg.Devices, rtVer: cfg.RuntimeVersion}
	if d.out == nil {
		d.out = io.Discard
	}
	if d.dir == "" {
		d.dir = "demo-data"
	}
	if d.n == 0 {
		d.n = 5
	}
	if d.rtVer == "" {
		d.rtVer = "1.24.3"
	}
	if d.n < 3 {
		return errors.New("--devices must be at least 3 (a canary, a tampered device and the rest)")
	}
	if err := d.checkDir(); err != nil {
		return err
	}
	bins := cfg.Bins
	if bins == (lab.Bins{}) {
		var err error
		if bins, err = lab.FindBins(); err != nil {
			return err
		}
	} else if err := bins.Check(); err != nil {
		return err
	}
	if err := lab.CheckDeps(); err != nil {
		return fmt.Errorf("the demo needs:\n%w\nrun 'make demo' (it runs make deps first)", err)
	}
	if err := d.prepareDir(); err != nil {
		return err
	}
	var err error
	if d.lab, err = lab.New(d.dir, bins); err != nil {
		return err
	}
	defer d.lab.Close()
	d.start = time.Now()
	if err := d.run(ctx, cfg.Listen); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("demo interrupted at step %d (%s)", d.step, d.title)
		}
		return fmt.Errorf("demo FAILED at step %d (%s): %w\n(process logs: %s)", d.step, d.title, err, filepath.Join(d.lab.Dir, "logs"))
	}
	if cfg.Serve {
		fmt.Fprintf(d.out, "\nserving until interrupted (Ctrl-C): server %s, devices on ports %s\n", d.srv.URL, d.ports())
		<-ctx.Done()
	}
	return nil
}

// checkDir refuses a demo folder that holds anything but a previous demo.
func (d *scenario) checkDir() error {
	entries, err := os.ReadDir(d.dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(d.dir, demoMarker)); err != nil {
			return fmt.Errorf("%s is not empty and not a previous demo's folder: refusing to delete it", d.dir)
		}
	}
	return nil
}

// prepareDir empties the demo folder (checked by checkDir) and marks it as the demo's.
func (d *scenario) prepareDir() error {
	if err := os.RemoveAll(d.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(d.dir, demoMarker), []byte("made by edgeward demo; deleted by the next run\n"), 0o644)
}

func (d *scenario) say(title string) {
	d.step++
	d.title = title
	el := time.Since(d.start).Round(time.Second)
	fmt.Fprintf(d.out, "\n[%02d:%02d] %d. %s\n", int(el.Minutes()), int(el.Seconds())%60, d.step, title)
}

func (d *scenario) info(format string, a ...any) {
	fmt.Fprintf(d.out, "      %s\n", fmt.Sprintf(format, a...))
}

func (d *scenario) ports() string {
	var ps []string
	for _, dv := range d.devs {
		ps = append(ps, fmt.Sprint(dv.Port))
	}
	return strings.Join(ps, ",")
}

func (d *scenario) run(ctx context.Context, listen string) error {
	steps := []struct {
		title string
		f     func(context.Context) error
	}{
		{"security team creates the TUF repository (root 2-of-3) and the attestation policy", d.createRepo},
		{fmt.Sprintf("%d devices enroll: EK certificate (manufacturer CA) → AK certificate → device certificate → trusted quote", d.n), d.enroll},
		{"model v1 (1.0.0) with its probe set rolls out in waves; every device commits and serves", d.modelV1},
		{"model v2 (1.1.0, better) rolls out and commits", d.modelV2},
		{"model v3 (2.0.0, degraded) reaches the first wave, fails its probe, rolls back; the rollout pauses", d.modelV3},
		{"a device is tampered with: its committed model changes on disk", d.tamper},
		{"runtime update: ONNX Runtime from the runtime slot, trial beside the serving runtime, traffic switched", d.runtimeUpdate},
		{"a device boots a kernel nobody reviewed: its boot log replays, the boot policy refuses it, it is quarantined", d.rogueKernel},
		{"the auditor exports the audit log and verifies it offline", d.audit},
	}
	d.listen = listen
	for _, s := range steps {
		d.say(s.title)
		if err := s.f(ctx); err != nil {
			return err
		}
	}
	return d.summary(ctx)
}

// createRepo initialises the repository, writes the attestation policy, publishes the
// agent's build and starts the server.
func (d *scenario) createRepo(ctx context.Context) error {
	d.repoDir = filepath.Join(d.lab.Dir, "repo")
	pol := "# Attestation policy: a device gets a new version only with a trusted quote at most 5 minutes old.\nversion: 1\nattestation: {required: true, max_age: 5m}\n"
	log, err := attesttest.RealBootLog(attesttest.BootLogUbuntu)
	if err == nil {
		d.bootLog = log
		pol = "# Attestation policy: a device gets a new version only with a trusted quote at most 5 minutes old,\n" +
			"# and only after a measured boot of the reviewed boot loaders (shim, GRUB; PCR 4).\n" +
			"version: 1\nattestation:\n  required: true\n  max_age: 5m\n  boot:\n    - boot_applications: [" + ubuntuShim + ", " + ubuntuGrub + "]\n"
	}
	if d.r, err = lab.InitRepo(ctx, d.repoDir, demoPassphrase, pol); err != nil {
		return err
	}
	st, err := d.r.Repo.Load(ctx)
	if err != nil {
		return err
	}
	rr := st.Root.Signed.Roles["root"]
	// The delegations as signed (models/*/*, probes/*/* to 'models'; runtimes/*/*,
	// agents/*/* to 'runtimes'): one '*' matches one path segment.
	var delegated []string
	if t := st.Targets["targets"]; t != nil && t.Signed.Delegations != nil {
		for _, dr := range t.Signed.Delegations.Roles {
			delegated = append(delegated, fmt.Sprintf("%s to '%s'", strings.Join(dr.Paths, ", "), dr.Name))
		}
	}
	d.info("repository %s: root threshold %d of %d keys; targets delegate %s", d.repoDir, rr.Threshold, len(rr.KeyIDs), strings.Join(delegated, " and "))
	d.info("offline keys encrypted with the demo passphrase %q (demo only)", demoPassphrase)
	d.info("attestation policy %s: required, max age 5m; untrusted evidence quarantines the device", filepath.Join(d.r.PolicyDir, "00-attestation.yaml"))
	if d.bootLog != nil {
		d.info("boot policy: the boot log must replay to the quoted PCRs 0-7 and load only shim %s… and GRUB %s… (PCR 4)", ubuntuShim[:12], ubuntuGrub[:12])
	} else {
		d.info("measured boot: skipped (go-attestation's test boot logs are not in the Go module cache: %v)", err)
	}
	published, err := d.r.PublishAgent(ctx, demoAgent, d.lab.Bins.Agent, d.lab.Bins.Runtime)
	if err != nil {
		return err
	}
	for _, res := range published {
		d.info("published the agent's build %s (sha256 %s…), signed by '%s': the digests an IMA list's edgeward-agent and edgeward-runtime must have", res.Path, res.SHA256[:12], res.Role)
	}
	d.srv, err = d.lab.StartServer(ctx, lab.ServerConfig{Repo: d.repoDir, Listen: d.listen, CheckIn: time.Second, TLS: true})
	if err != nil {
		return err
	}
	m, _ := d.lab.Manufacturer()
	d.info("server %s (pid %d): TUF metadata and targets, operator API; attestation CA trusting the TPM manufacturer CA %s", d.srv.URL, d.srv.Proc.Pid(), m.RootPEM)
	d.info("device API %s: mTLS only, device certificates from the embedded step-ca (ACME device-attest-01)", d.srv.TLSURL)
	return nil
}

func (d *scenario) devices(ctx context.Context) (map[string]fleet.Device, error) {
	return d.srv.Devices(ctx, d.devs)
}

func (d *scenario) enroll(ctx context.Context) error {
	root := d.r.RootJSON()
	for i := range d.n {
		name := fmt.Sprintf("device-%d", i+1)
		dv, err := d.lab.NewDevice(ctx, name, map[string]string{"line": []string{"press", "lathe"}[i%2]}, d.srv, root)
		if err != nil {
			return err
		}
		if d.bootLog != nil {
			if err := dv.Boot(ctx, d.bootLog); err != nil {
				return err
			}
		}
		d.devs = append(d.devs, dv)
	}
	d.info("%d TPMs manufactured (swtpm_setup --create-ek-cert, one local CA), swtpm processes started", d.n)
	if d.bootLog != nil {
		d.info("each boots: the real Ubuntu 21.04 TCG boot log (%d bytes) replayed into its swtpm's PCRs 0-7 as firmware would; the agent sends it with every check-in (--boot-log)", len(d.bootLog))
	}
	errs := make(chan error, d.n)
	for _, dv := range d.devs {
		go func() { errs <- dv.StartAgent(ctx) }()
	}
	for range d.devs {
		if err := <-errs; err != nil {
			return err
		}
	}
	err := lab.WaitFor(ctx, stepTimeout, "every device to check in with a trusted quote", func(ctx context.Context) (bool, string, error) {
		fds, err := d.devices(ctx)
		if err != nil {
			return false, "", err
		}
		var not []string
		for _, dv := range d.devs {
			if fds[dv.Name].Verdict != policy.VerdictTrusted {
				not = append(not, dv.Name+":"+string(fds[dv.Name].Verdict))
			}
		}
		return len(not) == 0, strings.Join(not, " "), nil
	})
	if err != nil {
		return err
	}
	for _, dv := range d.devs {
		cert := dv.DeviceCert()
		if cert == "" {
			return fmt.Errorf("%s has no device certificate", dv.Name)
		}
		if cert == dv.ID {
			cert = "CN = its ID"
		}
		d.info("%s  %s  swtpm :%d  agent pid %d  inference :%d  device cert (%s)  mTLS check-in: trusted", dv.Name, short(dv.ID), dv.TPMPort, dv.Agent.Pid(), dv.Port, cert)
	}
	return nil
}

func short(id string) string {
	if len(id) > 30 {
		return id[:30] + "…"
	}
	return id
}

// publishModel publishes the probe set and the model of a vibration-anomaly version.
func (d *scenario) publishModel(ctx context.Context, version string) error {
	res, err := d.r.PublishModel(ctx, version, artifact.Gates{MinAccuracy: 0.85, MaxRSSMB: 1024})
	if err != nil {
		return err
	}
	d.info("published %s (%d bytes, sha256 %s…) with probe set probes/%s/%s.json, gates min_accuracy=0.85 max_rss_mb=1024, signed by '%s'",
		res.Path, res.Length, res.SHA256[:12], demoModel, version, res.Role)
	return nil
}

// createRollout writes a rollout into the policy directory (the server hot-reloads it).
func (d *scenario) createRollout(spec policy.RolloutSpec) error {
	path, err := d.r.CreateRollout(spec)
	if err != nil {
		return err
	}
	var waves []string
	for _, w := range spec.Waves {
		s := fmt.Sprintf("%g%%", w.Percent)
		if w.Soak != "" {
			s += " soak " + w.Soak
		}
		waves = append(waves, s)
	}
	if len(waves) == 0 {
		waves = []string{"100%"}
	}
	d.info("rollout %s → %s %s: waves [%s] (%s)", spec.ID, spec.Target.Kind, spec.Target.Version, strings.Join(waves, ", "), filepath.Base(path))
	return nil
}

// waitCommitted waits until every device in devs reports kind committed at version.
func (d *scenario) waitCommitted(ctx context.Context, devs []*lab.Device, kind artifact.Kind, version string) error {
	return d.srv.WaitCommitted(ctx, stepTimeout, devs, kind, version)
}

// waitServing waits until each device answers an inference request with version.
func (d *scenario) waitServing(ctx context.Context, devs []*lab.Device, version string) error {
	for _, dv := range devs {
		r, err := dv.WaitServing(ctx, 30*time.Second, version)
		if err != nil {
			return err
		}
		d.info("%s  POST :%d/v2/models/%s/infer → 200, model_version %s, %s", dv.Name, dv.Port, demoModel, r.Version, r.Output)
	}
	return nil
}

func (d *scenario) modelV1(ctx context.Context) error {
	if err := d.publishModel(ctx, "1.0.0"); err != nil {
		return err
	}
	const id = "vib-1.0.0"
	ordered := lab.ByBucket(id, d.devs)
	k := (len(d.devs) + 1) / 3
	pct := lab.PercentFor(id, ordered, k)
	if err := d.createRollout(policy.RolloutSpec{ID: id, Target: policy.TargetSpec{Kind: artifact.KindModel, Name: demoModel, Version: "1.0.0"},
		Waves: []policy.WaveSpec{{Percent: pct, Soak: "3s"}, {Percent: 100}}}); err != nil {
		return err
	}
	wave1 := ordered[:k]
	if err := d.waitCommitted(ctx, wave1, artifact.KindModel, "1.0.0"); err != nil {
		return err
	}
	d.info("wave 1 = %s (the %.2f%% is computed from policy.Bucket so that exactly %d of %d devices are in it) committed 1.0.0 after its probe passed; wave 2 starts after the soak", lab.Names(wave1), pct, k, len(d.devs))
	if err := d.waitCommitted(ctx, d.devs, artifact.KindModel, "1.0.0"); err != nil {
		return err
	}
	d.info("wave 2 (%s) committed 1.0.0", lab.Names(ordered[k:]))
	return d.waitServing(ctx, d.devs, "1.0.0")
}

func (d *scenario) modelV2(ctx context.Context) error {
	if err := d.publishModel(ctx, "1.1.0"); err != nil {
		return err
	}
	if err := d.createRollout(policy.RolloutSpec{ID: "vib-1.1.0", Target: policy.TargetSpec{Kind: artifact.KindModel, Name: demoModel, Version: "1.1.0"}}); err != nil {
		return err
	}
	if err := d.waitCommitted(ctx, d.devs, artifact.KindModel, "1.1.0"); err != nil {
		return err
	}
	d.info("every device committed 1.1.0 (probe accuracy 0.9367 ≥ 0.85); the anti-rollback floor is now 1.1.0")
	if err := d.waitServing(ctx, d.devs, "1.1.0"); err != nil {
		return err
	}
	v, err := d.r.RotateTimestampKey(ctx)
	if err != nil {
		return fmt.Errorf("timestamp key rotation: %w", err)
	}
	d.rootVersion = v
	d.info("security team rotates the timestamp key: root v%d proposed, signed by 2 of the 3 root key holders, published (devices follow it at their next refresh)", v)
	return nil
}

func (d *scenario) reports(ctx context.Context, f fleet.ReportFilter) ([]wire.Report, error) {
	return d.srv.Reports(ctx, f)
}

func (d *scenario) rolloutState(ctx context.Context, id string) (policy.RolloutState, error) {
	return d.srv.RolloutState(ctx, id)
}

func (d *scenario) modelV3(ctx context.Context) error {
	if err := d.publishModel(ctx, "2.0.0"); err != nil {
		return err
	}
	const id = "vib-2.0.0"
	ordered := lab.ByBucket(id, d.devs)
	d.canary = ordered[0]
	zero, one := 0.0, 1
	if err := d.createRollout(policy.RolloutSpec{ID: id, Target: policy.TargetSpec{Kind: artifact.KindModel, Name: demoModel, Version: "2.0.0"},
		Pause: &policy.PauseSpec{MaxFailureRatio: &zero, MinReports: &one},
		Waves: []policy.WaveSpec{{Percent: lab.PercentFor(id, ordered, 1), Soak: "1h"}, {Percent: 100}}}); err != nil {
		return err
	}
	d.info("wave 1 is the canary %s (its bucket %d is the lowest of the fleet for %s); one failed report pauses the rollout",
		d.canary.Name, policy.Bucket(id, d.canary.ID), id)
	var failed wire.Report
	err := lab.WaitFor(ctx, stepTimeout, d.canary.Name+" to report the failed trial of 2.0.0", func(ctx context.Context) (bool, string, error) {
		reps, err := d.reports(ctx, fleet.ReportFilter{RolloutID: id})
		if err != nil {
			return false, "", err
		}
		// Every report must be the canary's, and none a commit; the first failure ends the wait.
		for _, r := range reps {
			if r.DeviceID != d.canary.ID {
				return false, "", lab.Final(fmt.Errorf("%s outside wave 1 installed 2.0.0", r.DeviceID))
			}
			if r.Outcome == wire.OutcomeCommitted {
				return false, "", lab.Final(errors.New("the canary committed the degraded model"))
			}
		}
		if len(reps) > 0 {
			failed = reps[0]
			return true, "", nil
		}
		return false, "no report yet", nil
	})
	if err != nil {
		return err
	}
	d.info("%s: %s — %s", d.canary.Name, failed.Outcome, failed.Cause)
	err = lab.WaitFor(ctx, 30*time.Second, "rollout "+id+" to pause", func(ctx context.Context) (bool, string, error) {
		rs, err := d.rolloutState(ctx, id)
		return err == nil && rs.Status == policy.StatusPaused, string(rs.Status), err
	})
	if err != nil {
		return err
	}
	rs, _ := d.rolloutState(ctx, id)
	d.info("rollout %s paused: %s", id, rs.Reason)
	if err := d.waitServing(ctx, []*lab.Device{d.canary}, "1.1.0"); err != nil {
		return err
	}
	// Let every device check in a few more times: none may get 2.0.0.
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(4 * time.Second):
	}
	reps, err := d.reports(ctx, fleet.ReportFilter{RolloutID: id})
	if err != nil {
		return err
	}
	for _, r := range reps {
		if r.DeviceID != d.canary.ID {
			return fmt.Errorf("device %s outside the first wave installed 2.0.0", r.DeviceID)
		}
	}
	fds, err := d.devices(ctx)
	if err != nil {
		return err
	}
	for _, dv := range d.devs {
		if v := fds[dv.Name].Slots[artifact.KindModel].Version; v != "1.1.0" {
			return fmt.Errorf("%s runs model %q; want 1.1.0", dv.Name, v)
		}
	}
	d.info("the other %d devices never saw 2.0.0: all still run 1.1.0", len(d.devs)-1)
	return nil
}

func (d *scenario) tamper(ctx context.Context) error {
	for i := len(d.devs) - 1; i >= 0; i-- {
		if d.devs[i] != d.canary {
			d.victim = d.devs[i]
			break
		}
	}
	v := d.victim
	want, err := d.r.TargetSHA(ctx, "models/"+demoModel+"/1.1.0.onnx")
	if err != nil {
		return err
	}
	slot := ""
	for _, s := range []string{"a", "b"} {
		if sum, err := artifact.FileSHA256(v.ModelPayload(s)); err == nil && sum == want {
			slot = s
		}
	}
	if slot == "" {
		return fmt.Errorf("%s: no model slot holds 1.1.0", v.Name)
	}
	payload := v.ModelPayload(slot)
	if err := os.Chmod(payload, 0o644); err != nil {
		return err
	}
	f, err := os.OpenFile(payload, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.Write([]byte("\x00tampered"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	d.info("%s: appended 9 bytes to its committed model %s, then restarted its agent (the model is measured again at load)", v.Name, payload)
	if err := v.StopAgent(ctx); err != nil {
		return err
	}
	if err := v.StartAgent(ctx); err != nil {
		return err
	}
	var fd fleet.Device
	err = lab.WaitFor(ctx, stepTimeout, v.Name+" to be quarantined", func(ctx context.Context) (bool, string, error) {
		fds, err := d.devices(ctx)
		fd = fds[v.Name]
		return err == nil && fd.Quarantined, string(fd.Verdict), err
	})
	if err != nil {
		return err
	}
	d.info("%s: verdict %s → quarantined: %s", v.Name, fd.Verdict, fd.QuarantineReason)
	r, err := v.Infer(ctx, demoModel)
	if err != nil {
		return err
	}
	d.info("%s no longer serves the changed model: inference → HTTP %d %s", v.Name, r.Code, r.Error)
	fds, err := d.devices(ctx)
	if err != nil {
		return err
	}
	for _, dv := range d.devs {
		if dv != v && (fds[dv.Name].Quarantined || fds[dv.Name].Verdict != policy.VerdictTrusted) {
			return fmt.Errorf("%s is not trusted (%s) though only %s was tampered with", dv.Name, fds[dv.Name].Verdict, v.Name)
		}
	}
	d.info("the other %d devices remain trusted", len(d.devs)-1)
	return nil
}

// rogueKernel starts one more device that boots the same firmware and shim but another
// GRUB/kernel binary: its boot log is genuine for its TPM (the firmware measured what it
// loaded), so it replays, and the boot policy refuses the unknown boot application.
func (d *scenario) rogueKernel(ctx context.Context) error {
	if d.bootLog == nil {
		d.info("skipped: no boot log (see step 1)")
		return nil
	}
	other := sha256.Sum256([]byte("a kernel nobody reviewed"))
	log, err := lab.BootApplicationSwapped(d.bootLog, ubuntuGrub, other)
	if err != nil {
		return err
	}
	name := fmt.Sprintf("device-%d", d.n+1)
	rv, err := d.lab.NewDevice(ctx, name, map[string]string{"line": "press"}, d.srv, d.r.RootJSON())
	if err != nil {
		return err
	}
	if err := rv.Boot(ctx, log); err != nil {
		return err
	}
	if err := rv.StartAgent(ctx); err != nil {
		return err
	}
	d.rogue = rv
	d.info("%s boots the same firmware and shim, then %s… where GRUB %s… was", name, hex.EncodeToString(other[:6]), ubuntuGrub[:12])
	var fd fleet.Device
	err = lab.WaitFor(ctx, stepTimeout, name+" to be quarantined", func(ctx context.Context) (bool, string, error) {
		fds, err := d.srv.Devices(ctx, []*lab.Device{rv})
		fd = fds[name]
		return err == nil && fd.Quarantined, string(fd.Verdict), err
	})
	if err != nil {
		return err
	}
	if !strings.Contains(fd.QuarantineReason, "boot_policy") || !strings.Contains(fd.QuarantineReason, "PCR 4") || !strings.Contains(fd.QuarantineReason, hex.EncodeToString(other[:])) {
		return fmt.Errorf("%s is quarantined for %q; want its boot application (PCR 4, %x) named", name, fd.QuarantineReason, other)
	}
	d.info("%s: verdict %s → quarantined: %s", name, fd.Verdict, fd.QuarantineReason)
	if fd.Boot != nil {
		d.info("%s's boot state as verified: Secure Boot %v, %d events, boot applications %d", name, fd.Boot.SecureBoot, fd.Boot.Events, len(fd.Boot.BootApplications))
	}
	return rv.StopAgent(ctx) // nothing more to show from it; the others stay trusted
}

func (d *scenario) runtimeUpdate(ctx context.Context) error {
	lib := os.Getenv("ONNXRUNTIME_LIB")
	res, err := d.r.PublishRuntime(ctx, "onnxruntime", d.rtVer, lib)
	if err != nil {
		return err
	}
	d.info("published %s (%.1f MiB: the ONNX Runtime library %s) signed by '%s'", res.Path, float64(res.Length)/(1<<20), lib, res.Role)
	if err := d.createRollout(policy.RolloutSpec{ID: "ort-" + d.rtVer, Target: policy.TargetSpec{Kind: artifact.KindRuntime, Name: "onnxruntime", Version: d.rtVer}}); err != nil {
		return err
	}
	var healthy []*lab.Device
	for _, dv := range d.devs {
		if dv != d.victim {
			healthy = append(healthy, dv)
		}
	}
	if err := d.waitCommitted(ctx, healthy, artifact.KindRuntime, d.rtVer); err != nil {
		return err
	}
	d.info("%d devices: new runtime started from the runtime slot with --hold, model 1.1.0 loaded and probed in it, then it took the public socket and the old runtime drained", len(healthy))
	// The next quotes cover the new runtime: the devices stay trusted.
	if err := d.srv.WaitTrusted(ctx, stepTimeout, healthy, time.Now()); err != nil {
		return err
	}
	if err := d.waitServing(ctx, healthy, "1.1.0"); err != nil {
		return err
	}
	fds, err := d.devices(ctx)
	if err != nil {
		return err
	}
	if fv := fds[d.victim.Name]; fv.Slots[artifact.KindRuntime].Version != "" || !fv.Quarantined {
		return fmt.Errorf("quarantined %s got the runtime update (runtime %q, quarantined %v)", d.victim.Name, fv.Slots[artifact.KindRuntime].Version, fv.Quarantined)
	}
	reps, err := d.reports(ctx, fleet.ReportFilter{DeviceID: d.victim.ID, RolloutID: "ort-" + d.rtVer})
	if err != nil {
		return err
	}
	if len(reps) > 0 {
		return fmt.Errorf("quarantined %s installed the runtime update", d.victim.Name)
	}
	d.info("quarantined %s got no update: it still has no runtime from the slot and reported no install", d.victim.Name)
	for _, dv := range healthy {
		v, err := dv.TrustedRootVersion()
		if err != nil {
			return err
		}
		if v != d.rootVersion {
			return fmt.Errorf("%s trusts root v%d; want v%d (the rotated root)", dv.Name, v, d.rootVersion)
		}
	}
	d.info("the updated devices verified this update under root v%d (the rotated timestamp key)", d.rootVersion)
	return nil
}

func (d *scenario) audit(ctx context.Context) error {
	file := filepath.Join(d.lab.Dir, "audit.jsonl")
	pub := filepath.Join(d.lab.Dir, "audit-checkpoint.pem")
	bin := d.lab.Bins.Edgeward
	if _, err := d.lab.Run(ctx, nil, bin, "audit", "export", "--repo", d.repoDir, "-o", file); err != nil {
		return err
	}
	key, err := d.lab.Run(ctx, nil, bin, "audit", "pubkey", "--repo", d.repoDir)
	if err != nil {
		return err
	}
	if err := os.WriteFile(pub, []byte(key), 0o644); err != nil {
		return err
	}
	out, err := d.lab.Run(ctx, nil, bin, "audit", "verify", file, "--key", pub)
	if err != nil {
		return err
	}
	d.info("edgeward audit export → %s; edgeward audit pubkey → %s", file, pub)
	d.info("edgeward audit verify: %s", strings.TrimSpace(out))
	kinds, err := auditKinds(file)
	if err != nil {
		return err
	}
	var ks []string
	for _, k := range []string{"publish", "device.enroll", "attestation.verdict", "install.report", "rollout.started", "rollout.paused", "device.quarantine"} {
		if kinds[k] > 0 {
			ks = append(ks, fmt.Sprintf("%s ×%d", k, kinds[k]))
		}
	}
	d.info("records: %s", strings.Join(ks, ", "))
	for _, k := range []string{"install.report", "attestation.verdict", "device.quarantine"} {
		if kinds[k] == 0 {
			return fmt.Errorf("the audit log has no %s record", k)
		}
	}
	// A changed record must not verify.
	data, err := os.ReadFile(file)
	if err != nil {
		return err
	}
	bad := bytes.Replace(data, []byte(`"verdict":"untrusted"`), []byte(`"verdict":"trusted"`), 1)
	if bytes.Equal(bad, data) {
		return errors.New("no untrusted verdict in the audit log")
	}
	badFile := filepath.Join(d.lab.Dir, "audit-edited.jsonl")
	if err := os.WriteFile(badFile, bad, 0o644); err != nil {
		return err
	}
	if out, err := d.lab.Run(ctx, nil, bin, "audit", "verify", badFile, "--key", pub); err == nil {
		return fmt.Errorf("an edited audit log verified: %s", out)
	}
	d.info("an export with the tampered device's verdict edited to \"trusted\" does not verify (%s)", filepath.Base(badFile))

	// A read-only dashboard login for the auditor.
	cmd := exec.CommandContext(ctx, bin, "token", "create", "--repo", d.repoDir, "--name", "auditor", "--role", "auditor", "--ttl", "24h")
	tok, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("edgeward token create: %w", err)
	}
	d.tokenFile = filepath.Join(d.lab.Dir, "auditor.token")
	if err := os.WriteFile(d.tokenFile, tok, 0o600); err != nil {
		return err
	}
	d.info("auditor token for the read-only dashboard (valid 24h): %s", d.tokenFile)
	return nil
}

// auditKinds counts the records of an export by kind.
func auditKinds(file string) (map[string]int, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var r struct{ Kind string }
		if json.Unmarshal(sc.Bytes(), &r) == nil && r.Kind != "" {
			out[r.Kind]++
		}
	}
	return out, sc.Err()
}

func (d *scenario) summary(ctx context.Context) error {
	st, err := d.srv.Fleet(ctx)
	if err != nil {
		return err
	}
	defer st.Close()
	w := d.out
	fmt.Fprintf(w, "\nSummary (%s)\n\n", time.Since(d.start).Round(time.Second))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tID\tMODEL\tRUNTIME\tVERDICT\tSTATE\tINFERENCE")
	devs := d.devs
	if d.rogue != nil {
		devs = append(slices.Clone(devs), d.rogue)
	}
	for _, dv := range devs {
		fd, err := st.Device(ctx, dv.ID)
		if err != nil {
			return err
		}
		state := "serving"
		if fd.Quarantined {
			state = "QUARANTINED"
		}
		inf := "-"
		if r, err := dv.Infer(ctx, demoModel); err == nil {
			inf = fmt.Sprintf("%d %s", r.Code, r.Version)
		}
		rt := fd.Slots[artifact.KindRuntime].Version
		if rt == "" {
			rt = "(factory)"
		}
		model := fd.Slots[artifact.KindModel].Version
		if f := fd.Slots[artifact.KindModel].Failed; f != "" {
			model += " (" + f + " rolled back)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", dv.Name, short(dv.ID), model, rt, fd.Verdict, state, inf)
	}
	tw.Flush()

	reps, err := st.Reports(ctx, fleet.ReportFilter{})
	if err != nil {
		return err
	}
	verdicts, err := st.Verdicts(ctx, time.Time{})
	if err != nil {
		return err
	}
	states, err := st.RolloutStates(ctx)
	if err != nil {
		return err
	}
	starts := map[string]time.Time{}
	for id, s := range states {
		starts[id] = s.Started
	}
	k := fleet.ComputeFleet(reps, verdicts, starts)
	var fails []string
	for o, n := range k.Failures {
		fails = append(fails, fmt.Sprintf("%s %d", o, n))
	}
	slices.Sort(fails)
	fmt.Fprintf(w, "\nFleet: %d install attempts, %.0f%% committed (failures: %s); %d attestation verdicts, %.1f%% trusted\n",
		k.Attempts, 100*k.SuccessRate, strings.Join(fails, ", "), k.Verdicts, 100*k.AttestationPassRate)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLLOUT\tSTATUS\tDEVICES\tCOMMITTED\tFAILED\tCOMMIT P50\tACCURACY\tP99\tPEAK RSS\tREASON")
	var unmeasured []string
	for _, r := range k.Rollouts {
		failed := r.Devices - r.Committed // devices whose latest report is a failure
		s := states[r.Rollout]
		status := s.Status
		if status == "" {
			status = policy.StatusActive
		}
		acc, p99, rss := "-", "-", "-"
		if r.MeanAccuracy > 0 {
			acc = fmt.Sprintf("%.3f", r.MeanAccuracy)
		}
		if r.MeanP99Ms > 0 {
			p99 = fmt.Sprintf("%.2f ms", r.MeanP99Ms)
		}
		if r.MeanPeakRSSMB > 0 {
			rss = fmt.Sprintf("%.0f MB", r.MeanPeakRSSMB)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", r.Rollout, status, r.Devices, r.Committed, failed, r.CommitP50.Round(100*time.Millisecond), acc, p99, rss, s.Reason)
		if status == policy.StatusCompleted && (r.MeanAccuracy == 0 || r.MeanP99Ms == 0 || r.MeanPeakRSSMB == 0) {
			unmeasured = append(unmeasured, r.Rollout)
		}
	}
	tw.Flush()
	// Every install the demo completes was probed: its reports carry the figures.
	if len(unmeasured) > 0 {
		return fmt.Errorf("completed rollouts whose reports carry no probe figures: %s", strings.Join(unmeasured, ", "))
	}
	fmt.Fprintf(w, "\nEvery step held.\n  server     %s  (metrics %s/metrics)\n  dashboard  %s/ui/  (sign in with the token in %s)\n  data, logs %s\n",
		d.srv.URL, d.srv.URL, d.srv.URL, d.tokenFile, d.lab.Dir)
	return nil
}
