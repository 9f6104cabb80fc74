package reposerver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// Operators authenticate with client certificates from the server's device CA instead
// of tokens; a certificate stands for its token (role, expiry, revocation), and neither
// a device-style certificate from the same CA nor an operator certificate from another
// CA gets anything.
func TestOperatorClientCertificates(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBPath(f.repo.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, NoFleetMetrics: true}); err != nil {
		t.Fatal(err)
	}
	f.clock.useReal()
	caDir := filepath.Join(t.TempDir(), "stepca")
	other := filepath.Join(t.TempDir(), "stepca")
	var root *x509.Certificate
	for _, d := range []string{caDir, other} {
		_, r, _, err := stepca.WriteConfig(stepca.Config{Dir: d, Address: "127.0.0.1:1", AttestationRoots: []*x509.Certificate{{Raw: []byte{}}}})
		if err != nil {
			t.Fatal(err)
		}
		if d == caDir {
			root = r
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	hs := httptest.NewUnstartedServer(f.srv.Handler())
	hs.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: roots}
	hs.StartTLS()
	defer hs.Close()

	issue := func(dir, name string, uri *url.URL) *http.Client {
		t.Helper()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		chain, err := stepca.IssueClientCert(dir, key.Public(), name, uri, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		der, _ := x509.MarshalPKCS8PrivateKey(key)
		cert, err := tls.X509KeyPair(chain, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		if err != nil {
			t.Fatal(err)
		}
		hc := hs.Client()
		tr := hc.Transport.(*http.Transport).Clone()
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		return &http.Client{Transport: tr}
	}
	send := func(hc *http.Client, method, path string, header http.Header) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(`{"operator":"x","role":"auditor","ttl":"1h"}`))
		req.Header = header
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	get := func(hc *http.Client, method, path string) (int, string) {
		t.Helper()
		return send(hc, method, path, http.Header{"Content-Type": {"application/json"}})
	}
	_, admin, err := store.CreateToken(ctx, "sam", fleet.RoleSecurityAdmin, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	_, aud, err := store.CreateToken(ctx, "otto", fleet.RoleAuditor, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	sam := issue(caDir, "sam", fleet.OperatorCertURI(admin.ID))
	if code, body := get(sam, "GET", "/v1/devices"); code != 200 {
		t.Fatalf("GET /v1/devices with sam's certificate = %d %s; want 200", code, body)
	}
	if code, body := get(sam, "POST", "/v1/tokens"); code != http.StatusCreated && code != 200 {
		t.Fatalf("POST /v1/tokens with sam's certificate = %d %s", code, body)
	}
	// A browser holding sam's certificate sends it with any page's request. A change
	// asked for by a page of another origin is refused, whatever its body (a page's
	// fetch sends a body of no stated type without a preflight); one of the server's
	// own origin, or from a client that is no browser, is not. Before, a page of
	// another site made such a browser publish a model and roll it out (found from
	// outside, 2 Dec).
	for _, tc := range []struct {
		header http.Header
		code   int
	}{
		{http.Header{"Content-Type": {"application/json"}, "Sec-Fetch-Site": {"cross-site"}}, http.StatusForbidden},
		{http.Header{"Sec-Fetch-Site": {"same-site"}}, http.StatusForbidden},
		{http.Header{"Origin": {"https://evil.example"}}, http.StatusForbidden},
		{http.Header{"Content-Type": {"application/json"}, "Origin": {"null"}}, http.StatusForbidden},
		{http.Header{"Content-Type": {"text/plain"}}, http.StatusUnsupportedMediaType},
		{http.Header{}, http.StatusCreated}, // no browser: the CLI, a script
		{http.Header{"Content-Type": {"application/json"}, "Sec-Fetch-Site": {"same-origin"}}, http.StatusCreated},
		{http.Header{"Content-Type": {"application/json"}, "Origin": {hs.URL}}, http.StatusCreated},
	} {
		if code, body := send(sam, "POST", "/v1/tokens", tc.header); code != tc.code {
			t.Errorf("POST /v1/tokens with sam's certificate and %v = %d %s; want %d", tc.header, code, body, tc.code)
		}
	}
	for _, path := range []string{"/v1/rollouts/r-1/abort", "/v1/devices/dev-1/decommission", "/v1/publish?kind=model&name=m&version=9.9.9&ext=.onnx"} {
		if code, body := send(sam, "POST", path, http.Header{"Sec-Fetch-Site": {"cross-site"}}); code != http.StatusForbidden || !strings.Contains(body, "cross-origin") {
			t.Errorf("POST %s from a page of another site = %d %s; want 403 saying why", path, code, body)
		}
	}
	otto := issue(caDir, "otto", fleet.OperatorCertURI(aud.ID))
	if code, _ := get(otto, "POST", "/v1/tokens"); code != http.StatusForbidden {
		t.Errorf("an auditor's certificate creating a token = %d; want 403", code)
	}
	for name, hc := range map[string]*http.Client{
		"no operator URI (a device's kind)": issue(caDir, "cam-7", &url.URL{Scheme: "https", Host: "device.example"}),
		"another CA":                        issue(other, "sam", fleet.OperatorCertURI(admin.ID)),
		"unknown token":                     issue(caDir, "eve", fleet.OperatorCertURI("0123456789abcdef")),
		"no certificate":                    hs.Client(),
	} {
		if code, body := get(hc, "GET", "/v1/devices"); code == 200 {
			t.Errorf("%s: GET /v1/devices = %d %s; want refused", name, code, body)
		}
	}
	// Revoking the token revokes its certificate.
	if err := store.RevokeToken(ctx, admin.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if code, body := get(sam, "GET", "/v1/devices"); code != http.StatusUnauthorized || !strings.Contains(body, "revoked") {
		t.Errorf("sam's certificate after revoking the token = %d %s; want 401 revoked", code, body)
	}
}

// Issue 15 item 9: token names need not be unique, so a second token named like an
// existing operator was logged as that operator. The actor names the token too.
func TestAuditActorsAreUnique(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBPath(f.repo.Dir()))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: store, NoFleetMetrics: true}); err != nil {
		t.Fatal(err)
	}
	f.clock.useReal()
	var ids []string
	for range 2 {
		tok, info, err := store.CreateToken(ctx, "sam", fleet.RoleSecurityAdmin, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
		req, _ := http.NewRequest("POST", f.http.URL+"/v1/tokens", strings.NewReader(`{"operator":"x","role":"auditor","ttl":"1h"}`))
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("POST /v1/tokens = %v, %v", resp, err)
		}
		resp.Body.Close()
	}
	l, db, err := OpenAudit(ctx, f.repo)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(ctx, audit.Query{Kind: "token.create"})
	if err != nil || len(recs) != 2 {
		t.Fatalf("token.create records = %v, %v", recs, err)
	}
	for i, r := range recs {
		if want := "operator:sam@" + ids[i]; r.Actor != want {
			t.Errorf("record %d actor = %q; want %q", i, r.Actor, want)
		}
	}
}
