package stepca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"testing"
	"time"
)

// TestTakenPortIsRetried: the free port Start picks for step-ca (no Address) may be
// taken by another process before step-ca binds it, which it does itself, later.
// Start then picks another, and the CA serves there, its database reopened: before, the
// server failed to start ("bind: address already in use", seen in CI under load).
// With an Address given, a taken port is an error at once.
func TestTakenPortIsRetried(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	root := selfSigned(t)
	var picked []string
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := Start(ctx, Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{root},
		pickAddr: func() (string, error) {
			if len(picked) == 0 {
				picked = append(picked, taken.Addr().String())
				return picked[0], nil
			}
			a, err := freeAddr()
			picked = append(picked, a)
			return a, err
		}})
	if err != nil {
		t.Fatalf("Start with the first picked port taken: %v", err)
	}
	defer s.Close()
	if len(picked) != 2 || s.URL != "https://"+picked[1] {
		t.Fatalf("picked %v, serving at %s; want a second port, served", picked, s.URL)
	}
	pool := x509.NewCertPool()
	pool.AddCert(s.Root)
	resp, err := s.Client(pool).Get(s.URL + "/health")
	if err != nil {
		t.Fatalf("GET /health at the second port: %v", err)
	}
	resp.Body.Close()

	_, err = Start(ctx, Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{root}, Address: taken.Addr().String()})
	if err == nil || !addrInUse(err) {
		t.Fatalf("Start on a given, taken address = %v; want address already in use", err)
	}
}

func selfSigned(t *testing.T) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test attestation root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
