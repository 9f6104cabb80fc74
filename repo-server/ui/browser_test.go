package ui

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/edgeward/edgeward/repo-server/fleet"
)

// chromium finds Debian's chromium (scripts/deps/apt-packages.txt). Without it the
// browser test skips, unless EDGEWARD_REQUIRE_DEPS=1 (CI), where it fails.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
		t.Fatal("chromium is not installed (scripts/deps/apt-packages.txt) and EDGEWARD_REQUIRE_DEPS=1")
	}
	t.Skip("chromium is not installed; run make deps (or set EDGEWARD_REQUIRE_DEPS=1 to fail instead)")
	return ""
}

// browser starts a headless chromium with a fresh profile and returns a tab on which
// the browser already runs; derive per-step timeouts from it.
func browser(t *testing.T) context.Context {
	t.Helper()
	var logs bytes.Buffer
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.CombinedOutput(&logs),
		chromedp.WSURLReadTimeout(60 * time.Second), // a loaded CI machine starts chromium slowly
	}
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelB := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancelB()
		cancelA()
	})
	// The first run starts the browser and lives as long as ctx: no timeout on it.
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v\n%s", err, logs.String())
	}
	return ctx
}

// TestDashboardInBrowser signs in through the form in headless Chromium and reads the
// pages as a user does: the fleet, a device's history, the paused rollout with its
// reason and bars, and the audit log's verification. Hostile label values show as
// text, and no script can read the session cookie.
func TestDashboardInBrowser(t *testing.T) {
	d := newDash(t)
	bctx := browser(t)
	ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
	defer cancel()
	base := d.srv.URL

	do := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	get := func(a chromedp.Action[string]) string {
		t.Helper()
		v, err := chromedp.Run(ctx, a)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	eval := func(js string) int {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[int](js))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return v
	}
	text := func(sel chromedp.CSS) string { t.Helper(); return get(chromedp.Text(sel)) }

	do("open the dashboard", chromedp.Navigate(base+"/ui/"), chromedp.WaitVisible(chromedp.ID("token")))
	if loc := get(chromedp.Location()); !strings.HasSuffix(loc, "/ui/login") {
		t.Fatalf("anonymous visit landed on %s; want the login form", loc)
	}
	do("wrong token", chromedp.SendKeys(chromedp.ID("token"), "ewo_wrong"), chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("message")))
	if msg := text("#message"); !strings.Contains(msg, "Sign-in refused") {
		t.Fatalf("wrong token message = %q", msg)
	}

	do("sign in", chromedp.SendKeys(chromedp.ID("token"), d.tok[fleet.RoleAuditor]), chromedp.Click(chromedp.ID("signin")),
		chromedp.WaitVisible(chromedp.ID("devices")))
	if loc := get(chromedp.Location()); !strings.HasSuffix(loc, "/ui/fleet") {
		t.Fatalf("after sign-in at %s", loc)
	}
	operator, devCount, untrusted, table := text("#operator"), text("#devices-count"), text("#untrusted-count"), text("#devices")
	if operator != "op-auditor (auditor)" || devCount != "4" || untrusted != "1" {
		t.Errorf("fleet header: operator %q, devices %q, untrusted %q", operator, devCount, untrusted)
	}
	for _, want := range []string{"press-01", "press-03", "urn:ek:sha256:q1/w2+e3=", "vibration 1.4.0", "onnxruntime 1.24.1", "untrusted", "site=berlin",
		"note=" + xssScript, "owner=" + xssAttr} {
		if !strings.Contains(table, want) {
			t.Errorf("fleet table lacks %q:\n%s", want, table)
		}
	}
	if n, pwned := eval(`document.querySelectorAll('img, #pwned, main script').length`), eval(`window.__pwned || 0`); n != 0 || pwned != 0 {
		t.Errorf("hostile labels became markup: %d injected elements, __pwned=%d", n, pwned)
	}
	if cookie := get(chromedp.Evaluate[string](`document.cookie`)); cookie != "" {
		t.Errorf("a script can read cookies: %q", cookie)
	}

	// A device whose ID holds '/', '+' and '=' opens from its link.
	do("device page", chromedp.Click(chromedp.CSS(`a[href^="/ui/devices/urn"]`)), chromedp.WaitVisible(chromedp.ID("attestation")))
	if id := text("#device-id"); id != "urn:ek:sha256:q1/w2+e3=" {
		t.Errorf("device page of %q", id)
	}
	do("untrusted device", chromedp.Navigate(base+"/ui/devices/press-03"), chromedp.WaitVisible(chromedp.ID("attestation")))
	history, installs := text("#attestation"), text("#installs")
	if !strings.Contains(history, "untrusted") || !strings.Contains(history, "pcr 16: measurement log does not replay") || strings.Count(history, "trusted") != 1 {
		t.Errorf("attestation history of the last hour:\n%s", history)
	}
	// (Navigate waits for the new page; a click on the page's "last 24h" link might let
	// the next read see the old one.)
	do("a day of history", chromedp.WaitVisible(chromedp.CSS(`a[href="?since=24h"]`)), chromedp.Navigate(base+"/ui/devices/press-03?since=24h"),
		chromedp.WaitVisible(chromedp.ID("attestation")))
	if history := text("#attestation"); strings.Count(history, "trusted") != 2 { // the verdict of 90 minutes ago too
		t.Errorf("attestation history of 24h:\n%s", history)
	}
	if d.pol.Rollout("vib-2").WaveOf("press-03") == 0 && (!strings.Contains(installs, "vibration 2.0.0") || !strings.Contains(installs, "52.0 MB")) {
		t.Errorf("install history:\n%s", installs)
	}

	// The paused rollout shows its reason, its wave bars and its KPIs, matching the
	// store's numbers.
	st, err := d.store.Status(context.Background(), d.pol, "vib-2")
	if err != nil {
		t.Fatal(err)
	}
	do("rollouts page", chromedp.Click(chromedp.CSS(`a[href="/ui/rollouts"]`)), chromedp.WaitVisible(chromedp.ID("rollout-vib-2")))
	reason, status, success := text("#rollout-vib-2 .pause-reason"), text("#rollout-vib-2 .status"), text("#rollout-vib-2 .kpi-success")
	if status != "paused" || reason != "wave 0: probe failures above 10%" {
		t.Errorf("rollout status %q, reason %q", status, reason)
	}
	if success != "50.0%" || st.KPI.SuccessRate != 0.5 {
		t.Errorf("success rate on the page %q, in the store %v", success, st.KPI.SuccessRate)
	}
	// The probe figures the devices reported, not "—".
	accuracy, p99, rss := text("#rollout-vib-2 .kpi-accuracy"), text("#rollout-vib-2 .kpi-p99"), text("#rollout-vib-2 .kpi-rss")
	if accuracy != fmt.Sprintf("%.3f", st.KPI.MeanAccuracy) || p99 != fmt.Sprintf("%.2f ms", st.KPI.MeanP99Ms) || rss != fmt.Sprintf("%.1f MB", st.KPI.MeanPeakRSSMB) ||
		st.KPI.MeanAccuracy == 0 || st.KPI.MeanP99Ms == 0 || st.KPI.MeanPeakRSSMB == 0 {
		t.Errorf("probe figures on the page: accuracy %q, p99 %q, peak RSS %q; store: %v, %v, %v", accuracy, p99, rss, st.KPI.MeanAccuracy, st.KPI.MeanP99Ms, st.KPI.MeanPeakRSSMB)
	}
	bars, err := chromedp.Run(ctx, chromedp.AttributesAll(chromedp.CSSAll("#rollout-vib-2 progress")))
	if err != nil {
		t.Fatal(err)
	}
	if len(bars) != len(st.Waves) {
		t.Fatalf("%d bars for %d waves", len(bars), len(st.Waves))
	}
	for i, w := range st.Waves {
		if bars[i]["value"] != strconv.Itoa(w.Reported) || bars[i]["max"] != strconv.Itoa(max(w.Devices, w.Reported, 1)) {
			t.Errorf("wave %d bar %v; store: %d of %d reported", i, bars[i], w.Reported, w.Devices)
		}
	}

	// The audit log verifies in-process.
	do("audit page", chromedp.Click(chromedp.CSS(`a[href="/ui/audit"]`)), chromedp.WaitVisible(chromedp.ID("verify")),
		chromedp.Click(chromedp.ID("verify")), chromedp.WaitVisible(chromedp.CSS("#verify-result.ok")))
	if result := text("#verify-result"); !strings.HasPrefix(result, "Verified: 5 records in the Merkle tree") {
		t.Errorf("verification = %q", result)
	}

	// Sign out: the session is gone.
	do("sign out", chromedp.Click(chromedp.CSS(`form.who button`)), chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.Navigate(base+"/ui/fleet"), chromedp.WaitVisible(chromedp.ID("token")))
	if loc := get(chromedp.Location()); !strings.HasSuffix(loc, "/ui/login") {
		t.Errorf("after sign-out /ui/fleet went to %s", loc)
	}
}
