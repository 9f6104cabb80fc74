// Package ui is the server's dashboard at /ui: read-only pages, rendered on the server
// with html/template and no JavaScript, for the fleet (devices, slots, versions,
// verdicts, last check-in), the rollouts (wave progress, failure ratio, pause reason,
// KPIs), one device (attestation and install history) and the audit log (with an
// in-process verification of the hash chain and its signed checkpoints).
//
// # Authentication
//
// The dashboard accepts the operator API's tokens and nothing else. An operator pastes
// a token into the login form (POST /ui/login); the server authenticates it
// (fleet.Store.Authenticate), checks the role may read the fleet, and starts a session:
// a random 256-bit session ID in a cookie that is HttpOnly (no script reads it),
// SameSite=Strict (no other site's page sends it, so no cross-site request forgery),
// Path=/ui, and Secure when the request came over TLS (directly or, by
// X-Forwarded-Proto, through a proxy) or Config.SecureCookie is set.
// The token itself never goes back to the browser and never appears in a URL (a
// ?token= link would end up in histories, logs and Referer headers). The session, held
// in memory, keeps the token and re-authenticates it on every request, so a revoked or
// expired token ends its sessions at once; a session also ends after SessionTTL, at
// logout, and when the server restarts. Every page sends a Content-Security-Policy that
// allows no script at all.
//
// Roles: every operator role may read the fleet and rollout pages (fleet.read); the
// audit page needs audit.export (auditor, security-admin), as GET /v1/audit/export does.
package ui

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/units"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Config configures the dashboard. Fleet is required; every other field's zero value
// is usable.
type Config struct {
	// Fleet authenticates operators and holds what the pages show.
	Fleet *fleet.Store
	// Policy returns the policy in force (policy.Watcher.Policy); nil: no rollouts.
	Policy func() *policy.Policy
	// PolicyStatus returns the last policy reload (policy.Watcher.Status); nil: not shown.
	PolicyStatus func() policy.ReloadStatus
	// Audit opens the audit log for reading; the closer is called when the page is
	// done (reposerver.OpenAudit returns the log and its database). nil: the audit
	// page says there is none.
	Audit func(ctx context.Context) (*audit.Log, io.Closer, error)
	// Now is the clock; nil: time.Now.
	Now func() time.Time
	// Logger; nil discards.
	Logger *slog.Logger
	// SecureCookie marks the session cookie Secure even on plain-HTTP requests (set it
	// when a TLS proxy fronts the server). Requests that arrive over TLS always get it.
	SecureCookie bool
	// SessionTTL bounds a session (never beyond its token's expiry); 0: 8 hours.
	SessionTTL time.Duration
	// MaxSessions bounds the sessions kept (in the fleet database, shared by every
	// replica); 0: 1024. When full, sign-in is refused (503) until one ends: no
	// operator's sign-in ends another's session.
	MaxSessions int
	// MaxSessionsPerToken bounds the sessions of one operator token; 0: 16. Signing in
	// again past it ends that token's own oldest session.
	MaxSessionsPerToken int
	// SignInBurst and SignInEvery rate-limit sign-in attempts per source address (the
	// peer of the connection): SignInBurst at once, then one per SignInEvery; past it
	// 429 with Retry-After, before the token is looked at. 0: 10 and 6 seconds. The
	// counts are in the fleet database (fleet.Store.TakeAttempt), shared by replicas.
	SignInBurst int
	SignInEvery time.Duration
	// VerdictWindow is how far back a device page reads attestation verdicts and the
	// fleet page computes the attestation pass rate; 0: one hour (see
	// reposerver.OperatorConfig.VerdictWindow). A device page's ?since= widens it.
	VerdictWindow time.Duration
}

// UI serves the dashboard. Safe for concurrent use.
type UI struct {
	cfg     Config
	signIns fleet.Limit
	log     *slog.Logger
	pages   map[string]*template.Template
	mux     *http.ServeMux
}

// CookieName is the session cookie.
const CookieName = "edgeward_session"

// New builds the dashboard.
func New(cfg Config) (*UI, error) {
	if cfg.Fleet == nil {
		return nil, errors.New("dashboard: no fleet store")
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 8 * time.Hour
	}
	if cfg.MaxSessions <= 0 {
		cfg.MaxSessions = 1024
	}
	if cfg.MaxSessionsPerToken <= 0 {
		cfg.MaxSessionsPerToken = 16
	}
	if cfg.SignInBurst <= 0 {
		cfg.SignInBurst = 10
	}
	if cfg.SignInEvery <= 0 {
		cfg.SignInEvery = 6 * time.Second
	}
	if cfg.VerdictWindow <= 0 {
		cfg.VerdictWindow = time.Hour
	}
	u := &UI{cfg: cfg, log: cfg.Logger, pages: map[string]*template.Template{}, signIns: fleet.Limit{Burst: cfg.SignInBurst, Every: cfg.SignInEvery}}
	if u.log == nil {
		u.log = slog.New(slog.DiscardHandler)
	}
	for _, name := range []string{"login", "fleet", "device", "rollouts", "rollout", "audit", "error"} {
		t, err := template.New(name).Funcs(u.funcs()).ParseFS(templateFS, "templates/base.html", "templates/partials.html", "templates/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("dashboard template %s: %w", name, err)
		}
		u.pages[name] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	m := http.NewServeMux()
	m.HandleFunc("GET /ui/{$}", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, "/ui/fleet", http.StatusSeeOther) })
	m.HandleFunc("GET /ui/login", u.loginForm)
	m.HandleFunc("POST /ui/login", u.login)
	m.HandleFunc("POST /ui/logout", u.logout)
	m.Handle("GET /ui/fleet", u.auth(fleet.ActionFleetRead, u.fleetPage))
	m.Handle("GET /ui/devices/{id...}", u.auth(fleet.ActionFleetRead, u.devicePage))
	m.Handle("GET /ui/rollouts", u.auth(fleet.ActionFleetRead, u.rolloutsPage))
	m.Handle("GET /ui/rollouts/{id}", u.auth(fleet.ActionFleetRead, u.rolloutPage))
	m.Handle("GET /ui/audit", u.auth(fleet.ActionAuditExport, u.auditPage))
	m.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	m.HandleFunc("/ui/", func(w http.ResponseWriter, r *http.Request) {
		u.render(w, r, http.StatusNotFound, "error", view{Title: "Not found"}, "No such page.")
	})
	u.mux = m
	return u, nil
}

// Handler serves /ui/…; mount it with Server.Handle("/ui/", h).
func (u *UI) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		u.mux.ServeHTTP(w, r)
	})
}

// view is what every page template gets.
type view struct {
	Title    string
	Op       fleet.Principal
	CanAudit bool
	CSRF     string
	Now      time.Time
	Data     any
}

func (u *UI) render(w http.ResponseWriter, r *http.Request, code int, page string, v view, data any) {
	v.Data = data
	if v.Now.IsZero() {
		v.Now = u.cfg.Now()
	}
	var buf strings.Builder
	if err := u.pages[page].ExecuteTemplate(&buf, "base", v); err != nil {
		u.log.Error("dashboard: render", "page", page, "err", err)
		http.Error(w, "the page could not be rendered", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(code)
	io.WriteString(w, inert(buf.String()))
}

// inert returns a rendered page with every Unicode format character (bidirectional
// overrides and isolates, zero-width spaces and joiners) and every C0 control but tab,
// newline and carriage return, and every C1 control, written as a \u escape. Devices
// choose much of what a page shows (a report's cause, an update error, a verdict's
// detail, quoted in pause reasons and events), and html/template escapes markup, not
// these: a cause of "\u202edeliaf ton" read "not failed", and zero-width characters
// hid text (found from outside, 2 Dec). The templates hold none, and in a URL
// html/template has already percent-encoded them, so only text and attribute values
// change.
func inert(page string) string {
	bad := func(r rune) bool {
		return invisible(r) || (r < 0x20 && r != '\t' && r != '\n' && r != '\r') || (r >= 0x7f && r < 0xa0)
	}
	if strings.IndexFunc(page, bad) < 0 {
		return page
	}
	var b strings.Builder
	b.Grow(len(page) + 64)
	for _, r := range page {
		if bad(r) {
			writeEscape(&b, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// invisible reports whether r is shown as nothing, or changes how what is around it is
// shown: format characters (bidirectional controls, zero-width spaces and joiners, tags),
// line and paragraph separators, and the default-ignorable characters that are not
// format characters (the combining grapheme joiner, Hangul fillers, variation
// selectors, Mongolian free variation selectors, Khmer inherent vowels).
func invisible(r rune) bool {
	switch {
	case unicode.Is(unicode.Cf, r), unicode.Is(unicode.Zl, r), unicode.Is(unicode.Zp, r):
		return true
	case r == 0x034f, r == 0x115f, r == 0x1160, r == 0x17b4, r == 0x17b5, r == 0x3164, r == 0xffa0:
		return true
	case r >= 0x180b && r <= 0x180f, r >= 0xfe00 && r <= 0xfe0f, r >= 0xe0100 && r <= 0xe01ef:
		return true
	}
	return false
}

// writeEscape writes r as a Go escape: \u and four hex digits, or \U and eight above
// U+FFFF (with four, U+E0041 read as U+E004 and a "1": found from outside, 2 Dec).
func writeEscape(b *strings.Builder, r rune) {
	if r > 0xffff {
		fmt.Fprintf(b, "\\U%08x", r)
		return
	}
	fmt.Fprintf(b, "\\u%04x", r)
}

// ---- sessions ----

func randomID() string {
	var b [32]byte
	rand.Read(b[:]) // never fails (crypto/rand)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// sameOrigin rejects a state-changing request sent by another site's page (a login
// CSRF would sign the victim in as the attacker). Browsers say where a request comes
// from in Sec-Fetch-Site, which a reverse proxy leaves alone; older ones only send
// Origin, compared with the Host (or X-Forwarded-Host) the request was made to. A
// request with neither header is not a browser's form post.
func sameOrigin(r *http.Request) bool {
	if s := r.Header.Get("Sec-Fetch-Site"); s != "" {
		return s == "same-origin" || s == "none"
	}
	o := r.Header.Get("Origin")
	if o == "" {
		return true
	}
	ou, err := url.Parse(o)
	if err != nil || o == "null" {
		return false
	}
	return ou.Host == r.Host || (r.Header.Get("X-Forwarded-Host") != "" && ou.Host == r.Header.Get("X-Forwarded-Host"))
}

func (u *UI) loginForm(w http.ResponseWriter, r *http.Request) {
	msg := ""
	switch r.URL.Query().Get("m") {
	case "expired":
		msg = "Your session ended (signed out, expired, or the token was revoked). Sign in again."
	case "out":
		msg = "Signed out."
	}
	u.render(w, r, http.StatusOK, "login", view{Title: "Sign in"}, map[string]string{"Msg": msg})
}

func (u *UI) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		u.render(w, r, http.StatusForbidden, "login", view{Title: "Sign in"}, map[string]string{"Err": "Cross-site sign-in refused."})
		return
	}
	now := u.cfg.Now()
	// A refused attempt only reads its bucket: a flood costs the database no writes.
	key := "signin:" + source(r)
	ok, wait, err := u.cfg.Fleet.AttemptsLeft(r.Context(), key, u.signIns, now)
	if err == nil && ok {
		ok, wait, err = u.cfg.Fleet.TakeAttempt(r.Context(), key, u.signIns, now)
	}
	if err != nil { // fail closed
		u.log.Error("dashboard: sign-in rate limit", "err", err)
		u.render(w, r, http.StatusServiceUnavailable, "login", view{Title: "Sign in"}, map[string]string{"Err": "Sign-in is unavailable: try again shortly."})
		return
	}
	if !ok {
		u.log.Warn("dashboard: sign-in rate limited", "source", source(r))
		w.Header().Set("Retry-After", fmt.Sprint(int(wait.Seconds())+1))
		u.render(w, r, http.StatusTooManyRequests, "login", view{Title: "Sign in"}, map[string]string{"Err": "Too many sign-in attempts from your address: wait a little and try again."})
		return
	}
	// A form that did not arrive whole is not checked as a token: what did arrive of an
	// interrupted or oversized body would only be refused as a wrong one (401).
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		code, msg := http.StatusBadRequest, "The sign-in form did not arrive whole: try again."
		var tooBig *http.MaxBytesError
		var ne net.Error
		switch {
		case errors.As(err, &tooBig):
			code, msg = http.StatusRequestEntityTooLarge, "The sign-in form is too large."
		case errors.As(err, &ne) && ne.Timeout():
			code = http.StatusRequestTimeout
		}
		u.log.Info("dashboard: sign-in form unread", "source", source(r), "err", err)
		u.render(w, r, code, "login", view{Title: "Sign in"}, map[string]string{"Err": msg})
		return
	}
	tok := strings.TrimSpace(r.PostFormValue("token"))
	p, err := u.cfg.Fleet.Authenticate(r.Context(), tok, now)
	if err == nil {
		err = fleet.Authorize(p, fleet.ActionFleetRead)
	}
	if err != nil {
		u.log.Info("dashboard: sign-in refused", "err", err)
		u.render(w, r, http.StatusUnauthorized, "login", view{Title: "Sign in"}, map[string]string{"Err": "Sign-in refused: " + publicAuthError(err)})
		return
	}
	expires := now.Add(u.cfg.SessionTTL)
	if exp := u.tokenExpiry(r.Context(), tok); !exp.IsZero() && exp.Before(expires) {
		expires = exp
	}
	id := randomID()
	if err := u.cfg.Fleet.StartSession(r.Context(), id, tok, randomID(), now, expires, u.cfg.MaxSessionsPerToken, u.cfg.MaxSessions); errors.Is(err, fleet.ErrSessionsFull) {
		u.log.Warn("dashboard: sign-in refused: the session table is full", "operator", p.Name)
		u.render(w, r, http.StatusServiceUnavailable, "login", view{Title: "Sign in"}, map[string]string{"Err": "Too many dashboard sessions are open: try again later."})
		return
	} else if err != nil {
		u.log.Error("dashboard: start session", "err", err)
		u.render(w, r, http.StatusServiceUnavailable, "login", view{Title: "Sign in"}, map[string]string{"Err": "Sign-in failed: try again."})
		return
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: id, Path: "/ui", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: u.secure(r), MaxAge: int(expires.Sub(now).Seconds())})
	u.log.Info("dashboard: signed in", "operator", p.Name, "role", p.Role)
	http.Redirect(w, r, "/ui/fleet", http.StatusSeeOther)
}

// publicAuthError says why a token was refused without echoing it.
func publicAuthError(err error) string {
	switch {
	case errors.Is(err, fleet.ErrTokenExpired):
		return "the token has expired."
	case errors.Is(err, fleet.ErrTokenRevoked):
		return "the token was revoked."
	case errors.Is(err, fleet.ErrForbidden):
		return "this role may not read the fleet."
	}
	return "unknown or malformed token."
}

// tokenExpiry finds when tok expires, from the token list (its ID is in the token).
func (u *UI) tokenExpiry(ctx context.Context, tok string) time.Time {
	id, _, _ := strings.Cut(strings.TrimPrefix(tok, "ewo_"), "_")
	ts, err := u.cfg.Fleet.Tokens(ctx)
	if err != nil {
		return time.Time{}
	}
	for _, t := range ts {
		if t.ID == id {
			return t.ExpiresAt
		}
	}
	return time.Time{}
}

// session returns the request's session ID, its operator and CSRF secret. err is
// fleet.ErrNotFound without a live session, or why its token no longer authenticates.
func (u *UI) session(r *http.Request) (id string, p fleet.Principal, csrf string, err error) {
	c, err := r.Cookie(CookieName)
	if err != nil {
		return "", fleet.Principal{}, "", fmt.Errorf("no session cookie: %w", fleet.ErrNotFound)
	}
	p, csrf, err = u.cfg.Fleet.AuthenticateSession(r.Context(), c.Value, u.cfg.Now())
	return c.Value, p, csrf, err
}

func (u *UI) endSession(w http.ResponseWriter, r *http.Request, id string) {
	if err := u.cfg.Fleet.EndSession(r.Context(), id); err != nil {
		u.log.Error("dashboard: end session", "err", err)
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/ui", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		Secure: u.secure(r), MaxAge: -1})
}

// secure says whether the session cookie gets the Secure attribute: over TLS, behind a
// proxy that says it terminated TLS (a spoofed header only loses its sender the cookie),
// or when configured.
func (u *UI) secure(r *http.Request) bool {
	return u.cfg.SecureCookie || r.TLS != nil || r.Header.Get("X-Forwarded-Proto") == "https"
}

func (u *UI) logout(w http.ResponseWriter, r *http.Request) {
	id, _, csrf, err := u.session(r)
	if err == nil {
		r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
		if !sameOrigin(r) || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(csrf)) != 1 {
			u.render(w, r, http.StatusForbidden, "error", view{Title: "Refused"}, "Sign-out refused: the form did not come from this dashboard.")
			return
		}
		u.endSession(w, r, id)
	}
	http.Redirect(w, r, "/ui/login?m=out", http.StatusSeeOther)
}

type pageFunc func(w http.ResponseWriter, r *http.Request, v view)

// auth runs h for a signed-in operator whose token is still valid and whose role may
// perform action; it sends anyone else to the login form or answers 403.
func (u *UI) auth(action fleet.Action, h pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, p, csrf, err := u.session(r)
		if errors.Is(err, fleet.ErrNotFound) {
			http.Redirect(w, r, "/ui/login", http.StatusSeeOther)
			return
		}
		if err != nil {
			u.endSession(w, r, id)
			http.Redirect(w, r, "/ui/login?m=expired", http.StatusSeeOther)
			return
		}
		now := u.cfg.Now()
		v := view{Op: p, CanAudit: fleet.Authorize(p, fleet.ActionAuditExport) == nil, CSRF: csrf, Now: now}
		if err := fleet.Authorize(p, action); err != nil {
			v.Title = "Forbidden"
			u.render(w, r, http.StatusForbidden, "error", v, fmt.Sprintf("Your role (%s) may not see this page.", p.Role))
			return
		}
		h(w, r, v)
	})
}

func (u *UI) fail(w http.ResponseWriter, r *http.Request, v view, what string, err error) {
	if errors.Is(err, fleet.ErrNotFound) {
		v.Title = "Not found"
		u.render(w, r, http.StatusNotFound, "error", v, what+": not found.")
		return
	}
	u.log.Error("dashboard", "what", what, "err", err)
	v.Title = "Error"
	u.render(w, r, http.StatusInternalServerError, "error", v, what+" failed; see the server log.")
}

// ---- template functions ----

// maxShown bounds what the audit page shows of one record's field, in bytes.
const maxShown = 4 << 10

// shown is an audit record's field (a string or its JSON data) as the audit page shows
// it: Unicode format characters (bidirectional overrides, zero-width ones) and C1
// controls, which html/template leaves as they are, escaped (U+202E as the six characters \u202e) so that no record
// can reorder or hide what is shown; cut to maxShown bytes, with its length. Before, a
// device's 2.6 MB verdict records made the page 40 MB each (found by an outside audit,
// 1 Dec); the whole record is in the export.
func shown(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	case json.RawMessage:
		s = string(x)
	default:
		s = fmt.Sprint(x)
	}
	n := len(s)
	var b strings.Builder
	for i, r := range s {
		if b.Len() >= maxShown {
			fmt.Fprintf(&b, "… (%d of %d bytes shown; the whole record is in the export)", i, n)
			break
		}
		if invisible(r) || (r >= 0x80 && r < 0xa0) {
			writeEscape(&b, r)
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func (u *UI) funcs() template.FuncMap {
	return template.FuncMap{
		"ago": func(now, t time.Time) string {
			if t.IsZero() {
				return "never"
			}
			d := now.Sub(t)
			neg := d < 0
			if neg {
				d = -d
			}
			var s string
			switch {
			case d < time.Minute:
				s = fmt.Sprintf("%ds", int(d.Seconds()))
			case d < time.Hour:
				s = fmt.Sprintf("%dm", int(d.Minutes()))
			case d < 48*time.Hour:
				s = fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
			default:
				s = fmt.Sprintf("%dd", int(d.Hours()/24))
			}
			if neg {
				return "in " + s
			}
			return s + " ago"
		},
		"shown": shown,
		"ts": func(t time.Time) string {
			if t.IsZero() {
				return "—"
			}
			return t.UTC().Format("2006-01-02 15:04:05Z")
		},
		"pct":  func(f float64) string { return fmt.Sprintf("%.1f%%", f*100) },
		"dur":  func(d time.Duration) string { return d.Round(time.Second).String() },
		"f3":   func(f float64) string { return fmt.Sprintf("%.3f", f) },
		"f2":   func(f float64) string { return fmt.Sprintf("%.2f", f) },
		"f1":   func(f float64) string { return fmt.Sprintf("%.1f", f) },
		"inc":  func(i int) int { return i + 1 },
		"slot": slotText,
		"model": func(s map[artifact.Kind]policy.Slot) policy.Slot {
			return s[artifact.KindModel]
		},
		"runtime": func(s map[artifact.Kind]policy.Slot) policy.Slot {
			return s[artifact.KindRuntime]
		},
		"labels": func(m map[string]string) []string {
			out := []string{}
			for _, k := range slices.Sorted(maps.Keys(m)) {
				out = append(out, k+"="+m[k])
			}
			return out
		},
		"sortedCounts": func(m map[string]int) []kv {
			out := []kv{}
			for _, k := range slices.Sorted(maps.Keys(m)) {
				out = append(out, kv{k, m[k]})
			}
			return out
		},
		"bytes": units.Bytes,
		"statusOf": func(s policy.Status) string {
			if s == "" {
				return "not started"
			}
			return string(s)
		},
	}
}

type kv struct {
	K string
	V int
}

func slotText(s policy.Slot) string {
	if s.Name == "" && s.Version == "" {
		return "—"
	}
	t := s.Name + " " + s.Version
	if s.Version == "" {
		t = s.Name + " (none committed)"
	}
	return t
}
