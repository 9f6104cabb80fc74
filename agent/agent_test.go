package agent

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// ortLibrary finds the ONNX Runtime library installed by make deps; a missing library
// skips the test, or fails it when EDGEWARD_REQUIRE_DEPS=1.
func ortLibrary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("ONNXRUNTIME_LIB"); p != "" {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		p := filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), ".deps", "onnxruntime", "lib", "libonnxruntime.so.1")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
		t.Fatal("ONNX Runtime library not found (run make deps)")
	}
	t.Skip("ONNX Runtime library not found (run make deps)")
	return ""
}

// rolloutPolicy rolls version out to every device; gates, if not empty, are the
// rollout's gates in YAML flow form.
func rolloutPolicy(t *testing.T, version, gates string) *policy.Policy {
	t.Helper()
	if gates != "" {
		gates = "\n    gates: " + gates
	}
	p, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(`version: 1
attestation: {required: true, max_age: 30m}
rollouts:
  - id: vib-` + version + `
    target: {kind: model, name: vibration-anomaly, version: ` + version + `}
    pause: {max_failure_ratio: 0.5, min_reports: 1}
    waves: [{percent: 100}]` + gates + `
`)})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// storyRig is one device and its server, in one process with every real part: a TUF
// repository and its server with the device API, the TPM simulator with a manufacturer
// EK certificate enrolled through the attestation CA, the agent's slots, TUF client and
// main loop, and ONNX Runtime serving and probing the models.
type storyRig struct {
	lib, dir, state string
	repo            *repository.Repo
	keys            *repository.KeyRing
	store           *fleet.Store
	srv             *reposerver.Server
	pol             *atomic.Pointer[policy.Policy]
	hs              *httptest.Server
	tpm             *attest.TPM
	mlog            *MeasurementLog
	rt              *runtime.Runtime
	rc              *runtimeapi.Client
	tuf             *updater.TUF
	slots           *rollback.Manager
	link            *Attested
	judge           *RuntimeJudge
	ag              *updater.Agent
	outbox          *updater.Outbox
	// kek is the server's key-encryption key: set, models are published encrypted and
	// the device certifies a TPM decryption key at every check-in (issue 18).
	kek []byte
	// encryptProbes: probe sets are published encrypted too (under kek).
	encryptProbes bool
}

// newStoryRig starts the server side with 1.0.0 of the vibration model published (and
// its rollout in force) and the device side, enrolled, with nothing installed.
func newStoryRig(t *testing.T, encrypt bool) *storyRig {
	t.Helper()
	return newStoryRigWith(t, &storyRig{}, encrypt)
}

// newStoryRigWith is newStoryRig starting from r's options (encryptProbes).
func newStoryRigWith(t *testing.T, r *storyRig, encrypt bool) *storyRig {
	t.Helper()
	lib := ortLibrary(t)
	ctx := context.Background()
	dir := t.TempDir()
	pass := []byte("pw")
	r.lib, r.dir = lib, dir
	if encrypt {
		r.kek, _ = keywrap.NewKEK(nil)
	}

	// Server side.
	res, err := repository.Init(ctx, repository.Config{Dir: filepath.Join(dir, "repo")}, repository.InitOptions{Passphrase: pass})
	if err != nil {
		t.Fatal(err)
	}
	repo := res.Repo
	keys := &repository.KeyRing{Passphrase: func() ([]byte, error) { return pass, nil }}
	r.repo, r.keys = repo, keys
	r.publish(t, "1.0.0")
	store, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	caKey, caCert, _ := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	ca, err := attestca.New(attestca.Config{Signer: caKey, Certificate: caCert, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	var pol atomic.Pointer[policy.Policy]
	pol.Store(rolloutPolicy(t, "1.0.0", ""))
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(reposerver.DeviceConfig{Fleet: store, AttestCA: ca, Policy: pol.Load, KEK: r.kek}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	// Device side: TPM, enrollment, runtime, slots, TUF, agent.
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	ak, err := (&attest.EnrollClient{URL: hs.URL + wire.PathAttest}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	state := filepath.Join(dir, "device")
	mlog, err := OpenMeasurementLog(ctx, filepath.Join(state, "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	rt, err := runtime.New(runtime.Config{LibraryPath: lib})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rt.Close(ctx) })
	control := httptest.NewServer(rt.ControlHandler())
	t.Cleanup(control.Close)
	rc := &runtimeapi.Client{BaseURL: control.URL}

	root, _ := os.ReadFile(filepath.Join(repo.MetadataDir(), "1.root.json"))
	mdir := filepath.Join(state, "tuf")
	if err := updater.PinRoot(mdir, root); err != nil {
		t.Fatal(err)
	}
	tuf, err := updater.NewTUF(updater.TUFConfig{MetadataDir: mdir, MetadataURL: hs.URL + "/metadata", TargetsURL: hs.URL + "/targets"})
	if err != nil {
		t.Fatal(err)
	}
	slots, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: tuf.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slots.Close() })
	outbox, err := updater.OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { outbox.Close() })
	link := &Attested{API: &deviceapi.Client{BaseURL: hs.URL}, TPM: tpm, AK: ak, Log: mlog, Labels: map[string]string{"line": "press"}, Hardware: "x86_64", AgentVersion: "0.1.0", Slots: slots}
	judge := &RuntimeJudge{Runtime: rc, TUF: tuf, Log: mlog, WorkDir: state}
	if encrypt {
		dk, err := tpm.CreateDecryptionKey(ctx, []byte(DecryptionKeyLabel))
		if err != nil {
			t.Fatal(err)
		}
		link.DecryptionKey, judge.Decrypter = dk, dk
	}
	ag, err := updater.NewAgent(updater.AgentConfig{DeviceID: link.DeviceID(), TUF: tuf, Slots: slots, Director: link, Judge: judge, Outbox: outbox, Sender: link})
	if err != nil {
		t.Fatal(err)
	}

	r.srv, r.outbox = srv, outbox
	r.state, r.store, r.pol, r.hs, r.tpm, r.mlog, r.rt, r.rc, r.tuf, r.slots, r.link, r.judge, r.ag = state, store, &pol, hs, tpm, mlog, rt, rc, tuf, slots, link, judge, ag
	return r
}

// publish publishes version of the vibration model and its probe set, the model
// encrypted when the rig has a key-encryption key.
func (r *storyRig) publish(t *testing.T, version string) {
	t.Helper()
	ctx := context.Background()
	probe, err := modelgen.ProbeSet(version)
	if err != nil {
		t.Fatal(err)
	}
	model, err := modelgen.Model(version)
	if err != nil {
		t.Fatal(err)
	}
	var probeKEK []byte
	if r.encryptProbes {
		probeKEK = r.kek
	}
	if _, err := r.repo.Publish(ctx, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindProbe, Name: "vibration-anomaly", Version: version}, Ext: ".json", Content: bytes.NewReader(probe), KEK: probeKEK}, r.keys); err != nil {
		t.Fatal(err)
	}
	if _, err := r.repo.Publish(ctx, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: version, Format: "onnx",
		Gates: &artifact.Gates{MinAccuracy: 0.85}}, Ext: ".onnx", Content: bytes.NewReader(model), KEK: r.kek}, r.keys); err != nil {
		t.Fatal(err)
	}
}

// current is the model target the device committed.
func (r *storyRig) current(t *testing.T) rollback.Target {
	t.Helper()
	st, err := r.slots.State(context.Background(), artifact.KindModel)
	if err != nil || st.Current == nil {
		t.Fatalf("no committed model: %v", err)
	}
	return *st.Current
}

// committed is the model version the device committed ("" for none).
func (r *storyRig) committed() string {
	st, err := r.slots.State(context.Background(), artifact.KindModel)
	if err != nil || st.Current == nil {
		return ""
	}
	return st.Current.Version
}

// TestDeviceStory runs one device through the product's story, in one process but with
// every real part: a TUF repository and its server with the device API, the TPM
// simulator with a manufacturer EK certificate enrolled through the attestation CA, the
// agent's slots, TUF client and main loop, and ONNX Runtime serving and probing the
// models. A good model commits; a degraded one fails its probe, rolls back, and pauses
// its rollout; the device stays trusted throughout.
func TestDeviceStory(t *testing.T) {
	r := newStoryRig(t, false)
	ctx := context.Background()
	lib, state, store, pol, mlog, rt, rc, tuf, slots, link, judge, ag := r.lib, r.state, r.store, r.pol, r.mlog, r.rt, r.rc, r.tuf, r.slots, r.link, r.judge, r.ag
	publish := func(version string) { t.Helper(); r.publish(t, version) }
	committed := r.committed

	// 1.0.0 rolls out: installed, probed, committed, reported; the device stays trusted.
	if err := ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	if v := committed(); v != "1.0.0" {
		t.Fatalf("committed model = %q; want 1.0.0", v)
	}
	// Traffic far from the training distribution: the next check-in carries the drift.
	link.Extra = judge.DriftAttrs
	for i := range 50 {
		x := float64(i%5) + 40 // training inputs are near 0
		if _, err := rt.Infer(ctx, "vibration-anomaly", "", []runtime.Input{runtime.NewInput("x", runtimeapi.FP32, []int64{1, 4}, []float64{x, x, x, x})}, nil); err != nil {
			t.Fatalf("infer: %v", err)
		}
	}
	if err := ag.Step(ctx); err != nil {
		t.Fatalf("step: %v", err)
	}
	dev, err := store.Device(ctx, link.DeviceID())
	if err != nil {
		t.Fatal(err)
	}
	drift, _ := dev.Attrs["drift"].(map[string]any)
	vib, _ := drift["vibration-anomaly"].(map[string]any)
	if vib == nil || vib["rows"] != float64(50) || len(vib["drifted"].([]any)) == 0 {
		t.Fatalf("device attrs = %v; want a drift summary of 50 rows with drifted features", dev.Attrs)
	}
	last := link.Last()
	if !last.Trusted || last.Slots[0].Reason != "up_to_date" {
		t.Fatalf("check-in after commit = %+v; want trusted and up to date", last)
	}
	reps, _ := store.Reports(ctx, fleet.ReportFilter{})
	if len(reps) != 1 || reps[0].Outcome != wire.OutcomeCommitted || reps[0].RolloutID != "vib-1.0.0" {
		t.Fatalf("reports = %+v; want one committed report for vib-1.0.0", reps)
	}
	// The report carries what the probe measured, as the server stored it.
	if p := reps[0].Probe; p.Accuracy < 0.85 || p.Accuracy > 1 || p.P99Ms <= 0 || p.PeakRSSMB <= 0 {
		t.Fatalf("committed report's probe = %+v; want accuracy >= 0.85 (its gate), p99 and peak RSS measured", p)
	}

	// 1.1.0 (better) passes its signed gates, but its rollout asks for more than any
	// device can give (p99 under a microsecond): the device judges against the stricter
	// of the two, so the trial fails and 1.0.0 keeps serving.
	publish("1.1.0")
	pol.Store(rolloutPolicy(t, "1.1.0", "{max_p99_ms: 0.001}"))
	ag.Step(ctx)
	if v := committed(); v != "1.0.0" {
		t.Fatalf("committed model after a trial against the rollout's stricter gates = %q; want 1.0.0 kept", v)
	}
	reps, _ = store.Reports(ctx, fleet.ReportFilter{RolloutID: "vib-1.1.0"})
	if len(reps) != 1 || reps[0].Outcome != wire.OutcomeProbeFailed || !strings.Contains(reps[0].Cause, "p99") {
		t.Fatalf("vib-1.1.0 reports = %+v; want one probe_failed on p99", reps)
	}
	if p := reps[0].Probe; p.Accuracy < 0.85 || p.P99Ms <= 0.001 || p.PeakRSSMB <= 0 {
		t.Fatalf("failed report's probe = %+v; want the figures that passed the signed gates (accuracy >= 0.85) and failed the rollout's", p)
	}

	// The degraded 2.0.0 rolls out: its probe fails, the slot rolls back to 1.0.0, and the
	// failure report pauses the rollout.
	publish("2.0.0")
	pol.Store(rolloutPolicy(t, "2.0.0", ""))
	ag.Step(ctx) // the install's failure is reported, not returned as an error
	if v := committed(); v != "1.0.0" {
		t.Fatalf("committed model after a failed probe = %q; want 1.0.0 kept", v)
	}
	st, _ := slots.State(ctx, artifact.KindModel)
	if !strings.Contains(st.Reason, "probe failed") {
		t.Fatalf("slot reason = %q; want the probe failure", st.Reason)
	}
	ag.Step(ctx)
	rs, err := store.RolloutState(ctx, "vib-2.0.0")
	if err != nil {
		t.Fatal(err)
	}
	if rs.Status != policy.StatusPaused {
		t.Fatalf("rollout vib-2.0.0 status = %s; want paused after its wave failed", rs.Status)
	}
	if last := link.Last(); !last.Trusted {
		t.Fatalf("device untrusted after rollback: %v", last.Reasons)
	}
	// The runtime still serves 1.0.0 as the default.
	idx, _ := rc.Index(ctx)
	for _, e := range idx {
		if e.Default && e.Version != "1.0.0" {
			t.Fatalf("runtime default = %s; want 1.0.0", e.Version)
		}
	}

	// The committed model changes on disk; the agent restarts (a new runtime process):
	// LoadCommitted measures the bytes as found and does not serve them, and the next
	// quote is not trusted: the device is quarantined.
	st, _ = slots.State(ctx, artifact.KindModel)
	payload := slots.Payload(artifact.KindModel, st.Active)
	os.Chmod(payload, 0o644)
	f, err := os.OpenFile(payload, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("tampered"))
	f.Close()
	rt2, err := runtime.New(runtime.Config{LibraryPath: lib})
	if err != nil {
		t.Fatal(err)
	}
	defer rt2.Close(ctx)
	control2 := httptest.NewServer(rt2.ControlHandler())
	defer control2.Close()
	judge2 := &RuntimeJudge{Runtime: &runtimeapi.Client{BaseURL: control2.URL}, TUF: tuf, Log: mlog, WorkDir: state}
	if err := judge2.LoadCommitted(ctx, slots); err != nil {
		t.Fatalf("LoadCommitted of a changed model = %v; want it measured, not an error", err)
	}
	if idx, _ := judge2.Runtime.Index(ctx); len(idx) != 0 {
		t.Errorf("the changed model is loaded: %+v", idx)
	}
	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if last := link.Last(); last.Trusted || !last.Quarantined {
		t.Fatalf("check-in after the model changed on disk = trusted %v, quarantined %v (%v); want untrusted and quarantined", last.Trusted, last.Quarantined, last.Reasons)
	}
	if s := link.Standing(); !strings.HasPrefix(s, "quarantined by the server, untrusted: artifact_mismatch") {
		t.Fatalf("Standing() of the quarantined device = %q", s)
	}
}

// TestFirstModelFailingItsTrialStaysTrusted: a device whose first model fails its trial
// serves nothing, and its measurement log says so (an unload event), so the server,
// which expects no model of it, keeps trusting it. Before, the log's latest entry stayed
// the failed version: "model ... is not expected" and quarantine at every check-in, for
// good (found by an outside operator journey, 2 Dec). The same after an agent restart
// that finds a trial it did not live to undo in the log.
func TestFirstModelFailingItsTrialStaysTrusted(t *testing.T) {
	r := newStoryRig(t, false)
	ctx := context.Background()
	r.publish(t, "2.0.0") // degraded: fails its probe
	r.pol.Store(rolloutPolicy(t, "2.0.0", ""))
	r.ag.Step(ctx) // the install's failure is reported, not returned as an error
	if v := r.committed(); v != "" {
		t.Fatalf("committed model after the first trial failed = %q; want none", v)
	}
	r.ag.Step(ctx)
	if last := r.link.Last(); !last.Trusted || last.Quarantined {
		t.Fatalf("check-in after the first model's trial failed = trusted %v, quarantined %v (%v); want trusted", last.Trusted, last.Quarantined, last.Reasons)
	}
	if m, ok := r.mlog.Latest()[[2]string{"model", "vibration-anomaly"}]; ok {
		t.Fatalf("the measurement log names %s as loaded; want none", m.Version)
	}
	// A trial measured, then the agent gone before it undid it: the restarted agent
	// (LoadCommitted, nothing committed) records the unload.
	tgt, err := r.tuf.Target(ctx, "models/vibration-anomaly/2.0.0.onnx")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.mlog.Measure(ctx, "model", "vibration-anomaly", "2.0.0", hex.EncodeToString(tgt.Hashes["sha256"]), ""); err != nil {
		t.Fatal(err)
	}
	if err := r.judge.LoadCommitted(ctx, r.slots); err != nil {
		t.Fatal(err)
	}
	if m, ok := r.mlog.Latest()[[2]string{"model", "vibration-anomaly"}]; ok {
		t.Fatalf("after LoadCommitted with nothing committed, the log names %s as loaded; want none", m.Version)
	}
	r.ag.Step(ctx)
	if last := r.link.Last(); !last.Trusted || last.Quarantined {
		t.Fatalf("check-in after a restart = trusted %v, quarantined %v (%v); want trusted", last.Trusted, last.Quarantined, last.Reasons)
	}
	// A runtime the agent does not start (--runtime-control, as here) outlives the agent
	// and may still serve the trial it was given: the log then names what it serves, not
	// nothing (the review of this change found the trial hidden that way).
	dst := filepath.Join(t.TempDir(), "m.onnx")
	if _, err := r.tuf.Download(ctx, tgt, dst); err != nil {
		t.Fatal(err)
	}
	if _, err := r.rc.Load(ctx, runtimeapi.LoadRequest{Name: "vibration-anomaly", Version: "2.0.0", Path: dst, SHA256: hex.EncodeToString(tgt.Hashes["sha256"])}); err != nil {
		t.Fatal(err)
	}
	if err := r.judge.LoadCommitted(ctx, r.slots); err != nil {
		t.Fatal(err)
	}
	if m, ok := r.mlog.Latest()[[2]string{"model", "vibration-anomaly"}]; !ok || m.Version != "2.0.0" {
		t.Fatalf("the runtime serves 2.0.0, and the log names %+v (%v); want 2.0.0", m, ok)
	}
}
