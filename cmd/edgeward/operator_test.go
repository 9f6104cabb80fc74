package main

import (
	"context"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// opServer is an in-process server with the operator API, a watched policy directory
// and a seeded fleet.
type opServer struct {
	url   string
	store *fleet.Store
	repo  *repository.Repo
	dir   string
	tok   map[fleet.Role]string
}

func newOpServer(t *testing.T) *opServer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := filepath.Join(t.TempDir(), "repo")
	res, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}}, repository.InitOptions{Passphrase: []byte("pw")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: res.Repo})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	pdir := filepath.Join(dir, "policy")
	if err := os.MkdirAll(pdir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pdir, "fleet.yaml"), []byte("version: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.WatcherConfig{Dir: pdir})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	if err := srv.EnableOperatorAPI(reposerver.OperatorConfig{Fleet: store, PolicyDir: pdir, Policy: w.Policy, PolicyStatus: w.Status}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	s := &opServer{url: hs.URL, store: store, repo: res.Repo, dir: pdir, tok: map[fleet.Role]string{}}
	for _, r := range []fleet.Role{fleet.RoleSecurityAdmin, fleet.RoleReleaseManager, fleet.RoleAuditor} {
		tok, _, err := store.CreateToken(ctx, string(r)+"-op", r, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		s.tok[r] = tok
	}
	now := time.Now()
	for i, id := range []string{"cam-1", "cam-2", "cam-3"} {
		if err := store.Enroll(ctx, id, map[string]string{"line": "press"}, now); err != nil {
			t.Fatal(err)
		}
		if _, err := store.CheckIn(ctx, fleet.CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0", At: now,
			Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vibration", Version: "1.0.0"}}}); err != nil {
			t.Fatal(err)
		}
		v := policy.VerdictTrusted
		if i == 2 {
			v = policy.VerdictUntrusted
		}
		store.RecordVerdict(ctx, id, v, "measurement log replay: pcr 16 differs", now)
	}
	return s
}

func (s *opServer) cli(t *testing.T, role fleet.Role) *cli {
	c := newCLI(t)
	c.env["EDGEWARD_SERVER"] = s.url
	c.env["EDGEWARD_TOKEN"] = s.tok[role]
	return c
}

func TestCLIRollouts(t *testing.T) {
	s := newOpServer(t)
	rm := s.cli(t, fleet.RoleReleaseManager)
	out := rm.must("rollout", "create", "--id", "vib-2", "--name", "vibration", "--version", "2.0.0",
		"--waves", "34:10m,100:1h:approve", "--labels", "line=press", "--max-failure-ratio", "0.2")
	if !strings.Contains(out, "created rollout vib-2 (model vibration 2.0.0)") || !strings.Contains(out, "warning: the repository holds no model vibration 2.0.0") {
		t.Fatalf("rollout create:\n%s", out)
	}
	// A rollout that can never finish is created with a warning per reason (it was
	// accepted silently).
	out = rm.must("rollout", "create", "--id", "typo", "--name", "vibration", "--version", "2.0.0", "--waves", "10,50", "--labels", "line=prss")
	for _, want := range []string{"warning: no enrolled device matches the selector (labels line=prss)", "warning: the last wave is 50%"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollout create that cannot finish lacks %q:\n%s", want, out)
		}
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, policy.CreatedPrefix+"*-vib-2.yaml"))
	if len(files) != 1 {
		t.Fatalf("policy files %v", files)
	}
	data, _ := os.ReadFile(files[0])
	for _, want := range []string{"percent: 34", "soak: 10m", "approval: true", "line: press", "max_failure_ratio: 0.2"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("policy file lacks %q:\n%s", want, data)
		}
	}
	if _, _, err := rm.run("rollout", "create", "--id", "x", "--name", "v", "--version", "1.0.0", "--waves", "50,20"); err == nil || !strings.Contains(err.Error(), "400") {
		t.Fatalf("bad waves = %v; want the server's 400", err)
	}

	// A spec file (YAML, the fields of a policy-file rollout); flags override it.
	spec := writeTemp(t, "rollout.yaml", "id: rt-1\ntarget: {kind: runtime, name: onnxruntime, version: 1.0.0}\nwaves:\n  - {percent: 10, soak: 5m}\n  - {percent: 100}\n")
	out = rm.must("rollout", "create", "--file", spec, "--version", "1.24.1")
	if !strings.Contains(out, "created rollout rt-1 (runtime onnxruntime 1.24.1)") {
		t.Fatalf("rollout create --file:\n%s", out)
	}
	bad := writeTemp(t, "bad.yaml", "id: rt-2\ntarget: {kind: runtime, name: x, version: 1.0.0}\nwavez: []\n")
	if _, _, err := rm.run("rollout", "create", "--file", bad); err == nil || !strings.Contains(err.Error(), "wavez") {
		t.Fatalf("unknown field in a spec = %v", err)
	}

	out = rm.must("rollout", "pause", "vib-2", "--reason", "probe drift")
	if !strings.Contains(out, "rollout vib-2: paused (wave 0): probe drift") {
		t.Fatalf("pause:\n%s", out)
	}
	aud := s.cli(t, fleet.RoleAuditor)
	out = aud.must("rollout", "status", "vib-2")
	for _, want := range []string{"rollout vib-2: model vibration 2.0.0 — paused", "reason: probe drift", "selected devices: 3", "WAVE", "34%", "PAUSES AT", ">20% of >=3", "KPIs: 0 attempts", "paused", "operator:release-manager-op"} {
		if !strings.Contains(out, want) {
			t.Errorf("rollout status lacks %q:\n%s", want, out)
		}
	}
	// A committed install reports what its probe measured; the status shows it.
	if err := s.store.AddReport(context.Background(), wire.Report{DeviceID: "cam-1", RolloutID: "vib-2", Kind: artifact.KindModel, Name: "vibration",
		Version: "2.0.0", Outcome: wire.OutcomeCommitted, At: time.Now(), Probe: wire.Probe{Accuracy: 0.962, P99Ms: 2.5, PeakRSSMB: 48}}); err != nil {
		t.Fatal(err)
	}
	if out = aud.must("rollout", "status", "vib-2"); !strings.Contains(out, "mean accuracy 0.962, mean p99 2.50 ms, mean peak RSS 48.0 MB") {
		t.Errorf("rollout status lacks the probe figures:\n%s", out)
	}
	out = aud.must("rollout", "status")
	if !strings.Contains(out, "vib-2") || !strings.Contains(out, "probe drift") || !strings.Contains(out, "fleet: 3 devices") || !strings.Contains(out, "attestation pass rate 66.7%") {
		t.Fatalf("rollout list:\n%s", out)
	}
	if _, _, err := aud.run("rollout", "resume", "vib-2"); err == nil || !strings.Contains(err.Error(), "403") || !strings.Contains(err.Error(), "may not rollout.write") {
		t.Fatalf("auditor resume = %v; want 403", err)
	}
	rm.must("rollout", "resume", "vib-2")
	out = rm.must("rollout", "approve", "vib-2")
	if !strings.Contains(out, "approved (wave 1)") {
		t.Fatalf("approve:\n%s", out)
	}
	// --wave is sent as typed, numbered from 0 as status shows the waves: 0 and -1 were
	// dropped, and the next wave approved (or refused as "wave 2 (2 waves)").
	for _, tt := range []struct{ wave, want string }{
		{"0", "wave 0: wave needs no approval: the first wave starts as soon as the rollout is created; its waves are 0-1; wave 0 is current and wave 1 is next (approved already)"},
		{"-1", "wave -1 (as asked): no such wave: its waves are 0-1"},
	} {
		if _, _, err := rm.run("rollout", "approve", "vib-2", "--wave", tt.wave); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("rollout approve --wave %s = %v; want %q", tt.wave, err, tt.want)
		}
	}
	out = rm.must("rollout", "abort", "vib-2", "--reason", "superseded")
	if !strings.Contains(out, "aborted") {
		t.Fatalf("abort:\n%s", out)
	}
	// cam-1 committed the target: the abort says it keeps it, and how to replace it.
	if !strings.Contains(out, "1 of 3 selected devices committed") || !strings.Contains(out, "keep it") || !strings.Contains(out, "under a higher version") {
		t.Errorf("abort does not say that a device keeps the version it committed:\n%s", out)
	}
	out = rm.must("rollout", "status", "vib-2", "--json")
	if !strings.Contains(out, `"status": "aborted"`) {
		t.Fatalf("status --json:\n%s", out)
	}

	// The auditor exports the log through the server and verifies it offline.
	export := filepath.Join(t.TempDir(), "audit.jsonl")
	aud.must("audit", "export", "-o", export)
	pub := filepath.Join(t.TempDir(), "pub.pem")
	c := newCLI(t)
	c.repo = filepath.Dir(s.dir)
	os.WriteFile(pub, []byte(c.must("audit", "pubkey")), 0o644)
	out = c.must("audit", "verify", export, "--key", pub)
	if !strings.HasPrefix(out, "ok: ") {
		t.Fatalf("verify: %s", out)
	}
	data, _ = os.ReadFile(export)
	for _, want := range []string{`"kind":"rollout.create"`, `"kind":"rollout.paused"`, `"kind":"rollout.aborted"`, `"actor":"operator:release-manager-op@`} {
		if !strings.Contains(string(data), want) {
			t.Errorf("export lacks %s", want)
		}
	}
	if _, _, err := rm.run("audit", "export"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("release manager audit export = %v; want 403", err)
	}
}

func TestCLIDevices(t *testing.T) {
	s := newOpServer(t)
	aud := s.cli(t, fleet.RoleAuditor)
	out := aud.must("devices", "list")
	for _, want := range []string{"cam-1", "cam-3", "vibration 1.0.0", "untrusted", "line=press", "3 devices"} {
		if !strings.Contains(out, want) {
			t.Errorf("devices list lacks %q:\n%s", want, out)
		}
	}
	s.store.AddReport(context.Background(), wire.Report{DeviceID: "cam-3", Kind: artifact.KindModel, Name: "vibration", Version: "1.1.0",
		Outcome: wire.OutcomeProbeFailed, Cause: "accuracy 0.81 < 0.95", At: time.Now(), Probe: wire.Probe{Accuracy: 0.81, P99Ms: 1.5, PeakRSSMB: 44}})
	out = aud.must("devices", "show", "cam-3")
	for _, want := range []string{"device cam-3", "untrusted", "pcr 16 differs", "install history:", "probe_failed", "accuracy 0.81 < 0.95", "(failed 1.1.0)", "last update error",
		"accuracy 0.810 p99 1.50ms peak RSS 44.0MB"} {
		if !strings.Contains(out, want) {
			t.Errorf("devices show lacks %q:\n%s", want, out)
		}
	}
	if _, _, err := aud.run("devices", "show", "nope"); err == nil || !strings.Contains(err.Error(), "404") {
		t.Fatalf("show unknown = %v", err)
	}

	rm := s.cli(t, fleet.RoleReleaseManager)
	// The release manager offers cam-3 the version that failed on it again (audited).
	if _, _, err := aud.run("devices", "clear-failed", "cam-3"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("auditor clear-failed = %v; want 403", err)
	}
	if _, _, err := rm.run("devices", "clear-failed", "cam-3", "--kind", "probe"); err == nil || !strings.Contains(err.Error(), "want model or runtime") {
		t.Fatalf("clear-failed --kind probe = %v; want a usage error", err)
	}
	out = rm.must("devices", "clear-failed", "cam-3", "--kind", "model")
	if !strings.Contains(out, "device cam-3: cleared the failure of model vibration 1.1.0 (running 1.0.0)") || strings.Contains(out, "(failed") {
		t.Fatalf("clear-failed:\n%s", out)
	}
	if out = aud.must("devices", "show", "cam-3"); strings.Contains(out, "(failed 1.1.0)") {
		t.Errorf("devices show after clear-failed still shows the Failed mark:\n%s", out)
	}
	export := filepath.Join(t.TempDir(), "audit.jsonl")
	aud.must("audit", "export", "-o", export)
	if data, _ := os.ReadFile(export); !strings.Contains(string(data), `"kind":"device.clear_failed"`) || !strings.Contains(string(data), `"actor":"operator:release-manager-op@`) {
		t.Errorf("audit export lacks the clear-failed by the release manager:\n%s", data)
	}

	if _, _, err := rm.run("devices", "quarantine", "cam-1"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("release manager quarantine = %v; want 403", err)
	}
	admin := s.cli(t, fleet.RoleSecurityAdmin)
	out = admin.must("devices", "quarantine", "cam-1", "--reason", "stolen from site B")
	if !strings.Contains(out, "device cam-1 quarantined: stolen from site B") {
		t.Fatalf("quarantine: %s", out)
	}
	if out = aud.must("devices", "list"); !strings.Contains(out, "yes: stolen from site B") {
		t.Fatalf("list after quarantine:\n%s", out)
	}
	// Free text reaches the terminal escaped in the list too (it came raw before: a
	// reason could clear the screen and add lines).
	admin.must("devices", "release", "cam-1")
	admin.must("devices", "quarantine", "cam-1", "--reason", "stolen\x1b[2J\r\nALL CLEAR")
	if out = aud.must("devices", "list"); strings.ContainsAny(out, "\x1b\r") || !strings.Contains(out, `yes: stolen\x1b[2J\r\nALL CLEAR`) {
		t.Fatalf("list with a reason carrying escapes:\n%q", out)
	}
	if out = admin.must("devices", "release", "cam-1"); !strings.Contains(out, "device cam-1 released") {
		t.Fatalf("release: %s", out)
	}
	if _, _, err := rm.run("devices", "decommission", "cam-2"); err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("release manager decommission = %v; want 403", err)
	}
	if out = admin.must("devices", "decommission", "cam-2", "--reason", "water damage"); !strings.Contains(out, "device cam-2 decommissioned at ") || !strings.Contains(out, ": water damage") {
		t.Fatalf("decommission: %s", out)
	}
	if _, _, err := admin.run("devices", "decommission", "cam-2"); err == nil || !strings.Contains(err.Error(), "409") {
		t.Fatalf("second decommission = %v; want 409", err)
	}
	if out = aud.must("devices", "list"); !strings.Contains(out, "decommissioned: water damage") {
		t.Fatalf("list after decommission:\n%s", out)
	}
	if out = aud.must("devices", "show", "cam-2"); !strings.Contains(out, "decommissioned") || !strings.Contains(out, "water damage") {
		t.Fatalf("show after decommission:\n%s", out)
	}
	out = rm.must("devices", "label", "cam-1", "site=b", "line=")
	if !strings.Contains(out, "labels: site=b") || strings.Contains(out, "line=") {
		t.Fatalf("label: %s", out)
	}

	// Tokens through the server; the new token works, then is revoked.
	tok := strings.TrimSpace(admin.must("token", "create", "--name", "ada", "--role", "auditor", "--ttl", "1h"))
	out = admin.must("token", "list")
	if !strings.Contains(out, "ada") || strings.Contains(out, "ewo_") {
		t.Fatalf("token list:\n%s", out)
	}
	ada := newCLI(t)
	ada.env["EDGEWARD_SERVER"], ada.env["EDGEWARD_TOKEN"] = s.url, tok
	ada.must("devices", "list")
	id := tok[len("ewo_") : len("ewo_")+16] // ewo_<16 hex id>_<secret>
	admin.must("token", "revoke", id)
	_, _, err := ada.run("devices", "list")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != 401 || !strings.Contains(ae.Msg, "revoked") {
		t.Fatalf("revoked token = %v; want 401 revoked", err)
	}

	noServer := newCLI(t)
	if _, _, err := noServer.run("devices", "list"); err == nil || !strings.Contains(err.Error(), "--server") {
		t.Fatalf("no server = %v", err)
	}
}
