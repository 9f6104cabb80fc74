package reposerver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// A hostile client on the plain listener of a server with TLS: valid operator tokens,
// a sign-in, enrollment and nonces for made-up devices are all refused before any
// handler runs, and nothing is stored; TUF clients and the audit log's public API are
// still served. The same requests pass where the exposure allows them.
func TestPlainListenerServesOnlyWhatItExposes(t *testing.T) {
	f, _ := newDeviceFixture(t)
	ctx := context.Background()
	if err := f.srv.EnableOperatorAPI(OperatorConfig{Fleet: f.store, NoFleetMetrics: true}); err != nil {
		t.Fatal(err)
	}
	f.srv.Handle("/ui/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "dashboard") }))
	admin, _, err := f.store.CreateToken(ctx, "sam", fleet.RoleSecurityAdmin, time.Hour, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	plain := httptest.NewServer(f.srv.Restrict(Exposure{}, ": use https (or --plain-devices)", ": use https (or --plain-operators)"))
	defer plain.Close()
	operators := httptest.NewServer(f.srv.Restrict(Exposure{Operators: true}, "", ""))
	defer operators.Close()

	do := func(base, method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, base+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+admin)
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	refused := []struct{ method, path, body, says string }{
		{"GET", "/v1/devices", "", "operator API"},
		{"POST", "/v1/tokens", `{"operator":"mallory","role":"security-admin","ttl":"1h"}`, "operator API"},
		{"GET", "/v1/audit/export", "", "operator API"},
		{"GET", "/ui/", "", "dashboard"},
		{"POST", "/ui/signin", "token=" + admin, "dashboard"},
		{"POST", wire.PathNonce, `{"device_id":"made-up-1"}`, "device API"},
		{"POST", wire.PathCheckIn, `{"device_id":"made-up-1"}`, "device API"},
		{"POST", wire.PathAttest + "/enroll", `{}`, "device API"},
		{"GET", wire.PathDeviceCA, "", "device API"},
	}
	for _, c := range refused {
		code, body := do(plain.URL, c.method, c.path, c.body)
		if code != http.StatusForbidden || !strings.Contains(body, c.says) || !strings.Contains(body, "use https") {
			t.Errorf("plain %s %s = %d %q; want 403 naming the %s and how to reach it", c.method, c.path, code, body, c.says)
		}
		// Each audience's refusal names its own flag, not the other's.
		other := "--plain-devices"
		if c.says == "device API" {
			other = "--plain-operators"
		}
		if strings.Contains(body, other) {
			t.Errorf("plain %s %s = %q; names %s, which does not serve the %s", c.method, c.path, body, other, c.says)
		}
	}
	for _, path := range []string{"/metadata/timestamp.json", "/healthz", "/v1/audit/checkpoint", "/metrics"} {
		if code, body := do(plain.URL, "GET", path, ""); code != http.StatusOK {
			t.Errorf("plain GET %s = %d %q; want 200 (public)", path, code, body)
		}
	}
	// Nothing was stored: no token. (Nonces are sealed, never stored: fleet.Store.IssueNonce.)
	toks, err := f.store.Tokens(ctx)
	if err != nil || len(toks) != 1 {
		t.Errorf("tokens after the refused requests = %v, %v; want only sam's", toks, err)
	}

	// Where operators are exposed the same token works, and devices still are not.
	if code, body := do(operators.URL, "GET", "/v1/devices", ""); code != http.StatusOK {
		t.Errorf("operators GET /v1/devices = %d %q; want 200", code, body)
	}
	if code, _ := do(operators.URL, "GET", "/ui/", ""); code != http.StatusOK {
		t.Errorf("operators GET /ui/ = %d; want 200", code)
	}
	if code, _ := do(operators.URL, "POST", wire.PathNonce, `{"device_id":"made-up-1"}`); code != http.StatusForbidden {
		t.Errorf("operators POST nonce = %d; want 403", code)
	}
	// The unrestricted handler (the TLS listener) issues the nonce.
	if code, body := do(f.http.URL, "POST", wire.PathNonce, `{"device_id":"made-up-1"}`); code != http.StatusOK {
		t.Errorf("unrestricted POST nonce = %d %q; want 200", code, body)
	}
}

func TestRunListenOff(t *testing.T) {
	dir := t.TempDir()
	err := Run(context.Background(), Config{Dir: dir, Listen: ListenOff})
	if err == nil || !strings.Contains(err.Error(), "--tls-listen") {
		t.Errorf("Run(Listen off, no TLS) = %v; want an error asking for --tls-listen", err)
	}
}

// The server's TLS certificate is a leaf (issue 15 item 11): CA:FALSE, serverAuth, no
// certSign; a client pinning it still connects.
func TestServerCertificateIsALeaf(t *testing.T) {
	dir := t.TempDir()
	cert, err := loadOrCreateServerCert(dir, []string{"127.0.0.1", "localhost"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.IsCA || !leaf.BasicConstraintsValid || leaf.KeyUsage&x509.KeyUsageCertSign != 0 ||
		len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Fatalf("server certificate: IsCA %v, key usage %v, ext %v; want a serverAuth leaf", leaf.IsCA, leaf.KeyUsage, leaf.ExtKeyUsage)
	}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}}
	hs.StartTLS()
	defer hs.Close()
	pemBytes, _ := os.ReadFile(filepath.Join(dir, "server.pem"))
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pemBytes)
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	resp, err := hc.Get(hs.URL)
	if err != nil {
		t.Fatalf("a client pinning server.pem: %v", err)
	}
	resp.Body.Close()
}
