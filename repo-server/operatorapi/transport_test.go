package operatorapi_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/repo-server/operatorapi"
)

// recorder is an HTTP server that keeps the Authorization headers it receives; every
// dial of the clients below lands on it, whatever address they asked for.
type recorder struct {
	mu    sync.Mutex
	auths []string
	srv   *httptest.Server
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.auths = append(r.auths, req.Header.Get("Authorization"))
		r.mu.Unlock()
		w.Write([]byte(`{"devices":[]}`))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auths...)
}

// dialer sends every connection to the recorder.
func (r *recorder) client() *http.Client {
	return &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "tcp", r.srv.Listener.Addr().String())
	}}}
}

// The client never sends a token over plain HTTP to another machine, not even when an
// https server redirects it there; loopback plain HTTP (a server on this machine) works.
func TestClientRefusesTokensInClear(t *testing.T) {
	ctx := context.Background()
	rec := newRecorder(t)
	for _, server := range []string{"http://203.0.113.7:8440", "http://edgeward.example", "HTTP://[2001:db8::1]:8440", "ftp://127.0.0.1"} {
		c := &operatorapi.Client{Server: server, Token: "ewo_x_secret", HTTP: rec.client()}
		if _, _, err := c.Devices(ctx, nil); err == nil {
			t.Errorf("Devices via %s = nil error; want a refusal", server)
		} else if server != "ftp://127.0.0.1" && !errors.Is(err, operatorapi.ErrPlainHTTP) {
			t.Errorf("Devices via %s = %v; want ErrPlainHTTP", server, err)
		}
	}
	if got := rec.seen(); len(got) != 0 {
		t.Fatalf("the recorder received %q; want no request at all", got)
	}

	// An https server that redirects to plain HTTP elsewhere.
	redirector := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://203.0.113.7:8440"+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer redirector.Close()
	hc := redirector.Client()
	tr := hc.Transport.(*http.Transport)
	base := tr.DialContext
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == "203.0.113.7:8440" {
			addr = rec.srv.Listener.Addr().String()
		}
		if base != nil {
			return base(ctx, network, addr)
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	c := &operatorapi.Client{Server: redirector.URL, Token: "ewo_x_secret", HTTP: hc}
	if _, _, err := c.Devices(ctx, nil); !errors.Is(err, operatorapi.ErrPlainHTTP) {
		t.Errorf("Devices via a redirect to plain HTTP = %v; want ErrPlainHTTP", err)
	}
	if got := rec.seen(); len(got) != 0 {
		t.Fatalf("the redirect target received %q; want nothing", got)
	}

	// Loopback is this machine: allowed.
	for _, server := range []string{rec.srv.URL, "http://localhost:1", "http://[::1]:1"} {
		if err := operatorapi.CheckTransport(server); err != nil {
			t.Errorf("CheckTransport(%s) = %v; want nil", server, err)
		}
	}
	c = &operatorapi.Client{Server: rec.srv.URL, Token: "ewo_x_secret"}
	if _, _, err := c.Devices(ctx, nil); err != nil {
		t.Errorf("Devices via loopback = %v", err)
	}
	if got := rec.seen(); len(got) != 1 || got[0] != "Bearer ewo_x_secret" {
		t.Errorf("loopback server received %q; want the token once", got)
	}
}
