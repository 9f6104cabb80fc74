package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/updater"
)

// TestDecommissionedDeviceEnrollsRarely: an agent whose TPM the fleet refuses for good
// (decommissioned: the attestation CA answers 403 with protocol.CodeRefused) keeps
// serving and asks again after updater.DefaultOutOfServiceInterval, saying why; a
// server that cannot be reached is retried from 1 s. Before, a decommissioned device's
// agent re-enrolled every interval for ever, logging "cannot connect to the server yet"
// (found from outside, 2 Dec: 2,880 attempts a day at the 30 s interval).
func TestDecommissionedDeviceEnrollsRarely(t *testing.T) {
	ctx := context.Background()
	lab := newDeviceAPILab(ctx, t, t.TempDir())
	var mu sync.Mutex
	var refusal error
	url, tpm := lab.serveWithCA(ctx, t, func(c *attestca.Config) {
		c.Refuse = func(context.Context, string) error { mu.Lock(); defer mu.Unlock(); return refusal }
	})
	// connect until its first wait, returning the wait and the log.
	firstWait := func(server string) (time.Duration, string) {
		t.Helper()
		var log strings.Builder
		cctx, cancel := context.WithCancel(ctx)
		defer cancel()
		var waited time.Duration
		cfg := Config{Server: server, Interval: 30 * time.Second, Now: time.Now, Logger: slog.New(slog.NewTextHandler(&log, nil)),
			Sleep: func(ctx context.Context, d time.Duration) error { waited = d; cancel(); return context.Canceled }}
		if _, err := connect(cctx, cfg, tpm); err == nil {
			t.Fatal("connect succeeded; want it to wait")
		}
		return waited, log.String()
	}

	mu.Lock()
	refusal = fmt.Errorf("%w (%w): device decommissioned at 2026-12-02T09:00:00Z: stolen", attestca.ErrRefused, attestca.ErrRefusedForGood)
	mu.Unlock()
	wait, log := firstWait(url)
	if wait != updater.DefaultOutOfServiceInterval || !strings.Contains(log, "out of service") || !strings.Contains(log, "decommissioned") {
		t.Errorf("decommissioned device: first wait %v, log:\n%s\nwant a wait of %v and the log saying it is out of service, and why",
			wait, log, updater.DefaultOutOfServiceInterval)
	}
	// Refused for now, not for good (its EK not on the allowlist yet): retried soon.
	mu.Lock()
	refusal = fmt.Errorf("%w: EK is not on the allowlist (--ek-allowlist)", attestca.ErrRefused)
	mu.Unlock()
	if wait, log := firstWait(url); wait != time.Second || strings.Contains(log, "out of service") {
		t.Errorf("EK not on the allowlist: first wait %v, log:\n%s\nwant 1s and no \"out of service\"", wait, log)
	}
	// Not refused, but the server is away: retried soon, as before.
	down := httptest.NewServer(nil)
	down.Close()
	if wait, log := firstWait(down.URL); wait != time.Second || !strings.Contains(log, "cannot connect to the server yet") {
		t.Errorf("server away: first wait %v, log:\n%s\nwant 1s and \"cannot connect\"", wait, log)
	}
	// Refused no more (here the test's Refuse; a real decommission is final): it enrolls.
	mu.Lock()
	refusal = nil
	mu.Unlock()
	var log2 strings.Builder
	conn, err := connect(ctx, Config{Server: url, Interval: 30 * time.Second, Once: true, Logger: slog.New(slog.NewTextHandler(&log2, nil))}, tpm)
	if err != nil {
		t.Fatalf("connect once no longer refused: %v\n%s", err, log2.String())
	}
	conn.Close()
}

// TestListenAwaitsTheDrain: the agent's inference address still held (by the previous
// agent's runtime, draining after its parent was killed) is waited for, not an exit;
// held past the wait, it is the error it was.
func TestListenAwaitsTheDrain(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := held.Addr().String()
	time.AfterFunc(600*time.Millisecond, func() { held.Close() })
	start := time.Now()
	ln, err := listenAwaitingDrain(context.Background(), addr, 10*time.Second, nil)
	if err != nil {
		t.Fatalf("listen on an address freed after 600 ms: %v", err)
	}
	ln.Close()
	if d := time.Since(start); d < 500*time.Millisecond {
		t.Errorf("listened after %v, while the address was still held", d)
	}
	held2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held2.Close()
	if _, err := listenAwaitingDrain(context.Background(), held2.Addr().String(), 300*time.Millisecond, nil); !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("listen on an address held throughout = %v; want EADDRINUSE after the wait", err)
	}
	// Told to stop while waiting (SIGTERM to the agent), it stops at once.
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	start = time.Now()
	_, err = listenAwaitingDrain(ctx, held2.Addr().String(), 30*time.Second, nil)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, syscall.EADDRINUSE) {
		t.Errorf("listen cancelled while waiting = %v; want context.Canceled and EADDRINUSE", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("a cancelled wait took %v; want it to stop once cancelled", d)
	}
}

// TestExpiredCertificateOfADecommissionedDevice: a check-in whose TLS handshake fails
// because the device certificate could not be renewed for good (the CA refuses a
// decommissioned device: attest.ErrOutOfService) is the server taking the device out of
// service, asked about hourly; before, the agent tried every interval, each time a full
// ACME order the CA refused (found from outside, 2 Dec).
func TestExpiredCertificateOfADecommissionedDevice(t *testing.T) {
	refused := fmt.Errorf("device certificate: %w: 403 urn:ietf:params:acme:error:unauthorized: device decommissioned", attest.ErrOutOfService)
	hc := &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, refused })}
	link := &Attested{API: &deviceapi.Client{BaseURL: "https://server.example", HTTP: hc},
		AK: &attest.AKCertificate{PermanentIdentifier: "urn:ek:sha256:x"}}
	if _, err := link.CheckIn(context.Background(), nil); !errors.Is(err, updater.ErrOutOfService) {
		t.Fatalf("check-in with the certificate refused for good = %v; want ErrOutOfService", err)
	}
	hc.Transport = roundTripFunc(func(*http.Request) (*http.Response, error) { return nil, errors.New("connection refused") })
	if _, err := link.CheckIn(context.Background(), nil); err == nil || errors.Is(err, updater.ErrOutOfService) {
		t.Fatalf("check-in with the server away = %v; want an error that is not out of service", err)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
