package agent

import (
	"context"
	"crypto/x509"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestServerClientGivesUpOnASilentServer: a replica that accepts connections and never
// answers (a stopped process, behind a TCP load balancer that completes the connection)
// costs a device one TLS handshake timeout, 10 s, not the request's two minutes: with
// --server-ca the client's transport had no handshake timeout, and a check-in sat on
// the stopped replica until the request's own timeout.
func TestServerClientGivesUpOnASilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close() // accepted, never read from or written to
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
	defer cancel()
	// With the system roots (nil) the default transport already had the timeout.
	for _, roots := range []*x509.CertPool{x509.NewCertPool()} {
		start := time.Now()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+ln.Addr().String()+"/v1/devices/nonce", nil)
		resp, err := serverClient(roots).Do(req)
		if err == nil {
			resp.Body.Close()
			t.Fatal("a request to a server that never answers succeeded")
		}
		took := time.Since(start)
		if !strings.Contains(err.Error(), "TLS handshake timeout") || took > 3*serverHandshakeTimeout {
			t.Errorf("roots %v: request to a silent server = %v after %s; want a TLS handshake timeout after about %s", roots != nil, err, took.Round(time.Second), serverHandshakeTimeout)
		}
	}
}
