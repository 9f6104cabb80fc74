package stepca_test

import (
	"context"
	"crypto/x509"
	"net"
	"net/url"
	"testing"

	"github.com/edgeward/edgeward/attest/stepca"
)

// TestRestartKeepsDevicesRenewing: a device that got a certificate (its ACME account key
// derived in its TPM, so the same at every order) gets another after step-ca restarts
// on the same directory. step-ca keeps each account's location URL, port included; a
// restart on another port refused every known account ("kid does not match stored
// account location", found from outside, 2 Dec), so after a server restart the fleet's
// devices could not renew. The port is kept when free; when another process took it,
// the new one starts with an empty database (nothing in it is needed again: devices
// register afresh at every order) and they still renew.
func TestRestartKeepsDevicesRenewing(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, ak, root := enrolledTPM(ctx, t)
	dir := t.TempDir()
	start := func() *stepca.Server {
		t.Helper()
		sca, err := stepca.Start(ctx, stepca.Config{Dir: dir, AttestationRoots: []*x509.Certificate{root}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sca.Close() })
		return sca
	}
	sca := start()
	if err := certOrder(ctx, t, tpm, ak, sca, true)(); err != nil {
		t.Fatal(err)
	}
	first := sca.DirectoryURL
	sca.Close()

	sca = start()
	if sca.DirectoryURL != first {
		t.Errorf("restarted step-ca serves %s; want the same address as before, %s", sca.DirectoryURL, first)
	}
	if err := certOrder(ctx, t, tpm, ak, sca, true)(); err != nil {
		t.Fatalf("order after a restart: %v", err)
	}
	sca.Close()

	// Another process holds the port: step-ca moves, and devices still renew.
	u, _ := url.Parse(first)
	l, err := net.Listen("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sca = start()
	if sca.DirectoryURL == first {
		t.Fatalf("step-ca serves %s, the port another process holds", first)
	}
	if err := certOrder(ctx, t, tpm, ak, sca, true)(); err != nil {
		t.Fatalf("order after a restart on another port: %v", err)
	}
}
