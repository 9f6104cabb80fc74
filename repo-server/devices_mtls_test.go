package reposerver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
)

// TestDeviceMTLSCheckIn is the attestation happy path end to end: simulator TPM → AK
// certificate from the attestation CA → device certificate for a TPM-resident key from
// the embedded step-ca (ACME device-attest-01) → mTLS check-in with a trusted quote →
// audit record. Then the hostile cases: no client certificate, and a device
// certificate presented for another device's check-in.
func TestDeviceMTLSCheckIn(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, repository.KeyEd25519)
	f.clock.useReal()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	maker, caCert, ca := mtlsAttestationCA(t)
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{caCert}, Refuse: refuseDecommissioned(store)})
	if err != nil {
		t.Fatalf("start step-ca: %v", err)
	}
	defer sca.Close()
	clientRoots := x509.NewCertPool()
	clientRoots.AddCert(sca.Root)
	pol, _ := policy.Parse(policy.File{Name: "p.yaml", Data: []byte("version: 1\n")})
	if err := f.srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestCA: ca, Policy: func() *policy.Policy { return pol },
		ClientRoots: clientRoots, DeviceCA: &wire.DeviceCA{DirectoryURL: sca.DirectoryURL, RootPEM: pemCert(sca.Root)}}); err != nil {
		t.Fatal(err)
	}
	tlsSrv := httptest.NewUnstartedServer(f.srv.Handler())
	tlsSrv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientRoots}
	tlsSrv.StartTLS()
	defer tlsSrv.Close()
	serverRoots := x509.NewCertPool()
	serverRoots.AddCert(tlsSrv.Certificate())

	// The device: enrolled over TLS without a client certificate.
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverRoots}}}
	ak, err := (&attest.EnrollClient{URL: tlsSrv.URL + wire.PathAttest, HTTP: plain}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	tpm.ResetPCR(ctx, eventlog.PCRDevelopment)
	info, err := (&deviceapi.Client{BaseURL: tlsSrv.URL, HTTP: plain}).DeviceCA(ctx)
	if err != nil || info.DirectoryURL != sca.DirectoryURL {
		t.Fatalf("device CA = %+v, %v", info, err)
	}
	dc, err := agent.NewDeviceCert(ctx, tpm, ak, info, "edgeward-device-tls")
	if err != nil {
		t.Fatalf("device certificate: %v", err)
	}
	mtls := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: serverRoots, GetClientCertificate: dc.GetClientCertificate}}}
	d := &device{t: t, tpm: tpm, ak: ak, id: ak.PermanentIdentifier, api: &deviceapi.Client{BaseURL: tlsSrv.URL, HTTP: mtls}}

	resp, err := d.checkIn(d.request())
	if err != nil || !resp.Trusted {
		t.Fatalf("mTLS check-in = %+v, %v; want trusted", resp, err)
	}
	if kinds := strings.Join(auditKinds(t, f, d.id), ","); !strings.Contains(kinds, "attestation.verdict") {
		t.Fatalf("audit records = %s; want the verdict", kinds)
	}

	// Without a client certificate the device API refuses, even with valid evidence.
	d.api = &deviceapi.Client{BaseURL: tlsSrv.URL, HTTP: plain}
	_, err = d.api.Nonce(ctx, d.id)
	var apiErr *deviceapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != 403 || !strings.Contains(apiErr.Message, "mTLS") {
		t.Fatalf("nonce without a client certificate = %v; want 403 mTLS required", err)
	}
	// Over plain HTTP (no TLS at all) too.
	plainSrv := httptest.NewServer(f.srv.Handler())
	defer plainSrv.Close()
	if _, err := (&deviceapi.Client{BaseURL: plainSrv.URL}).Nonce(ctx, d.id); !errors.As(err, &apiErr) || apiErr.Status != 403 {
		t.Fatalf("nonce over plain HTTP = %v; want 403", err)
	}

	// A device certificate presented for another device's check-in is refused.
	d.api = &deviceapi.Client{BaseURL: tlsSrv.URL, HTTP: mtls}
	req := d.request()
	req.DeviceID = "urn:ek:sha256:c29tZW9uZS1lbHNl"
	_, err = d.checkIn(req)
	if !errors.As(err, &apiErr) || apiErr.Status != 403 || !strings.Contains(apiErr.Message, "identity_mismatch") {
		t.Fatalf("check-in as another device = %v; want 403 identity_mismatch", err)
	}

	// Decommissioned: its certificate, still valid, gets it to a refused check-in, and
	// the device CA signs it no new one (the server's check, refuseDecommissioned), so
	// its last lapses within a day.
	if err := dc.Renew(ctx); err != nil {
		t.Fatalf("renewal of the enrolled device in service: %v", err)
	}
	if err := store.Decommission(ctx, d.id, "stolen", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := d.checkIn(d.request()); !errors.As(err, &apiErr) || apiErr.Status != 403 || !strings.Contains(apiErr.Message, "decommissioned") {
		t.Fatalf("check-in after the decommission = %v; want 403 device decommissioned", err)
	}
	before := dc.Leaf()
	if err := dc.Renew(ctx); err == nil || !strings.Contains(err.Error(), "unauthorized") || !strings.Contains(err.Error(), "decommissioned") {
		t.Fatalf("renewal after the decommission = %v; want ACME unauthorized, decommissioned", err)
	}
	if dc.Leaf() != before {
		t.Fatal("the refused renewal replaced the device's certificate")
	}
}

func pemCert(c *x509.Certificate) string {
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
}

// TestStepCADatabaseIsRotated: the server's rotation job sets the embedded step-ca's
// database aside once it passes its bound, and the CA keeps issuing on the same URL.
func TestStepCADatabaseIsRotated(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	maker, caCert, ca := mtlsAttestationCA(t)
	acaSrv := httptest.NewServer(ca.Handler())
	defer acaSrv.Close()
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{caCert}})
	if err != nil {
		t.Fatal(err)
	}
	defer sca.Close()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	ak, err := (&attest.EnrollClient{URL: acaSrv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatal(err)
	}
	info := &wire.DeviceCA{DirectoryURL: sca.DirectoryURL, RootPEM: pemCert(sca.Root)}
	dc, err := agent.NewDeviceCert(ctx, tpm, ak, info, "edgeward-device-tls")
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for range 10 {
		if err := dc.Renew(ctx); err != nil {
			t.Fatal(err)
		}
	}
	grown, err := sca.DBBytes()
	if err != nil {
		t.Fatal(err)
	}
	go rotateStepCA(ctx, sca, grown, 20*time.Millisecond, slog.New(slog.DiscardHandler))
	deadline := time.Now().Add(20 * time.Second)
	for {
		if n, err := sca.DBBytes(); err == nil && n < grown {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the database (%d bytes, bound %d) was not rotated", grown, grown)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := dc.Renew(ctx); err != nil {
		t.Fatalf("renewal after the rotation: %v", err)
	}
}

// mtlsAttestationCA is a TPM manufacturer and an attestation CA that trusts it, with
// the CA's root.
func mtlsAttestationCA(t *testing.T) (*attesttest.Manufacturer, *x509.Certificate, *attestca.CA) {
	t.Helper()
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	caKey, caCert, _ := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	ca, err := attestca.New(attestca.Config{Signer: caKey, Certificate: caCert, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	return maker, caCert, ca
}
