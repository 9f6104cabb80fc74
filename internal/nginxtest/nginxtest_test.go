package nginxtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRoundRobinAndFailover: nginx round-robins two backends; with one closed, every
// request is passed on to the other (proxy_next_upstream error), and the access log
// names the upstreams tried.
func TestRoundRobinAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nginx")
	}
	backend := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
	}
	a, b := backend("a"), backend("b")
	defer b.Close()
	ng := Start(t, func(port int) string {
		return fmt.Sprintf(`upstream app { server %s; server %s; }
server {
    listen 127.0.0.1:%d;
    location / { proxy_pass http://app; proxy_next_upstream error timeout; }
}`, strings.TrimPrefix(a.URL, "http://"), strings.TrimPrefix(b.URL, "http://"), port)
	})
	get := func() string {
		t.Helper()
		resp, err := http.Get(ng.URL + "/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /x: %s %s", resp.Status, body)
		}
		return string(body)
	}
	seen := map[string]int{}
	for range 4 {
		seen[get()]++
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Errorf("round robin over a and b answered %v; want 2 each", seen)
	}
	a.Close()
	for range 4 {
		if got := get(); got != "b" {
			t.Errorf("with a closed, answered by %q; want b", got)
		}
	}
	// nginx writes a request's log line after it sent the answer: the last line may
	// still be on its way when the client has its response.
	var es []Entry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if es, err = ng.Entries(); err != nil {
			t.Fatal(err)
		}
		if len(es) >= 8 || time.Now().After(deadline) {
			break
		}
	}
	if len(es) != 8 {
		t.Fatalf("%d access log entries; want 8", len(es))
	}
	retried := 0
	for _, e := range es {
		if e.Status != 200 || e.Method != "GET" || e.Path != "/x" || len(e.Upstreams) == 0 {
			t.Errorf("entry %+v; want a GET /x answered 200 by an upstream", e)
		}
		if len(e.Upstreams) == 2 {
			retried++
			if e.UpstreamStatus[len(e.UpstreamStatus)-1] != "200" {
				t.Errorf("retried entry %+v: the last upstream did not answer 200", e)
			}
		}
	}
	if retried == 0 {
		t.Errorf("no request was passed on from the closed upstream: %+v", es)
	}
	if err := ng.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(ng.URL + "/x"); err == nil {
		t.Error("nginx still answers after Stop")
	}
}

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Entry
	}{
		{`200 "GET /metadata/timestamp.json HTTP/1.1" 127.0.0.1:4001 200 MISS 0.003`,
			Entry{Status: 200, Method: "GET", Path: "/metadata/timestamp.json", Upstreams: []string{"127.0.0.1:4001"}, UpstreamStatus: []string{"200"}, Cache: "MISS"}},
		{`200 "POST /v1/devices/checkin HTTP/1.1" 127.0.0.1:4001, 127.0.0.1:4002 502, 200 - 0.150`,
			Entry{Status: 200, Method: "POST", Path: "/v1/devices/checkin", Upstreams: []string{"127.0.0.1:4001", "127.0.0.1:4002"}, UpstreamStatus: []string{"502", "200"}, Cache: "-"}},
		{`200 "GET /targets/x HTTP/1.1" - - HIT 0.000`,
			Entry{Status: 200, Method: "GET", Path: "/targets/x", Cache: "HIT"}},
	} {
		got, err := ParseEntry(tc.line)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseEntry(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	if _, err := ParseEntry("garbage"); err == nil {
		t.Error("ParseEntry(garbage) succeeded")
	}
}

// TestStreamPassesTLSThrough: a stream proxy in front of an HTTPS server that asks for
// client certificates. The client's certificate reaches the server through nginx
// (TLS is not terminated there), the server's certificate reaches the client, and the
// stream log names the upstream of each session once it ended.
func TestStreamPassesTLSThrough(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nginx")
	}
	clientCert := selfSigned(t, "device-1")
	backend := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 {
			http.Error(w, "no client certificate", http.StatusForbidden)
			return
		}
		io.WriteString(w, r.TLS.PeerCertificates[0].Subject.CommonName)
	}))
	backend.TLS = &tls.Config{ClientAuth: tls.RequestClientCert}
	backend.StartTLS()
	defer backend.Close()
	ng := StartStream(t, func(port int) string {
		return fmt.Sprintf(`upstream app { server %s; }
server { listen 127.0.0.1:%d; proxy_pass app; }`, strings.TrimPrefix(backend.URL, "https://"), port)
	})
	roots := x509.NewCertPool()
	roots.AddCert(backend.Certificate())
	get := func(certs []tls.Certificate) (int, string) {
		t.Helper()
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: certs}, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		// The server's certificate names 127.0.0.1 (httptest's), which is nginx's
		// address too: the client verifies the upstream's certificate through nginx.
		resp, err := (&http.Client{Transport: tr}).Get(fmt.Sprintf("https://127.0.0.1:%d/", ng.Port))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get([]tls.Certificate{clientCert}); code != 200 || body != "device-1" {
		t.Errorf("through the stream proxy with a client certificate = %d %q; want 200 and its subject, device-1", code, body)
	}
	if code, _ := get(nil); code != http.StatusForbidden {
		t.Errorf("through the stream proxy without a client certificate = %d; want 403", code)
	}
	var ss []StreamSession
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		all, err := ng.StreamSessions()
		if err != nil {
			t.Fatal(err)
		}
		ss = ss[:0]
		for _, s := range all {
			if s.Received > 0 { // not StartStream's own probe, which connects and closes
				ss = append(ss, s)
			}
		}
		if len(ss) >= 2 || time.Now().After(deadline) {
			break
		}
	}
	if len(ss) != 2 {
		t.Fatalf("%d stream sessions logged; want 2: %+v", len(ss), ss)
	}
	for _, s := range ss {
		if s.Status != 200 || len(s.Upstreams) != 1 || s.Upstreams[0] != strings.TrimPrefix(backend.URL, "https://") || s.Received == 0 || s.Sent == 0 {
			t.Errorf("session %+v; want status 200 through %s with bytes both ways", s, backend.URL)
		}
	}
}

func TestParseStreamSession(t *testing.T) {
	for _, tc := range []struct {
		line string
		want StreamSession
	}{
		{`127.0.0.1:50432 127.0.0.1:4001 200 517 1490 0.012`, StreamSession{Client: "127.0.0.1:50432", Upstreams: []string{"127.0.0.1:4001"}, Status: 200, Received: 517, Sent: 1490}},
		{`127.0.0.2:50433 127.0.0.1:4001, 127.0.0.1:4002 200 517 1490 1.500`, StreamSession{Client: "127.0.0.2:50433", Upstreams: []string{"127.0.0.1:4001", "127.0.0.1:4002"}, Status: 200, Received: 517, Sent: 1490}},
		{`127.0.0.1:50434 - 502 0 0 0.000`, StreamSession{Client: "127.0.0.1:50434", Status: 502}},
	} {
		got, err := ParseStreamSession(tc.line)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseStreamSession(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	if _, err := ParseStreamSession("garbage"); err == nil {
		t.Error("ParseStreamSession(garbage) succeeded")
	}
}

// selfSigned is a client certificate (ECDSA P-256) for cn.
func selfSigned(t *testing.T, cn string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
