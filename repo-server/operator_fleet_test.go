package reposerver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/fsnotify/fsnotify"

	"github.com/edgeward/edgeward/repository"

	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// opFixture is a server with the operator API on a fleet store and a watched policy
// directory, and a token per role.
type opFixture struct {
	*fixture
	store   *fleet.Store
	dir     string
	watcher *policy.Watcher
	tok     map[fleet.Role]string
}

const opPolicy = `version: 1
attestation: {required: false}
rollouts:
  - id: vib-2
    target: {kind: model, name: vibration, version: 2.0.0}
    waves: [{percent: 50, soak: 1h}, {percent: 100, approval: true}]
`

func newOpFixture(t *testing.T) *opFixture {
	t.Helper()
	f := newFixture(t, repository.KeyEd25519)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "00-fleet.yaml"), []byte(opPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := policy.NewWatcher(policy.WatcherConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	go w.Run(ctx)
	err = f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, Signing: f.keyring(), MaxPublishBytes: 1 << 20,
		PolicyDir: dir, Policy: w.Policy, PolicyStatus: w.Status})
	if err != nil {
		t.Fatal(err)
	}
	o := &opFixture{fixture: f, store: store, dir: dir, watcher: w, tok: map[fleet.Role]string{}}
	for _, r := range []fleet.Role{fleet.RoleSecurityAdmin, fleet.RoleReleaseManager, fleet.RoleAuditor} {
		o.tok[r] = o.token(string(r)+"-op", r, time.Hour, f.clock.Now())
	}
	return o
}

func (o *opFixture) token(name string, role fleet.Role, ttl time.Duration, now time.Time) string {
	o.t.Helper()
	tok, _, err := o.store.CreateToken(context.Background(), name, role, ttl, now)
	if err != nil {
		o.t.Fatal(err)
	}
	return tok
}

// do sends a request with an optional bearer token and JSON body.
func (o *opFixture) do(method, path, tok, body string) (int, string) {
	o.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, o.http.URL+path, rd)
	if err != nil {
		o.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		o.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func (o *opFixture) must(method, path string, role fleet.Role, body string, want int, v any) {
	o.t.Helper()
	code, out := o.do(method, path, o.tok[role], body)
	if code != want {
		o.t.Fatalf("%s %s as %s = %d %s; want %d", method, path, role, code, out, want)
	}
	if v != nil {
		reflect.ValueOf(v).Elem().SetZero() // no field left over from an earlier answer
		if err := json.Unmarshal([]byte(out), v); err != nil {
			o.t.Fatalf("%s %s: %v in %s", method, path, err, out)
		}
	}
}

// seed enrolls devices with slots, verdicts and reports.
func (o *opFixture) seed(ids ...string) {
	o.t.Helper()
	ctx := context.Background()
	now := o.clock.Now()
	for _, id := range ids {
		if err := o.store.Enroll(ctx, id, map[string]string{"line": "press"}, now); err != nil {
			o.t.Fatal(err)
		}
		if _, err := o.store.CheckIn(ctx, fleet.CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0", At: now,
			Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vibration", Version: "1.0.0"}}}); err != nil {
			o.t.Fatal(err)
		}
		if err := o.store.RecordVerdict(ctx, id, policy.VerdictTrusted, "", now); err != nil {
			o.t.Fatal(err)
		}
	}
}

// routeCase is a request that reaches an endpoint's handler once authorized; allowed
// lists the roles that may call it (s: security-admin, r: release-manager, a: auditor).
type routeCase struct {
	pattern      string
	method, path string
	body         string
	allowed      string
}

func routeCases() []routeCase {
	return []routeCase{
		{"POST /v1/publish", "POST", "/v1/publish?kind=firmware&name=x&version=1.0.0", "", "r"},
		{"GET /v1/repository", "GET", "/v1/repository", "", "sra"},
		{"GET /v1/staged/{role}", "GET", "/v1/staged/models", "", "sra"},
		{"POST /v1/staged/{role}/signatures", "POST", "/v1/staged/models/signatures", "{", "s"},
		{"POST /v1/staged/{role}/publish", "POST", "/v1/staged/models/publish", "", "r"},
		{"GET /v1/audit/export", "GET", "/v1/audit/export", "", "sa"},
		{"GET /v1/audit/prove", "GET", "/v1/audit/prove?seq=1", "", "sa"},
		{"GET /v1/policy", "GET", "/v1/policy", "", "sra"},
		{"GET /v1/kpis", "GET", "/v1/kpis", "", "sra"},
		{"GET /v1/rollouts", "GET", "/v1/rollouts", "", "sra"},
		{"POST /v1/rollouts", "POST", "/v1/rollouts", `{"id":"BAD ID"}`, "r"},
		{"GET /v1/rollouts/{id}", "GET", "/v1/rollouts/vib-2", "", "sra"},
		{"POST /v1/rollouts/{id}/pause", "POST", "/v1/rollouts/nope/pause", "", "r"},
		{"POST /v1/rollouts/{id}/resume", "POST", "/v1/rollouts/nope/resume", "", "r"},
		{"POST /v1/rollouts/{id}/abort", "POST", "/v1/rollouts/nope/abort", "", "r"},
		{"POST /v1/rollouts/{id}/approve", "POST", "/v1/rollouts/nope/approve", "", "r"},
		{"GET /v1/devices", "GET", "/v1/devices", "", "sra"},
		{"GET /v1/devices/{id}", "GET", "/v1/devices/dev-1", "", "sra"},
		{"POST /v1/devices/{id}/quarantine", "POST", "/v1/devices/nope/quarantine", "", "s"},
		{"POST /v1/devices/{id}/release", "POST", "/v1/devices/nope/release", "", "s"},
		{"POST /v1/devices/{id}/decommission", "POST", "/v1/devices/nope/decommission", "", "s"},
		{"PUT /v1/devices/{id}/labels", "PUT", "/v1/devices/nope/labels", `{"labels":{}}`, "r"},
		{"POST /v1/devices/{id}/clear-failed", "POST", "/v1/devices/nope/clear-failed", `{"kind":"model"}`, "r"},
		{"GET /v1/tokens", "GET", "/v1/tokens", "", "s"},
		{"POST /v1/tokens", "POST", "/v1/tokens", `{"operator":"x","role":"nobody"}`, "s"},
		{"DELETE /v1/tokens/{id}", "DELETE", "/v1/tokens/nope", "", "s"},
	}
}

// TestOperatorAuthorization calls every endpoint as every role (allowed: the handler
// answers; denied: 403), and without a valid credential (401).
func TestOperatorAuthorization(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1")
	cases := routeCases()

	var patterns []string
	for _, e := range (&operatorAPI{}).endpoints() {
		patterns = append(patterns, e.pattern)
	}
	var covered []string
	for _, c := range cases {
		covered = append(covered, c.pattern)
	}
	slices.Sort(patterns)
	slices.Sort(covered)
	if !slices.Equal(patterns, covered) {
		t.Fatalf("endpoints %v\ncovered by the test %v", patterns, covered)
	}

	letter := map[fleet.Role]string{fleet.RoleSecurityAdmin: "s", fleet.RoleReleaseManager: "r", fleet.RoleAuditor: "a"}
	for _, c := range cases {
		for role, l := range letter {
			code, body := o.do(c.method, c.path, o.tok[role], c.body)
			if strings.Contains(c.allowed, l) {
				if code == 401 || code == 403 {
					t.Errorf("%s %s as %s = %d %s; want it allowed", c.method, c.path, role, code, body)
				}
			} else if code != 403 || !strings.Contains(body, "may not") {
				t.Errorf("%s %s as %s = %d %s; want 403", c.method, c.path, role, code, body)
			}
		}
	}

	now := o.clock.Now()
	expired := o.token("late", fleet.RoleSecurityAdmin, time.Hour, now.Add(-2*time.Hour))
	revoked := o.token("gone", fleet.RoleSecurityAdmin, time.Hour, now)
	tokens, _ := o.store.Tokens(context.Background())
	for _, ti := range tokens {
		if ti.Operator == "gone" {
			// Revoked through the API by the security admin.
			o.must("DELETE", "/v1/tokens/"+ti.ID, fleet.RoleSecurityAdmin, "", 200, nil)
		}
	}
	creds := []struct{ name, header, want string }{
		{"none", "", "missing bearer token"},
		{"basic auth", "Basic cml0YTpzM2NyZXQ=", "missing bearer token"},
		{"garbage", "Bearer not-a-token", "malformed token"},
		{"unknown", "Bearer ewo_0000000000000000_AAAA", "unknown token"},
		{"expired", "Bearer " + expired, "token expired"},
		{"revoked", "Bearer " + revoked, "token revoked"},
	}
	for _, c := range cases {
		for _, cr := range creds {
			req, _ := http.NewRequest(c.method, o.http.URL+c.path, strings.NewReader(c.body))
			if cr.header != "" {
				req.Header.Set("Authorization", cr.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 401 || !strings.Contains(string(b), cr.want) {
				t.Errorf("%s %s with %s credential = %d %s; want 401 %q", c.method, c.path, cr.name, resp.StatusCode, b, cr.want)
			}
			// Refused bearer tokens are rate-limited per address (one comes back every
			// 3 s; TestRefusedBearerTokensAreRateLimited): this test is not a guesser.
			o.clock.Add(3 * time.Second)
			if strings.Contains(string(b), "ewo_") {
				t.Errorf("%s %s: the error echoes a token: %s", c.method, c.path, b)
			}
		}
	}
}

// TestOperatorTokenIsNothingToTheDeviceAPI: the device API ignores operator
// credentials; a check-in with a security admin's token and no TPM evidence stores
// nothing, and the device API's nonce endpoint is the same with or without it.
func TestOperatorTokenIsNothingToTheDeviceAPI(t *testing.T) {
	o := newOpFixture(t)
	_, root, err := attestca.NewRoot("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca := root
	pool := newPool(ca)
	if err := o.srv.EnableDeviceAPI(DeviceConfig{Fleet: o.store, AttestRoots: pool, Policy: o.watcher.Policy}); err != nil {
		t.Fatal(err)
	}
	admin := o.tok[fleet.RoleSecurityAdmin]
	code, body := o.do("POST", wire.PathNonce, admin, `{"device_id":"dev-9"}`)
	if code != 200 {
		t.Fatalf("nonce = %d %s", code, body)
	}
	var n wire.NonceResponse
	json.Unmarshal([]byte(body), &n)
	req := wire.CheckInRequest{DeviceID: "dev-9", Nonce: n.Nonce, Hardware: "x86_64", AgentVersion: "0.1.0",
		Labels: map[string]string{"line": "press"}}
	js, _ := json.Marshal(req)
	code, body = o.do("POST", wire.PathCheckIn, admin, string(js))
	if code < 400 || code >= 500 {
		t.Fatalf("check-in with an operator token and no evidence = %d %s; want a 4xx refusal", code, body)
	}
	if _, err := o.store.Device(context.Background(), "dev-9"); !errors.Is(err, fleet.ErrNotFound) {
		t.Fatalf("device after a refused check-in: %v; want not found", err)
	}
	// And the operator API shows the attempt as a rejection by the device's own name,
	// never as the operator's.
	var rep strings.Builder
	l, db, _ := OpenAuditAt(context.Background(), o.repo, o.db)
	defer db.Close()
	recs, _ := l.Records(context.Background(), audit.Query{})
	for _, r := range recs {
		if strings.HasPrefix(r.Actor, "operator:") {
			rep.WriteString(r.Actor + " " + r.Kind + "\n")
		}
	}
	if rep.Len() > 0 {
		t.Fatalf("the device API attributed something to an operator:\n%s", rep.String())
	}
}

func TestOperatorRollouts(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	o.seed("dev-1", "dev-2", "dev-3", "dev-4")
	rm := fleet.RoleReleaseManager

	// Create: the file lands in the policy directory and the watcher loads it.
	var created operatorapi.RolloutCreated
	o.must("POST", "/v1/rollouts", rm, `{"id":"vib-3","target":{"kind":"model","name":"vibration","version":"3.0.0"},
		"selector":{"labels":{"line":"press"}},"waves":[{"percent":25,"soak":"10m"},{"percent":100,"approval":true,"soak":"1h"}]}`, 201, &created)
	if !created.Loaded || !strings.HasPrefix(created.File, policy.CreatedPrefix) || !strings.Contains(created.Warning, "no model vibration 3.0.0") {
		t.Fatalf("create = %+v", created)
	}
	if _, err := os.Stat(filepath.Join(o.dir, created.File)); err != nil {
		t.Fatal(err)
	}
	// An ID already defined is a conflict (409), naming the ID and where it is
	// defined, and writes no file.
	before, _ := os.ReadDir(o.dir)
	code, body := o.do("POST", "/v1/rollouts", o.tok[rm], `{"id":"vib-3","target":{"kind":"model","name":"vibration","version":"3.0.1"}}`)
	if code != 409 || !strings.Contains(body, `rollout \"vib-3\" already exists`) || !strings.Contains(body, created.File) {
		t.Fatalf("duplicate rollout = %d %s; want 409 naming vib-3 and %s", code, body, created.File)
	}
	if after, _ := os.ReadDir(o.dir); len(after) != len(before) {
		t.Fatalf("a refused duplicate rollout left files: %v, before %v", after, before)
	}
	code, body = o.do("POST", "/v1/rollouts", o.tok[rm], `{"id":"x","target":{"kind":"model","name":"v","version":"1.0.0"},"waves":[{"percent":50},{"percent":20}]}`)
	if code != 400 || !strings.Contains(body, "wave") {
		t.Fatalf("non-increasing waves = %d %s; want 400 naming the waves", code, body)
	}

	var list struct{ Rollouts []operatorapi.RolloutSummary }
	o.must("GET", "/v1/rollouts", fleet.RoleAuditor, "", 200, &list)
	if len(list.Rollouts) != 2 || list.Rollouts[1].ID != "vib-3" && list.Rollouts[0].ID != "vib-3" {
		t.Fatalf("rollouts = %+v", list.Rollouts)
	}

	// Pause before the planner ever ran: the rollout is started, then paused.
	var ch operatorapi.RolloutChanged
	o.must("POST", "/v1/rollouts/vib-3/pause", rm, `{"reason":"probe drift on line 3"}`, 200, &ch)
	if ch.State.Status != policy.StatusPaused || ch.State.Reason != "probe drift on line 3" || len(ch.Events) != 3 {
		t.Fatalf("pause = %+v", ch)
	}
	code, body = o.do("POST", "/v1/rollouts/vib-3/pause", o.tok[rm], "")
	if code != 409 {
		t.Fatalf("pause twice = %d %s; want 409", code, body)
	}
	var st fleet.RolloutStatus
	o.must("GET", "/v1/rollouts/vib-3", fleet.RoleAuditor, "", 200, &st)
	if st.State.Status != policy.StatusPaused || st.State.Reason != "probe drift on line 3" || st.Selected != 4 || len(st.Waves) != 2 {
		t.Fatalf("status = %+v", st)
	}
	o.must("POST", "/v1/rollouts/vib-3/resume", rm, "", 200, &ch)
	if ch.State.Status != policy.StatusActive || !strings.HasPrefix(ch.Events[0].Actor, "operator:release-manager-op@") {
		t.Fatalf("resume = %+v", ch)
	}
	// The first wave soaks 10 minutes from the resume; approving wave 1 after that
	// starts it at once.
	o.clock.Add(11 * time.Minute)
	o.must("POST", "/v1/rollouts/vib-3/approve", rm, `{"wave":1}`, 200, &ch)
	if !slices.Contains(ch.State.Approved, 1) || ch.State.Wave != 1 || len(ch.Events) != 2 || ch.Events[1].Type != policy.EventWaveStarted {
		t.Fatalf("approve = %+v", ch)
	}
	code, body = o.do("POST", "/v1/rollouts/vib-3/approve", o.tok[rm], `{"wave":7}`)
	if code != 400 || !strings.Contains(body, "no such wave") {
		t.Fatalf("approve wave 7 = %d %s", code, body)
	}
	// An explicit wave 0 is wave 0 (it approved the next wave before), which starts
	// with the rollout, and a wave approved and started is not approved again (each
	// was another event).
	code, body = o.do("POST", "/v1/rollouts/vib-3/approve", o.tok[rm], `{"wave":0}`)
	if code != 409 || !strings.Contains(body, "wave 0: wave needs no approval") {
		t.Fatalf("approve wave 0 = %d %s; want 409", code, body)
	}
	// Approving again, without a wave or with one the rollout lacks, says which waves
	// there are (it said "wave 2 (2 waves): no such wave").
	for _, tt := range []struct{ body, want string }{
		{``, `wave 2 (no wave given: the one after the current): no such wave: its waves are 0-1; wave 1, the last, is current: no wave is left to approve`},
		{`{"wave":-1}`, `wave -1 (as asked): no such wave: its waves are 0-1`},
	} {
		code, body = o.do("POST", "/v1/rollouts/vib-3/approve", o.tok[rm], tt.body)
		if code != 400 || !strings.Contains(body, tt.want) {
			t.Errorf("approve %s = %d %s; want 400 saying %q", tt.body, code, body, tt.want)
		}
	}
	code, body = o.do("POST", "/v1/rollouts/vib-3/approve", o.tok[rm], `{"wave":1}`)
	if code != 409 || !strings.Contains(body, "needs no approval") {
		t.Fatalf("approve wave 1 again = %d %s; want 409", code, body)
	}

	// Reports feed the KPIs of the status.
	now := o.clock.Now()
	for i, id := range []string{"dev-1", "dev-2"} {
		out := wire.OutcomeCommitted
		if i == 1 {
			out = wire.OutcomeProbeFailed
		}
		err := o.store.AddReport(ctx, wire.Report{DeviceID: id, RolloutID: "vib-3", Kind: artifact.KindModel, Name: "vibration",
			Version: "3.0.0", Outcome: out, Cause: "accuracy 0.80 < 0.95", Bytes: 1000, Probe: wire.Probe{Accuracy: 0.97}, At: now})
		if err != nil {
			t.Fatal(err)
		}
	}
	o.must("GET", "/v1/rollouts/vib-3", rm, "", 200, &st)
	if st.KPI.Attempts != 2 || st.KPI.SuccessRate != 0.5 || st.KPI.BytesDownloaded != 2000 || st.KPI.Failures[wire.OutcomeProbeFailed] != 1 {
		t.Fatalf("KPI = %+v", st.KPI)
	}
	// 3.0.0 was never published: the devices wait for the target, and the status says
	// so (it said "waiting for devices").
	if !strings.HasPrefix(st.Progress, "waiting for the target: the repository holds no model vibration 3.0.0") {
		t.Fatalf("progress of a rollout whose target is not published = %q", st.Progress)
	}
	var sum operatorapi.FleetSummary
	o.must("GET", "/v1/kpis?since=1h", fleet.RoleAuditor, "", 200, &sum)
	if sum.Devices != 4 || sum.KPI.Attempts != 2 || sum.Verdicts["trusted"] != 4 {
		t.Fatalf("fleet summary = %+v", sum)
	}

	o.must("POST", "/v1/rollouts/vib-3/abort", rm, `{"reason":"bad model"}`, 200, &ch)
	if ch.State.Status != policy.StatusAborted {
		t.Fatalf("abort = %+v", ch)
	}
	if code, _ := o.do("POST", "/v1/rollouts/vib-3/resume", o.tok[rm], ""); code != 409 {
		t.Fatalf("resume after abort = %d; want 409", code)
	}
	if code, _ := o.do("POST", "/v1/rollouts/nope/pause", o.tok[rm], ""); code != 404 {
		t.Fatalf("pause unknown = %d; want 404", code)
	}

	// Every write is in the audit log, attributed, and the log verifies.
	code, body = o.do("GET", "/v1/audit/export", o.tok[fleet.RoleAuditor], "")
	if code != 200 {
		t.Fatalf("export = %d", code)
	}
	for _, want := range []string{`"kind":"rollout.create"`, `"kind":"rollout.paused"`, `"kind":"rollout.resumed"`, `"kind":"rollout.approved"`, `"kind":"rollout.aborted"`, `"actor":"operator:release-manager-op@`} {
		if !strings.Contains(body, want) {
			t.Errorf("audit export lacks %s", want)
		}
	}
	l, db, _ := OpenAuditAt(ctx, o.repo, o.db)
	defer db.Close()
	if _, err := audit.Verify(strings.NewReader(body), audit.VerifyOptions{LogKey: l.Verifier()}); err != nil {
		t.Fatalf("verify: %v", err)
	}

	var ps map[string]any
	o.must("GET", "/v1/policy", fleet.RoleAuditor, "", 200, &ps)
	if ps["rollouts"] != float64(2) || ps["writable"] != true {
		t.Fatalf("policy = %v", ps)
	}
}

func TestOperatorDevices(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	ekID := "urn:ek:sha256:ab/cd+ef="
	o.seed("dev-1", "dev-2", ekID)
	now := o.clock.Now()
	o.store.RecordVerdict(ctx, "dev-1", policy.VerdictUntrusted, "pcr 16 mismatch", now.Add(time.Minute))
	o.store.AddReport(ctx, wire.Report{DeviceID: "dev-1", Kind: artifact.KindModel, Name: "vibration", Version: "2.0.0",
		Outcome: wire.OutcomeRolledBack, Cause: "p99 9ms > 5ms", At: now})
	o.store.RecordDecision(ctx, policy.Decision{DeviceID: "dev-1", At: now, PolicyDigest: "abc",
		Slots: []policy.SlotDecision{{Kind: artifact.KindModel, Action: policy.ActionHold, Reason: policy.ReasonFailedOnDevice}}})

	var list operatorapi.DeviceList
	o.must("GET", "/v1/devices?limit=2", fleet.RoleAuditor, "", 200, &list)
	if len(list.Devices) != 2 || list.Next != "dev-2" {
		t.Fatalf("page 1 = %+v", list)
	}
	after := list.Next
	list = operatorapi.DeviceList{}
	o.must("GET", "/v1/devices?after="+after, fleet.RoleAuditor, "", 200, &list)
	if len(list.Devices) != 1 || list.Devices[0].ID != ekID || list.Next != "" {
		t.Fatalf("page 2 = %+v", list)
	}

	var d operatorapi.DeviceDetail
	o.must("GET", "/v1/devices/dev-1", fleet.RoleAuditor, "", 200, &d)
	if d.Device.Verdict != policy.VerdictUntrusted || len(d.Verdicts) != 2 || d.Verdicts[0].Detail != "pcr 16 mismatch" ||
		len(d.Reports) != 1 || d.Reports[0].Cause != "p99 9ms > 5ms" || len(d.Decisions) != 1 || d.Device.Slots[artifact.KindModel].Failed != "2.0.0" {
		t.Fatalf("device = %+v", d)
	}
	// An ID with '/' travels percent-encoded.
	o.must("GET", "/v1/devices/"+url.PathEscape(ekID), fleet.RoleAuditor, "", 200, &d)
	if d.Device.ID != ekID {
		t.Fatalf("device %q = %+v", ekID, d.Device)
	}
	if code, _ := o.do("GET", "/v1/devices/nope", o.tok[fleet.RoleAuditor], ""); code != 404 {
		t.Fatalf("unknown device = %d", code)
	}

	var dv operatorapi.DeviceView
	o.must("POST", "/v1/devices/dev-2/quarantine", fleet.RoleSecurityAdmin, `{"reason":"stolen"}`, 200, &dv)
	if !dv.Quarantined || dv.QuarantineReason != "stolen" {
		t.Fatalf("quarantine = %+v", dv)
	}
	o.must("POST", "/v1/devices/dev-2/release", fleet.RoleSecurityAdmin, "", 200, &dv)
	if dv.Quarantined {
		t.Fatalf("release = %+v", dv)
	}
	o.must("PUT", "/v1/devices/dev-2/labels", fleet.RoleReleaseManager, `{"labels":{"line":"lathe","site":"<b>x</b>"}}`, 200, &dv)
	if dv.Labels["line"] != "lathe" {
		t.Fatalf("labels = %+v", dv)
	}
	if code, body := o.do("PUT", "/v1/devices/dev-2/labels", o.tok[fleet.RoleReleaseManager], `{"labels":{"BAD KEY":"x"}}`); code != 400 {
		t.Fatalf("bad label = %d %s", code, body)
	}
	o.must("POST", "/v1/devices/dev-1/clear-failed", fleet.RoleReleaseManager, `{"kind":"model"}`, 200, &dv)
	if dv.Slots[artifact.KindModel].Failed != "" {
		t.Fatalf("clear failed = %+v", dv)
	}

	code, body := o.do("GET", "/v1/audit/export", o.tok[fleet.RoleSecurityAdmin], "")
	for _, want := range []string{`"kind":"device.quarantine"`, `"kind":"device.release"`, `"kind":"device.labels"`, `"kind":"device.clear_failed"`, `"actor":"operator:security-admin-op@`} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("audit export lacks %s", want)
		}
	}
}

func TestOperatorTokens(t *testing.T) {
	o := newOpFixture(t)
	var tc operatorapi.TokenCreated
	o.must("POST", "/v1/tokens", fleet.RoleSecurityAdmin, `{"operator":"ada","role":"auditor","ttl":"2h"}`, 201, &tc)
	if !strings.HasPrefix(tc.Token, "ewo_") || tc.Info.Role != fleet.RoleAuditor {
		t.Fatalf("token = %+v", tc)
	}
	if code, _ := o.do("GET", "/v1/audit/export", tc.Token, ""); code != 200 {
		t.Fatalf("new auditor exports = %d", code)
	}
	code, body := o.do("GET", "/v1/tokens", o.tok[fleet.RoleSecurityAdmin], "")
	if code != 200 || !strings.Contains(body, `"operator":"ada"`) || strings.Contains(body, "ewo_") {
		t.Fatalf("token list = %d %s", code, body)
	}
	if code, body := o.do("POST", "/v1/tokens", o.tok[fleet.RoleSecurityAdmin], `{"operator":"x","role":"auditor","ttl":"9000h"}`); code != 400 {
		t.Fatalf("too long ttl = %d %s", code, body)
	}
	o.must("DELETE", "/v1/tokens/"+tc.Info.ID, fleet.RoleSecurityAdmin, "", 200, nil)
	if code, body := o.do("GET", "/v1/rollouts", tc.Token, ""); code != 401 || !strings.Contains(body, "revoked") {
		t.Fatalf("revoked token = %d %s", code, body)
	}
	code, body = o.do("GET", "/v1/audit/export", o.tok[fleet.RoleAuditor], "")
	if code != 200 || !strings.Contains(body, `"kind":"token.create"`) || !strings.Contains(body, `"kind":"token.revoke"`) || strings.Contains(body, tc.Token) {
		t.Fatalf("audit of tokens = %d (token.create, token.revoke, never the secret)", code)
	}
}

func TestOperatorFleetMetrics(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1", "dev-2")
	_, root, _ := attestca.NewRoot("test CA", time.Hour)
	// The device API registers its own verdict counter after the fleet collector.
	if err := o.srv.EnableDeviceAPI(DeviceConfig{Fleet: o.store, AttestRoots: newPool(root)}); err != nil {
		t.Fatal(err)
	}
	o.store.SaveRollout(context.Background(), policy.RolloutState{ID: "vib-2", Status: policy.StatusPaused, Wave: 1}, nil)
	resp, err := http.Get(o.http.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"edgeward_fleet_devices 2", `edgeward_rollout_status{rollout="vib-2",status="paused"} 1`, `edgeward_rollout_wave{rollout="vib-2"} 1`} {
		if resp.StatusCode != 200 || !strings.Contains(string(b), want) {
			t.Errorf("/metrics lacks %s (status %d)", want, resp.StatusCode)
		}
	}
}

func newPool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestDeviceCertificateIsNothingToTheOperatorAPI serves the operator API over TLS that
// asks for client certificates (as a listener for device mTLS does) and presents a
// device certificate: without an operator token every endpoint answers 401.
func TestDeviceCertificateIsNothingToTheOperatorAPI(t *testing.T) {
	o := newOpFixture(t)
	signer, ca, err := attestca.NewRoot("device CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "dev-1", OrganizationalUnit: []string{"security-admin"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(o.srv.Handler())
	ts.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: newPool(ca)}
	ts.StartTLS()
	defer ts.Close()
	client := ts.Client()
	client.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}
	for _, c := range routeCases() {
		req, _ := http.NewRequest(c.method, ts.URL+c.path, strings.NewReader(c.body))
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.TLS == nil || len(resp.TLS.PeerCertificates) == 0 {
			t.Fatal("not a TLS connection")
		}
		if resp.StatusCode != 401 {
			t.Errorf("%s %s with a device certificate = %d; want 401", c.method, c.path, resp.StatusCode)
		}
	}
}

// TestRolloutCreateWaitsForOtherReplicas: creating a rollout checks the new policy file
// against the whole policy directory, which replicas share; while another replica holds
// the publish lease (creating a rollout or publishing), a creation waits, and nothing
// is written until it is released.
func TestRolloutCreateWaitsForOtherReplicas(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	st := o.srv.leases()
	if st == nil {
		t.Fatal("the operator API's server has no fleet store: no leases")
	}
	held, err := st.AcquireLease(ctx, LeasePublish, "other-replica/1", time.Hour, o.clock.Now())
	if err != nil || held.Holder != "other-replica/1" {
		t.Fatalf("publish lease = %+v, %v", held, err)
	}
	done := make(chan int, 1)
	go func() {
		code, _ := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], `{"id":"vib-9","target":{"kind":"model","name":"vibration","version":"9.0.0"}}`)
		done <- code
	}()
	select {
	case code := <-done:
		t.Fatalf("rollout created (%d) while another replica held the publish lease", code)
	case <-time.After(500 * time.Millisecond):
	}
	if files, _ := filepath.Glob(filepath.Join(o.dir, policy.CreatedPrefix+"*")); len(files) != 0 {
		t.Fatalf("policy files written while another replica held the lease: %v", files)
	}
	if err := st.ReleaseLease(ctx, held); err != nil {
		t.Fatal(err)
	}
	if code := <-done; code != http.StatusCreated {
		t.Fatalf("rollout create after the lease was released = %d; want 201", code)
	}
}

// TestRolloutCreateFailsClosed (issue 12): the audit append of a rollout creation fails
// (an injected failure in the audit table). The creation is refused with a 5xx, and no
// file the policy watcher loads ever appears in the policy directory, not even for a
// moment (every file event is watched); the rollout is not in force. Once the audit log
// works, the same creation succeeds with its one audit record.
func TestRolloutCreateFailsClosed(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	db, err := OpenDB(ctx, DBLocation(o.repo.Dir(), o.db))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	fsw, err := fsnotify.NewWatcher()
	if err != nil {
		t.Fatal(err)
	}
	defer fsw.Close()
	if err := fsw.Add(o.dir); err != nil {
		t.Fatal(err)
	}
	loadable := func(name string) bool {
		base := filepath.Base(name)
		return !strings.HasPrefix(base, ".") && (filepath.Ext(base) == ".yaml" || filepath.Ext(base) == ".yml")
	}
	spec := `{"id":"vib-9","target":{"kind":"model","name":"vibration","version":"9.0.0"}}`

	undo := injectFailure(t, db, o.db != "", "audit_leaves")
	code, body := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], spec)
	if code < 500 {
		t.Fatalf("create with the audit log failing = %d %s; want a 5xx", code, body)
	}
	undo()
	var seen []string
	for drained := false; !drained; {
		select {
		case ev := <-fsw.Events:
			seen = append(seen, ev.String())
			if loadable(ev.Name) {
				t.Errorf("a policy file appeared while its audit record failed: %s", ev)
			}
		case err := <-fsw.Errors:
			t.Fatal(err)
		case <-time.After(200 * time.Millisecond):
			drained = true
		}
	}
	if len(seen) == 0 {
		t.Error("no file event at all: the watch saw nothing (the staged file's events were expected)")
	}
	entries, _ := os.ReadDir(o.dir)
	for _, e := range entries {
		if e.Name() != "00-fleet.yaml" {
			t.Errorf("policy directory holds %s after the refused creation; want only 00-fleet.yaml", e.Name())
		}
	}
	for _, ro := range o.watcher.Policy().Rollouts {
		if ro.ID == "vib-9" {
			t.Fatal("the unaudited rollout is in force")
		}
	}

	var created operatorapi.RolloutCreated
	o.must("POST", "/v1/rollouts", fleet.RoleReleaseManager, spec, 201, &created)
	if !created.Loaded {
		t.Fatalf("create after the audit log recovered = %+v; want loaded", created)
	}
	l, adb, err := OpenAuditAt(ctx, o.repo, o.db)
	if err != nil {
		t.Fatal(err)
	}
	defer adb.Close()
	recs, err := l.Records(ctx, audit.Query{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Kind == "rollout.create" && r.Subject == "vib-9" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d rollout.create records for vib-9; want 1", n)
	}
}

// TestRefusedBearerTokensAreRateLimited (issue 12): guesses of bearer tokens from one
// client address get BearerFailures.Burst answers (401), then 429 with Retry-After
// before the token is looked at, a valid token from that address too; another address
// is not affected, and the bucket refills with time. The counts are in the fleet
// database: a second server on it (another replica) refuses the same address.
func TestRefusedBearerTokensAreRateLimited(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	get := func(h http.Handler, src, tok string) (int, http.Header) {
		req := httptest.NewRequest("GET", "/v1/rollouts", nil)
		req.RemoteAddr = src
		req.Header.Set("Authorization", "Bearer "+tok)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec.Code, rec.Header()
	}
	h := o.srv.Handler()
	counts := map[int]int{}
	for i := range 100 {
		code, hdr := get(h, "198.51.100.7:4000", fmt.Sprintf("ewo_guess%d_x", i))
		counts[code]++
		if code == http.StatusTooManyRequests && hdr.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if counts[http.StatusUnauthorized] != 20 || counts[http.StatusTooManyRequests] != 80 {
		t.Fatalf("100 guesses from one address = %v; want 20 answered 401 and 80 refused with 429", counts)
	}
	if code, _ := get(h, "198.51.100.7:4001", o.tok[fleet.RoleAuditor]); code != http.StatusTooManyRequests {
		t.Errorf("a valid token from the limited address = %d; want 429", code)
	}
	if code, _ := get(h, "198.51.100.8:4000", o.tok[fleet.RoleAuditor]); code != http.StatusOK {
		t.Errorf("a valid token from another address = %d; want 200", code)
	}
	// Another replica on the same database refuses the limited address as well.
	srv2, err := NewServer(ServerConfig{Repo: o.repo, DB: o.db})
	if err != nil {
		t.Fatal(err)
	}
	store2, err := fleet.Open(ctx, DBLocation(o.repo.Dir(), o.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store2.Close()
	if err := srv2.EnableOperatorAPI(OperatorConfig{Fleet: store2}); err != nil {
		t.Fatal(err)
	}
	if code, _ := get(srv2.Handler(), "198.51.100.7:4002", o.tok[fleet.RoleAuditor]); code != http.StatusTooManyRequests {
		t.Errorf("the limited address at another replica = %d; want 429", code)
	}
	o.clock.Add(4 * time.Second) // one refused token every 3 s comes back
	if code, _ := get(h, "198.51.100.7:4000", o.tok[fleet.RoleAuditor]); code != http.StatusOK {
		t.Errorf("a valid token from the limited address after the refill = %d; want 200", code)
	}
	// A valid token takes nothing: the one attempt that came back is still there.
	if code, _ := get(h, "198.51.100.7:4000", "ewo_guess_again_x"); code != http.StatusUnauthorized {
		t.Errorf("a guess after the refill = %d; want 401", code)
	}
	if code, _ := get(h, "198.51.100.7:4000", "ewo_guess_more_x"); code != http.StatusTooManyRequests {
		t.Errorf("a second guess after the refill = %d; want 429", code)
	}
}

// TestConcurrentBearerGuessesAreLimited: guesses sent from one address all at once do
// not get past the refused-token limit (its burst, 20): the bucket was read before each
// check and taken from after it, so every concurrent guess passed the read. Valid
// requests sent at once are not limited.
func TestConcurrentBearerGuessesAreLimited(t *testing.T) {
	o := newOpFixture(t)
	h := o.srv.Handler()
	var mu sync.Mutex
	counts := map[int]int{}
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest("GET", "/v1/rollouts", nil)
			req.RemoteAddr = "198.51.100.9:4000"
			req.Header.Set("Authorization", fmt.Sprintf("Bearer ewo_guess%d_x", i))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			mu.Lock()
			counts[rec.Code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[http.StatusUnauthorized] > 20 || counts[http.StatusUnauthorized]+counts[http.StatusTooManyRequests] != 60 {
		t.Fatalf("60 concurrent guesses from one address = %v; want at most the burst of 20 checked (401), the rest 429", counts)
	}
	// Operators behind one address (a proxy) sending requests at once are not held up:
	// the bound is the attempts left, not a fixed number of checks.
	counts = map[int]int{}
	for range 15 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := httptest.NewRequest("GET", "/v1/rollouts", nil)
			req.RemoteAddr = "198.51.100.10:4000"
			req.Header.Set("Authorization", "Bearer "+o.tok[fleet.RoleAuditor])
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			mu.Lock()
			counts[rec.Code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	if counts[http.StatusOK] != 15 {
		t.Fatalf("15 concurrent requests with a valid token from one address = %v; want 15 answered 200", counts)
	}
}

// TestOperatorLabelsRequired: PUT /v1/devices/{id}/labels without the labels ({} or
// null, a client's mistake) is refused 400 and changes nothing; {"labels":{}} clears
// them.
func TestOperatorLabelsRequired(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1")
	rm := fleet.RoleReleaseManager
	for _, tc := range []struct {
		body   string
		code   int
		labels map[string]string // afterwards
	}{
		{`{}`, 400, map[string]string{"line": "press"}},
		{`{"labels":null}`, 400, map[string]string{"line": "press"}},
		{`{"labels":{"site":"berlin"}}`, 200, map[string]string{"site": "berlin"}},
		{`{"labels":{}}`, 200, map[string]string{}},
	} {
		code, body := o.do("PUT", "/v1/devices/dev-1/labels", o.tok[rm], tc.body)
		if code != tc.code || (code == 400 && !strings.Contains(body, "labels missing")) {
			t.Errorf("PUT labels %s = %d %s; want %d", tc.body, code, body, tc.code)
		}
		d, err := o.store.Device(context.Background(), "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Labels; len(got) != len(tc.labels) || (len(got) > 0 && !reflect.DeepEqual(got, tc.labels)) {
			t.Errorf("after PUT labels %s: labels = %v; want %v", tc.body, got, tc.labels)
		}
	}
}

// TestOperatorContentType: the operator API decodes a body sent as application/json,
// with parameters or none, and refuses 415 another media type, even one that starts
// with application/json.
func TestOperatorContentType(t *testing.T) {
	o := newOpFixture(t)
	o.seed("dev-1")
	for _, tc := range []struct {
		ct   string
		code int
	}{
		{"application/json", 200},
		{"application/json; charset=utf-8", 200},
		{"Application/JSON;charset=UTF-8", 200},
		{"", 200},
		{"application/jsonp", 415},
		{"application/json-seq", 415},
		{"application/json; charset=latin1", 415},
		{"application/json;;", 415},
		{"text/plain", 415},
	} {
		req, err := http.NewRequest("PUT", o.http.URL+"/v1/devices/dev-1/labels", strings.NewReader(`{"labels":{"site":"berlin"}}`))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+o.tok[fleet.RoleReleaseManager])
		if tc.ct != "" {
			req.Header.Set("Content-Type", tc.ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.code {
			t.Errorf("PUT labels with Content-Type %q = %d %s; want %d", tc.ct, resp.StatusCode, b, tc.code)
		}
	}
}

// TestRolloutIDsAreNeverReused: a rollout's file removed by hand leaves its state,
// events and reports in the fleet; creating a rollout under the same ID is refused
// (409, saying why), where before the new rollout was born in the old one's status and
// wave (found from outside, 2 Dec: completed at its last wave, past an approval).
func TestRolloutIDsAreNeverReused(t *testing.T) {
	o := newOpFixture(t)
	ctx := context.Background()
	spec := `{"id":"vib-9","target":{"kind":"model","name":"vibration","version":"9.0.0"},"waves":[{"percent":10,"soak":"1h"},{"percent":100,"approval":true}]}`
	code, body := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], spec)
	if code != http.StatusCreated || !strings.Contains(body, `"loaded":true`) {
		t.Fatalf("create = %d %s", code, body)
	}
	if code, body := o.do("POST", "/v1/rollouts/vib-9/abort", o.tok[fleet.RoleReleaseManager], `{"reason":"gone wrong"}`); code != http.StatusOK {
		t.Fatalf("abort = %d %s", code, body)
	}
	if _, err := o.store.RolloutState(ctx, "vib-9"); err != nil {
		t.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(o.dir, policy.CreatedPrefix+"*vib-9*"))
	if len(files) != 1 {
		t.Fatalf("rollout files %v", files)
	}
	if err := os.Remove(files[0]); err != nil {
		t.Fatal(err)
	}
	code, body = o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], spec)
	if code != http.StatusConflict || !strings.Contains(body, "was used before") || !strings.Contains(body, "aborted") {
		t.Fatalf("create under a used ID = %d %s; want 409 saying it was used before", code, body)
	}
	if code, body := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], strings.Replace(spec, "vib-9", "vib-9b", 1)); code != http.StatusCreated {
		t.Fatalf("create under a fresh ID = %d %s", code, body)
	}
}

// TestOperatorRequestsNameEachKeyOnce: a request naming a key twice (or two keys
// differing only in case) is refused, not read as its last value: {"id":"dup1","id":
// "dup2"} created rollout dup2 (found from outside, 2 Dec).
func TestOperatorRequestsNameEachKeyOnce(t *testing.T) {
	o := newOpFixture(t)
	for _, body := range []string{
		`{"id":"dup1","id":"dup2","target":{"kind":"model","name":"vibration","version":"9.0.0"}}`,
		`{"id":"dup1","ID":"dup2","target":{"kind":"model","name":"vibration","version":"9.0.0"}}`,
		`{"id":"dup1","target":{"kind":"model","name":"vibration","version":"9.0.0","version":"1.0.0"}}`,
	} {
		code, resp := o.do("POST", "/v1/rollouts", o.tok[fleet.RoleReleaseManager], body)
		if code != http.StatusBadRequest || !strings.Contains(resp, "duplicate key") {
			t.Errorf("create %s = %d %s; want 400 duplicate key", body, code, resp)
		}
	}
	code, resp := o.do("POST", "/v1/rollouts/vib-2/pause", o.tok[fleet.RoleReleaseManager], `{"reason":"a","reason":"b"}`)
	if code != http.StatusBadRequest || !strings.Contains(resp, "duplicate key") {
		t.Errorf("pause with a reason named twice = %d %s; want 400", code, resp)
	}
}

// TestOperatorAPIWhileTheDatabaseIsAway: with the fleet database away an operator's
// request is answered 503 with Retry-After and a message that says the database is not
// answering. Before 2 Dec the bearer token's rate-limit check, which comes first,
// answered "cannot check the rate limit: try again" to every request (found from
// outside, PostgreSQL stopped under three replicas).
func TestOperatorAPIWhileTheDatabaseIsAway(t *testing.T) {
	o := newOpFixture(t)
	tok := o.tok[fleet.RoleReleaseManager]
	if code, body := o.do("GET", "/v1/rollouts", tok, ""); code != http.StatusOK {
		t.Fatalf("GET /v1/rollouts = %d %s; want 200", code, body)
	}
	o.store.Close()
	for _, c := range []struct{ method, path, body string }{
		{"GET", "/v1/rollouts", ""},
		{"POST", "/v1/rollouts/vib-2/pause", `{"reason":"drift"}`},
	} {
		req, _ := http.NewRequest(c.method, o.http.URL+c.path, strings.NewReader(c.body))
		req.Header.Set("Authorization", "Bearer "+tok)
		req.Header.Set("Content-Type", "application/json")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(string(b), "the fleet database is not answering") {
			t.Errorf("%s %s with the database away = %d (Retry-After %q) %s; want 503 with Retry-After saying the database is not answering",
				c.method, c.path, resp.StatusCode, resp.Header.Get("Retry-After"), b)
		}
	}
}
