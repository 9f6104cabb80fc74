package reposerver

import (
	"context"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repository"
)

// runServer runs the whole server (Run) on a fresh repository with cfg (Dir and Listen
// are set here) and returns its plain-HTTP base URL; it stops when t ends.
func runServer(t *testing.T, cfg Config) string {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	_, plain, _, stop := startServer(t, cfg)
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run after cancel = %v", err)
		}
	})
	return "http://" + plain.String()
}

// startServer initialises a repository in a temporary directory and runs the whole server
// (Run) on it with cfg, its Dir and Ready set here. It returns once the listeners are
// bound, with the directory, their addresses (tls nil without TLSListen) and stop, which
// ends Run, waits for it and returns its error (nil for a plain stop).
func startServer(t *testing.T, cfg Config) (dir string, plain, tls net.Addr, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	dir = t.TempDir()
	if _, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		cancel()
		t.Fatal(err)
	}
	ready := make(chan [2]net.Addr, 1)
	done := make(chan error, 1)
	cfg.Dir, cfg.Ready = dir, func(h, t net.Addr) { ready <- [2]net.Addr{h, t} }
	go func() { done <- Run(ctx, cfg) }()
	select {
	case addrs := <-ready:
		plain, tls = addrs[0], addrs[1]
	case err := <-done:
		cancel()
		t.Fatalf("Run = %v before serving", err)
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("Run did not start serving in 60 s")
	}
	stop = func() error {
		cancel()
		if err := <-done; err != nil && err != context.Canceled {
			return err
		}
		return nil
	}
	return dir, plain, tls, stop
}

// TestTrustedProxies: behind a proxy every request's peer is the proxy. With the proxy
// trusted (--trusted-proxy), the dashboard's per-source sign-in limit counts each
// client named in X-Forwarded-For on its own, and a client cannot escape its limit by
// prepending addresses to the header; from a peer that is not trusted, the header is
// ignored whatever it says, so rotating it does not escape the limit either.
func TestTrustedProxies(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole server twice")
	}
	signIn := func(base, xff string) int {
		t.Helper()
		req, _ := http.NewRequest("POST", base+"/ui/login", strings.NewReader(url.Values{"token": {"ewo_guess_x"}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if xff != "" {
			req.Header.Set("X-Forwarded-For", xff)
		}
		c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	const burst = 10 // ui.Config's default SignInBurst
	exhaust := func(base, xff string) {
		t.Helper()
		for i := range burst {
			if code := signIn(base, xff); code != http.StatusUnauthorized {
				t.Fatalf("guess %d from %q = %d; want 401", i+1, xff, code)
			}
		}
		if code := signIn(base, xff); code != http.StatusTooManyRequests {
			t.Fatalf("guess %d from %q = %d; want 429", burst+1, xff, code)
		}
	}

	t.Run("trusted", func(t *testing.T) {
		base := runServer(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}})
		exhaust(base, "198.51.100.1")
		for _, tt := range []struct {
			xff  string
			want int
		}{
			{"198.51.100.2", http.StatusUnauthorized},                  // another client: its own bucket
			{"198.51.100.2, 198.51.100.1", http.StatusTooManyRequests}, // .1 forged a left part
			{"10.9.9.9, 198.51.100.1", http.StatusTooManyRequests},     // forged private address
			{"198.51.100.1, 127.0.0.1", http.StatusTooManyRequests},    // two trusted hops
			{"[2001:db8::1]:443", http.StatusUnauthorized},             // another client, with a port
			{"", http.StatusUnauthorized},                              // the proxy itself
			{"198.51.100.3, not-an-address", http.StatusUnauthorized},  // garbage: the proxy itself
		} {
			if code := signIn(base, tt.xff); code != tt.want {
				t.Errorf("sign-in through the trusted proxy with X-Forwarded-For %q = %d; want %d", tt.xff, code, tt.want)
			}
		}
	})
	t.Run("untrusted", func(t *testing.T) {
		// The peer (127.0.0.1) is not the trusted proxy: its header is a forgery.
		base := runServer(t, Config{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.5/32")}})
		exhaust(base, "198.51.100.1")
		for _, xff := range []string{"198.51.100.2", "10.0.0.5", "198.51.100.3, 10.0.0.5", ""} {
			if code := signIn(base, xff); code != http.StatusTooManyRequests {
				t.Errorf("sign-in from an untrusted peer with X-Forwarded-For %q = %d; want 429 (the header is ignored)", xff, code)
			}
		}
	})
}
