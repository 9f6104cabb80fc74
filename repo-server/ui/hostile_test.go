package ui

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

type testClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *testClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *testClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// signIn posts a sign-in form from src straight to the handler and returns the code
// and the session cookie.
func signIn(h http.Handler, src, tok string) (int, *http.Cookie, http.Header) {
	req := httptest.NewRequest("POST", "/ui/login", strings.NewReader(url.Values{"token": {tok}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.RemoteAddr = src
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	for _, c := range rec.Result().Cookies() {
		if c.Name == CookieName {
			return rec.Code, c, rec.Header()
		}
	}
	return rec.Code, nil, rec.Header()
}

func signedIn(h http.Handler, c *http.Cookie) bool {
	req := httptest.NewRequest("GET", "/ui/fleet", nil)
	req.AddCookie(c)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code == http.StatusOK
}

// Issue 15 item 7: 1,030 sign-ins by one auditor used to end everybody's sessions.
// Now they end only the auditor's own, and a full table refuses new sign-ins instead
// of signing anybody out.
func TestSignInFloodSignsOutOnlyTheFlooder(t *testing.T) {
	d := newDash(t)
	u, err := New(Config{Fleet: d.store, Policy: func() *policy.Policy { return d.pol }, SignInBurst: 5000, MaxSessionsPerToken: 16, MaxSessions: 19})
	if err != nil {
		t.Fatal(err)
	}
	h := u.Handler()
	_, rm, _ := signIn(h, "192.0.2.1:1000", d.tok[fleet.RoleReleaseManager])
	_, admin, _ := signIn(h, "192.0.2.2:1000", d.tok[fleet.RoleSecurityAdmin])
	if rm == nil || admin == nil {
		t.Fatal("sign-in set no cookie")
	}
	var last *http.Cookie
	for i := range 1030 {
		code, c, _ := signIn(h, "192.0.2.9:1000", d.tok[fleet.RoleAuditor])
		if code != http.StatusSeeOther || c == nil {
			t.Fatalf("auditor sign-in %d = %d", i, code)
		}
		last = c
	}
	if !signedIn(h, rm) || !signedIn(h, admin) {
		t.Fatal("the auditor's 1,030 sign-ins signed other operators out")
	}
	if !signedIn(h, last) {
		t.Error("the auditor's newest session ended")
	}
	// 18 sessions now (16 of the auditor's): one more operator fills the table, the next
	// is refused; nobody is signed out.
	extra, _, err := d.store.CreateToken(t.Context(), "eve", fleet.RoleAuditor, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	extra2, _, _ := d.store.CreateToken(t.Context(), "fay", fleet.RoleAuditor, time.Hour, time.Now())
	if code, _, _ := signIn(h, "192.0.2.3:1000", extra); code != http.StatusSeeOther {
		t.Fatalf("sign-in filling the table = %d", code)
	}
	if code, _, _ := signIn(h, "192.0.2.4:1000", extra2); code != http.StatusServiceUnavailable {
		t.Errorf("sign-in past a full table = %d; want 503", code)
	}
	if !signedIn(h, rm) || !signedIn(h, admin) {
		t.Error("a full session table signed somebody out")
	}
}

// Issue 15 item 12: 2,000 guesses in a second. Each source gets a burst, then 429 with
// Retry-After before its token is even looked at (a valid one too); other sources are
// unaffected, and the bucket refills with time.
func TestSignInIsRateLimited(t *testing.T) {
	d := newDash(t)
	clock := &testClock{t: time.Now()}
	u, err := New(Config{Fleet: d.store, Policy: func() *policy.Policy { return d.pol }, Now: clock.Now, SignInBurst: 5, SignInEvery: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h := u.Handler()
	counts := map[int]int{}
	for i := range 2000 {
		code, _, hdr := signIn(h, "198.51.100.7:4000", fmt.Sprintf("ewo_guess%d_x", i))
		counts[code]++
		if code == http.StatusTooManyRequests && hdr.Get("Retry-After") == "" {
			t.Fatal("429 without Retry-After")
		}
	}
	if counts[http.StatusUnauthorized] != 5 || counts[http.StatusTooManyRequests] != 1995 {
		t.Fatalf("2,000 guesses from one source = %v; want 5 answered and 1,995 refused with 429", counts)
	}
	if code, _, _ := signIn(h, "198.51.100.7:4001", d.tok[fleet.RoleAuditor]); code != http.StatusTooManyRequests {
		t.Errorf("a valid token from the limited source = %d; want 429", code)
	}
	if code, _, _ := signIn(h, "198.51.100.8:4000", d.tok[fleet.RoleAuditor]); code != http.StatusSeeOther {
		t.Errorf("another source = %d; want 303", code)
	}
	clock.Add(11 * time.Second)
	if code, _, _ := signIn(h, "198.51.100.7:4000", d.tok[fleet.RoleAuditor]); code != http.StatusSeeOther {
		t.Errorf("the limited source after the refill = %d; want 303", code)
	}
}

// cutBody yields data, then fails with err, as a request body interrupted by the
// client or by the server's read timeout does.
type cutBody struct {
	data []byte
	err  error
}

func (b *cutBody) Read(p []byte) (int, error) {
	if len(b.data) == 0 {
		return 0, b.err
	}
	n := copy(p, b.data)
	b.data = b.data[n:]
	return n, nil
}

type timeoutError struct{}

func (timeoutError) Error() string   { return "i/o timeout" }
func (timeoutError) Timeout() bool   { return true }
func (timeoutError) Temporary() bool { return true }

// A sign-in form that did not arrive whole is answered for what it is, 408, 400 or 413,
// and no session starts, even when what arrived is a valid token; before, the broken
// form was checked as an empty token and refused with 401 "Sign-in refused" (found by an
// outside audit, 1 Dec).
func TestSignInFormNotWhole(t *testing.T) {
	d := newDash(t)
	u, err := New(Config{Fleet: d.store, Policy: func() *policy.Policy { return d.pol }})
	if err != nil {
		t.Fatal(err)
	}
	h := u.Handler()
	form := url.Values{"token": {d.tok[fleet.RoleAuditor]}}.Encode()
	for _, c := range []struct {
		name string
		body io.Reader
		code int
	}{
		{"timed out", &cutBody{data: []byte(form), err: timeoutError{}}, http.StatusRequestTimeout},
		{"cut", &cutBody{data: []byte(form), err: io.ErrUnexpectedEOF}, http.StatusBadRequest},
		{"too large", strings.NewReader(form + "&pad=" + strings.Repeat("x", 5<<10)), http.StatusRequestEntityTooLarge},
	} {
		req := httptest.NewRequest("POST", "/ui/login", c.body)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.RemoteAddr = "192.0.2.20:1000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != c.code || len(rec.Result().Cookies()) != 0 {
			t.Errorf("%s sign-in form: %d with %d cookies; want %d and none", c.name, rec.Code, len(rec.Result().Cookies()), c.code)
		}
	}
	if code, cookie, _ := signIn(h, "192.0.2.20:1000", d.tok[fleet.RoleAuditor]); code != http.StatusSeeOther || cookie == nil {
		t.Errorf("the whole form after them: %d; want 303 and a session", code)
	}
}

// What a device chose reaches the audit page shown, not obeyed: a record of 1 MB is
// shown cut to 4 KiB, with its length, and a right-to-left override (U+202E) or a C1
// control in it is escaped, so that it cannot reorder or hide what the page shows.
// Before, a device's 2.6 MB verdict records made the page 40 MB each, and such
// characters reached it as they were (found by an outside audit, 1 Dec).
func TestAuditPageShowsWhatDevicesChoseBounded(t *testing.T) {
	d := newDash(t)
	ctx := context.Background()
	big := map[string]string{"path": "/opt/" + strings.Repeat("x", 1<<20)}
	if _, err := d.log.Append(ctx, "device:evil", "attestation.verdict", "evil", big); err != nil {
		t.Fatal(err)
	}
	if _, err := d.log.Append(ctx, "device:evil", "attestation.verdict", "evil\u202egpj.exe", map[string]string{"path": "/usr/bin/a\u202ecod.sh\u0085"}); err != nil {
		t.Fatal(err)
	}
	c := d.client()
	d.login(c, fleet.RoleAuditor)
	resp, body := d.get(c, "/ui/audit")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/ui/audit = %d", resp.StatusCode)
	}
	if len(body) > 256<<10 {
		t.Errorf("the audit page is %d bytes with one 1 MB record; want it cut", len(body))
	}
	whole, _ := json.Marshal(big)
	if !strings.Contains(body, fmt.Sprintf("(4096 of %d bytes shown", len(whole))) {
		t.Errorf("the cut record does not say its length")
	}
	if strings.ContainsRune(body, '\u202e') || strings.ContainsRune(body, '\u0085') {
		t.Error("a right-to-left override or a C1 control reached the page as it was")
	}
	if !strings.Contains(body, `evil\u202egpj.exe`) || !strings.Contains(body, `a\u202ecod.sh`) {
		t.Error("the escaped characters are not shown as \\u escapes")
	}
}

// What a device chose is shown inert on every page, not only the audit page: a report's
// cause with a right-to-left override and zero-width spaces, an update error with an
// isolate and a C1 control, reach the device, rollout and fleet pages as \u escapes.
// Before, html/template let them through: "\u202edeliaf ton" read "not failed" on the
// device page and in the failures by cause (found from outside, 2 Dec).
func TestEveryPageShowsDeviceTextInert(t *testing.T) {
	d := newDash(t)
	ctx := context.Background()
	r := d.pol.Rollout("vib-2")
	var dev string
	for _, id := range []string{"press-01", "press-02", "press-03"} {
		if r.WaveOf(id) == 0 {
			dev = id
			break
		}
	}
	if dev == "" {
		t.Fatal("no fixture device in vib-2's first wave")
	}
	cause := "\u202edeliaf ton\u202c \u200b\u200b[\u2066hidden\u2069] \u3164\u034f\ufe0f\u2028\U000e0041"
	if err := d.store.AddReport(ctx, wire.Report{ID: "bidi-1", DeviceID: dev, RolloutID: "vib-2", Kind: artifact.KindModel, Name: "vibration",
		Version: "2.0.0", Outcome: wire.OutcomeProbeFailed, Cause: cause, At: d.now}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.CheckIn(ctx, fleet.CheckIn{ID: dev, Hardware: "aarch64", AgentVersion: "0.3.1", At: d.now,
		LastError: &wire.UpdateError{Kind: wire.ErrorDownload, Message: "mirror \u2067down\u2069 \u0085ok", At: d.now}}); err != nil {
		t.Fatal(err)
	}
	c := d.client()
	d.login(c, fleet.RoleAuditor)
	for _, page := range []string{"/ui/devices/" + dev, "/ui/rollouts/vib-2", "/ui/rollouts", "/ui/fleet"} {
		resp, body := d.get(c, page)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s = %d", page, resp.StatusCode)
		}
		if i := strings.IndexFunc(body, func(r rune) bool { return invisible(r) || (r >= 0x80 && r < 0xa0) }); i >= 0 {
			t.Errorf("%s: a format or C1 character reached the page as it was: %q", page, body[max(0, i-40):min(len(body), i+40)])
		}
	}
	_, body := d.get(c, "/ui/devices/"+dev)
	for _, want := range []string{`\u202edeliaf ton\u202c \u200b\u200b[\u2066hidden\u2069] \u3164\u034f\ufe0f\u2028\U000e0041`, `mirror \u2067down\u2069 \u0085ok`} {
		if !strings.Contains(body, want) {
			t.Errorf("the device page does not show %q", want)
		}
	}
}
