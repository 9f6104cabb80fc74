package ui

import (
	"context"
	"crypto/ed25519"
	"database/sql"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

const testPolicy = `version: 1
attestation: {required: false}
rollouts:
  - id: vib-2
    target: {kind: model, name: vibration, version: 2.0.0}
    selector: {labels: {line: press}}
    waves: [{percent: 50, soak: 1h}, {percent: 100}]
`

// Hostile label values an attacker-controlled enrollment could carry.
const (
	xssScript = `<script>window.__pwned=1</script>`
	xssAttr   = `"><img src=x id=pwned onerror="window.__pwned=2">`
)

type dash struct {
	t      *testing.T
	store  *fleet.Store
	pol    *policy.Policy
	log    *audit.Log
	db     *sql.DB
	srv    *httptest.Server
	tok    map[fleet.Role]string
	tokIDs map[fleet.Role]string
	now    time.Time
}

type nopCloser struct{}

func (nopCloser) Close() error { return nil }

// newDash seeds a fleet store directly (devices, verdicts, reports, a paused rollout)
// and an audit log, and serves the dashboard.
func newDash(t *testing.T) *dash {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	store, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", filepath.Join(dir, "audit.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	_, key, _ := ed25519.GenerateKey(nil)
	l, err := audit.Open(ctx, audit.Config{DB: db, Key: key, Every: 3})
	if err != nil {
		t.Fatal(err)
	}
	d := &dash{t: t, store: store, pol: pol, log: l, db: db, tok: map[fleet.Role]string{}, tokIDs: map[fleet.Role]string{}, now: time.Now().UTC()}
	now := d.now
	devices := []struct {
		id      string
		labels  map[string]string
		verdict policy.Verdict
		detail  string
	}{
		{"press-01", map[string]string{"line": "press", "site": "berlin"}, policy.VerdictTrusted, ""},
		{"press-02", map[string]string{"line": "press"}, policy.VerdictTrusted, ""},
		{"press-03", map[string]string{"line": "press"}, policy.VerdictUntrusted, "pcr 16: measurement log does not replay"},
		{"urn:ek:sha256:q1/w2+e3=", map[string]string{"line": "press", "note": xssScript, "owner": xssAttr}, policy.VerdictTrusted, ""},
	}
	for _, dv := range devices {
		if err := store.Enroll(ctx, dv.id, dv.labels, now.Add(-2*time.Hour)); err != nil {
			t.Fatal(err)
		}
		var lastErr *wire.UpdateError
		if dv.id == "press-02" { // served expired metadata: keeps serving, cannot update
			lastErr = &wire.UpdateError{Kind: wire.ErrorExpiredMetadata, Message: "timestamp.json is expired", At: now.Add(-time.Minute)}
		}
		_, err := store.CheckIn(ctx, fleet.CheckIn{ID: dv.id, Hardware: "aarch64", AgentVersion: "0.3.1", At: now.Add(-time.Minute), LastError: lastErr,
			Slots: map[artifact.Kind]policy.Slot{
				artifact.KindModel:   {Name: "vibration", Version: "1.4.0"},
				artifact.KindRuntime: {Name: "onnxruntime", Version: "1.24.1"},
			}})
		if err != nil {
			t.Fatal(err)
		}
		if err := store.RecordVerdict(ctx, dv.id, policy.VerdictTrusted, "", now.Add(-90*time.Minute)); err != nil {
			t.Fatal(err)
		}
		if err := store.RecordVerdict(ctx, dv.id, dv.verdict, dv.detail, now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
		l.Append(ctx, "device:"+dv.id, "attestation.verdict", dv.id, map[string]any{"verdict": dv.verdict})
	}
	// The rollout's first wave: which devices are in it is a stable hash; give every
	// device of wave 0 a report, one commit and the rest failures, and pause.
	r := pol.Rollout("vib-2")
	start := now.Add(-30 * time.Minute)
	failed := 0
	for i, dv := range devices {
		if r.WaveOf(dv.id) != 0 {
			continue
		}
		out, cause := wire.OutcomeCommitted, ""
		if failed < 1 || i%2 == 1 {
			out, cause = wire.OutcomeProbeFailed, "accuracy 0.81 < 0.95"
			failed++
		}
		err := store.AddReport(ctx, wire.Report{DeviceID: dv.id, RolloutID: "vib-2", Kind: artifact.KindModel, Name: "vibration",
			Version: "2.0.0", Outcome: out, Cause: cause, Bytes: 4 << 20, Probe: wire.Probe{Accuracy: 0.97, P99Ms: 3.2, PeakRSSMB: 52}, At: start.Add(time.Duration(i+1) * time.Minute)})
		if err != nil {
			t.Fatal(err)
		}
	}
	st := policy.RolloutState{ID: "vib-2", Status: policy.StatusPaused, Target: r.Target, Wave: 0, Started: start, WaveStarted: start,
		Reason: "wave 0: probe failures above 10%", Updated: now.Add(-5 * time.Minute)}
	err = store.SaveRollout(ctx, st, []policy.Event{
		{Rollout: "vib-2", Type: policy.EventStarted, At: start},
		{Rollout: "vib-2", Type: policy.EventAutoPaused, Reason: st.Reason, At: st.Updated},
	})
	if err != nil {
		t.Fatal(err)
	}
	l.Append(ctx, "server", "rollout.auto_paused", "vib-2", map[string]any{"reason": st.Reason})
	for _, role := range []fleet.Role{fleet.RoleSecurityAdmin, fleet.RoleReleaseManager, fleet.RoleAuditor} {
		tok, info, err := store.CreateToken(ctx, "op-"+string(role), role, time.Hour, now)
		if err != nil {
			t.Fatal(err)
		}
		d.tok[role], d.tokIDs[role] = tok, info.ID
	}
	u, err := New(Config{Fleet: store, Policy: func() *policy.Policy { return pol },
		PolicyStatus: func() policy.ReloadStatus {
			return policy.ReloadStatus{Digest: pol.Digest, Err: errors.New("fleet.yaml:7: rollout <b>x</b>: unknown window"), Failures: 1}
		},
		Audit: func(context.Context) (*audit.Log, io.Closer, error) { return l, nopCloser{}, nil }})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/ui/", u.Handler())
	d.srv = httptest.NewServer(mux)
	t.Cleanup(d.srv.Close)
	return d
}

// wave0 returns the devices in the rollout's first wave and how many of them failed.
func (d *dash) wave0() (ids []string) {
	r := d.pol.Rollout("vib-2")
	for _, id := range []string{"press-01", "press-02", "press-03", "urn:ek:sha256:q1/w2+e3="} {
		if r.WaveOf(id) == 0 {
			ids = append(ids, id)
		}
	}
	return ids
}

// client is a browser-like HTTP client: a cookie jar, no automatic redirects.
func (d *dash) client() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func (d *dash) get(c *http.Client, path string) (*http.Response, string) {
	d.t.Helper()
	resp, err := c.Get(d.srv.URL + path)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (d *dash) post(c *http.Client, path string, form url.Values, hdr ...string) (*http.Response, string) {
	d.t.Helper()
	req, _ := http.NewRequest("POST", d.srv.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func (d *dash) login(c *http.Client, role fleet.Role) *http.Cookie {
	d.t.Helper()
	resp, body := d.post(c, "/ui/login", url.Values{"token": {d.tok[role]}})
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/fleet" {
		d.t.Fatalf("login as %s = %d %s", role, resp.StatusCode, body)
	}
	for _, ck := range resp.Cookies() {
		if ck.Name == CookieName {
			return ck
		}
	}
	d.t.Fatalf("login set no session cookie")
	return nil
}

func TestDashboardAuth(t *testing.T) {
	d := newDash(t)
	c := d.client()
	resp, _ := d.get(c, "/ui/fleet")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login" {
		t.Fatalf("anonymous /ui/fleet = %d %s; want a redirect to the login form", resp.StatusCode, resp.Header.Get("Location"))
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "script-src") {
		t.Fatalf("CSP = %q; want no script allowed", csp)
	}
	for _, p := range []string{"/ui/devices/press-01", "/ui/rollouts", "/ui/rollouts/vib-2", "/ui/audit"} {
		if resp, _ := d.get(c, p); resp.StatusCode != http.StatusSeeOther {
			t.Errorf("anonymous %s = %d; want 303", p, resp.StatusCode)
		}
	}
	if resp, body := d.post(c, "/ui/login", url.Values{"token": {"ewo_nope"}}); resp.StatusCode != 401 || !strings.Contains(body, "unknown or malformed token") {
		t.Fatalf("bad token login = %d", resp.StatusCode)
	}
	if resp, _ := d.post(c, "/ui/login", url.Values{"token": {d.tok[fleet.RoleAuditor]}}, "Origin", "https://evil.example"); resp.StatusCode != 403 {
		t.Fatalf("cross-site login = %d; want 403", resp.StatusCode)
	}
	if resp, _ := d.post(c, "/ui/login", url.Values{"token": {d.tok[fleet.RoleAuditor]}}, "Sec-Fetch-Site", "cross-site"); resp.StatusCode != 403 {
		t.Fatalf("cross-site (Sec-Fetch-Site) login = %d; want 403", resp.StatusCode)
	}

	if resp, _ := d.post(c, "/ui/login", url.Values{"token": {d.tok[fleet.RoleAuditor]}}, "Origin", "null"); resp.StatusCode != 403 {
		t.Fatalf("opaque-origin login = %d; want 403", resp.StatusCode)
	}
	// Behind a proxy that rewrites Host, a same-origin browser post still signs in.
	resp, _ = d.post(d.client(), "/ui/login", url.Values{"token": {d.tok[fleet.RoleAuditor]}},
		"Origin", "https://edgeward.example", "Sec-Fetch-Site", "same-origin", "X-Forwarded-Proto", "https")
	if resp.StatusCode != http.StatusSeeOther || len(resp.Cookies()) != 1 || !resp.Cookies()[0].Secure {
		t.Fatalf("same-origin login behind a TLS proxy = %d %v; want 303 and a Secure cookie", resp.StatusCode, resp.Cookies())
	}

	ck := d.login(c, fleet.RoleAuditor)
	if ck.Secure {
		t.Fatalf("plain-HTTP session cookie marked Secure: the browser would not send it back")
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/ui" || ck.MaxAge <= 0 || ck.MaxAge > 3600 {
		t.Fatalf("session cookie = %+v; want HttpOnly, SameSite=Strict, Path=/ui, bounded by the token's hour", ck)
	}
	if strings.Contains(ck.Value, d.tok[fleet.RoleAuditor]) || strings.Contains(ck.Value, "ewo_") {
		t.Fatalf("the session cookie carries the token")
	}
	resp, body := d.get(c, "/ui/audit")
	if resp.StatusCode != 200 || !strings.Contains(body, "rollout.auto_paused") {
		t.Fatalf("auditor /ui/audit = %d", resp.StatusCode)
	}

	// A release manager reads the fleet but not the audit log (as in the API).
	rm := d.client()
	d.login(rm, fleet.RoleReleaseManager)
	if resp, _ := d.get(rm, "/ui/rollouts"); resp.StatusCode != 200 {
		t.Fatalf("release manager /ui/rollouts = %d", resp.StatusCode)
	}
	if resp, body := d.get(rm, "/ui/audit"); resp.StatusCode != 403 || !strings.Contains(body, "may not see this page") {
		t.Fatalf("release manager /ui/audit = %d; want 403", resp.StatusCode)
	}

	// Revoking the token ends the session at once.
	d.store.RevokeToken(context.Background(), d.tokIDs[fleet.RoleReleaseManager], time.Now())
	if resp, _ := d.get(rm, "/ui/rollouts"); resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/ui/login?m=expired" {
		t.Fatalf("revoked session = %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp, body := d.post(rm, "/ui/login", url.Values{"token": {d.tok[fleet.RoleReleaseManager]}}); resp.StatusCode != 401 || !strings.Contains(body, "revoked") {
		t.Fatalf("login with a revoked token = %d", resp.StatusCode)
	}

	// Sign-out needs the form's CSRF value.
	if resp, _ := d.post(c, "/ui/logout", url.Values{"csrf": {"forged"}}); resp.StatusCode != 403 {
		t.Fatalf("logout with a forged csrf = %d; want 403", resp.StatusCode)
	}
	_, page := d.get(c, "/ui/fleet")
	i := strings.Index(page, `name="csrf" value="`)
	if i < 0 {
		t.Fatal("no csrf field on the page")
	}
	csrf := page[i+len(`name="csrf" value="`):]
	csrf = csrf[:strings.IndexByte(csrf, '"')]
	if resp, _ := d.post(c, "/ui/logout", url.Values{"csrf": {csrf}}); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout = %d", resp.StatusCode)
	}
	if resp, _ := d.get(c, "/ui/fleet"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("after logout /ui/fleet = %d; want a redirect", resp.StatusCode)
	}
	// An old cookie replayed after sign-out is worth nothing.
	c2 := d.client()
	u, _ := url.Parse(d.srv.URL + "/ui/")
	c2.Jar.SetCookies(u, []*http.Cookie{ck})
	if resp, _ := d.get(c2, "/ui/fleet"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("replayed cookie = %d; want a redirect", resp.StatusCode)
	}
}

func TestDashboardPages(t *testing.T) {
	d := newDash(t)
	c := d.client()
	d.login(c, fleet.RoleAuditor)

	_, body := d.get(c, "/ui/fleet")
	for _, want := range []string{"press-01", "press-03", "vibration 1.4.0", "onnxruntime 1.24.1", `class="verdict untrusted"`,
		`href="/ui/devices/urn:ek:sha256:q1/w2&#43;e3="`, "site=berlin", `id="devices-count">4<`, `id="expired-metadata-count">1<`} {
		if !strings.Contains(body, want) {
			t.Errorf("fleet page lacks %q", want)
		}
	}
	// Hostile label values are text, never markup.
	for _, bad := range []string{"<script>window.__pwned", "<img src=x", `onerror="window`} {
		if strings.Contains(body, bad) {
			t.Errorf("fleet page contains unescaped %q", bad)
		}
	}
	if !strings.Contains(body, `id="policy-error">The last edit was rejected, the previous policy stays in force: fleet.yaml:7: rollout &lt;b&gt;x&lt;/b&gt;: unknown window`) {
		t.Errorf("fleet page does not show the policy reload error")
	}
	if !strings.Contains(body, "&lt;script&gt;window.__pwned=1&lt;/script&gt;") || !strings.Contains(body, "&#34;&gt;&lt;img src=x") {
		t.Errorf("fleet page does not show the hostile labels escaped")
	}

	resp, body := d.get(c, "/ui/devices/press-03")
	if resp.StatusCode != 200 {
		t.Fatalf("device page = %d", resp.StatusCode)
	}
	for _, want := range []string{"pcr 16: measurement log does not replay", "Attestation history", "untrusted", "trusted"} {
		if !strings.Contains(body, want) {
			t.Errorf("device page lacks %q", want)
		}
	}
	if _, body = d.get(c, "/ui/devices/press-02"); !strings.Contains(body, `expired_metadata</span>: timestamp.json is expired`) {
		t.Errorf("device page of a device on expired metadata lacks its last update error")
	}
	resp, body = d.get(c, "/ui/devices/urn:ek:sha256:q1/w2+e3=")
	if resp.StatusCode != 200 || !strings.Contains(body, `id="device-id">urn:ek:sha256:q1/w2&#43;e3=<`) {
		t.Fatalf("device with '/' in its ID = %d", resp.StatusCode)
	}
	if resp, _ := d.get(c, "/ui/devices/nope"); resp.StatusCode != 404 {
		t.Fatalf("unknown device = %d", resp.StatusCode)
	}

	w0 := d.wave0()
	resp, body = d.get(c, "/ui/rollouts")
	if resp.StatusCode != 200 {
		t.Fatalf("rollouts = %d", resp.StatusCode)
	}
	for _, want := range []string{"vib-2", "paused", "wave 0: probe failures above 10%", "<progress", "accuracy 0.81 &lt; 0.95"} {
		if !strings.Contains(body, want) {
			t.Errorf("rollouts page lacks %q", want)
		}
	}
	st, _ := d.store.Status(context.Background(), d.pol, "vib-2")
	wantBar := `<progress max="` + strconv.Itoa(max(st.Waves[0].Devices, 1)) + `" value="` + strconv.Itoa(len(w0)) + `"`
	if !strings.Contains(body, wantBar) {
		t.Errorf("rollouts page lacks the wave 0 bar %s (wave 0 = %v)", wantBar, w0)
	}
	_, body = d.get(c, "/ui/rollouts/vib-2")
	if !strings.Contains(body, "auto_paused") || !strings.Contains(body, "planner") {
		t.Errorf("rollout page lacks its events")
	}

	_, body = d.get(c, "/ui/audit?verify=1")
	if !strings.Contains(body, `id="verify-result">Verified: 5 records in the Merkle tree`) {
		t.Errorf("audit verify: %s", between(body, `id="verify-result"`, "</p>"))
	}
	// Tamper with a record behind the log's back: the verification says where.
	if _, err := d.db.Exec(`DROP TRIGGER audit_leaves_no_update; UPDATE audit_leaves SET subject = 'press-99' WHERE seq = 2`); err != nil {
		t.Fatal(err)
	}
	_, body = d.get(c, "/ui/audit?verify=1")
	if !strings.Contains(body, "NOT verified: line 6: the 5 records are not the tree the checkpoint signs") {
		t.Errorf("audit verify of a tampered log: %s", between(body, `id="verify-result"`, "</p>"))
	}
}

func between(s, a, b string) string {
	i := strings.Index(s, a)
	if i < 0 {
		return "(missing " + a + ")"
	}
	s = s[i:]
	if j := strings.Index(s, b); j >= 0 {
		return s[:j]
	}
	return s
}

// TestDevicePageShowsBoot: a device admitted with a verified boot state shows Secure
// Boot and its boot loaders and kernel on its page; the state survives the store.
func TestDevicePageShowsBoot(t *testing.T) {
	d := newDash(t)
	c := d.client()
	d.login(c, fleet.RoleAuditor)
	shim, kernel := strings.Repeat("5a", 32), strings.Repeat("c3", 32)
	boot := &reference.BootState{SecureBoot: true, BootApplications: []string{shim, kernel}, PCRs: map[int]string{0: strings.Repeat("00", 32)}, Events: 14}
	if _, err := d.store.Admit(context.Background(), fleet.Admission{CheckIn: fleet.CheckIn{ID: "edge-9", Hardware: "x86_64", At: d.now},
		Verdict: policy.VerdictTrusted, Boot: boot, Policy: d.pol, Now: d.now}, func(policy.Target) (artifact.Meta, bool) { return artifact.Meta{}, false }); err != nil {
		t.Fatal(err)
	}
	_, body := d.get(c, "/ui/devices/edge-9")
	for _, want := range []string{`id="boot">Secure Boot on`, `title="` + kernel + `">` + kernel[:16], `title="` + shim + `"`, "14 events"} {
		if !strings.Contains(body, want) {
			t.Errorf("device page lacks %q", want)
		}
	}
	if _, body := d.get(c, "/ui/devices/press-01"); !strings.Contains(body, `id="boot">no boot log`) {
		t.Errorf("a device without boot evidence does not say so")
	}
}

// TestDecommissionedDeviceOnTheDashboard: a decommissioned device is counted on the
// fleet page and marked in its row and on its page, with the reason; a device in
// service says so.
func TestDecommissionedDeviceOnTheDashboard(t *testing.T) {
	d := newDash(t)
	c := d.client()
	d.login(c, fleet.RoleAuditor)
	if _, body := d.get(c, "/ui/fleet"); strings.Contains(body, `id="decommissioned-count"`) {
		t.Errorf("fleet page counts decommissioned devices before any was")
	}
	if err := d.store.Decommission(context.Background(), "press-01", "scrapped <b>now</b>", time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	_, body := d.get(c, "/ui/fleet")
	row := between(body, `data-device="press-01"`, "</tr>")
	if !strings.Contains(body, `id="decommissioned-count">1<`) || !strings.Contains(row, `<span class="bad">decommissioned</span> <small>scrapped &lt;b&gt;now&lt;/b&gt;</small>`) {
		t.Errorf("fleet page: count %q, row %s", between(body, `id="decommissioned-count"`, "</span>"), row)
	}
	_, body = d.get(c, "/ui/devices/press-01")
	if got := between(body, `id="decommissioned"`, "</td>"); !strings.Contains(got, `<span class="bad">decommissioned</span> 2026-11-30`) || !strings.Contains(got, "scrapped &lt;b&gt;now&lt;/b&gt;") {
		t.Errorf("device page: %s", got)
	}
	if _, body = d.get(c, "/ui/devices/press-02"); !strings.Contains(body, `id="decommissioned">yes<`) {
		t.Errorf("device page of a device in service: %s", between(body, `id="decommissioned"`, "</td>"))
	}
}
