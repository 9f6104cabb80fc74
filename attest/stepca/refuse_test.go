package stepca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/stepca"
)

// TestRefusedDeviceGetsNoCertificate: with Config.Refuse, the embedded step-ca asks
// before it signs a device certificate, with the device's permanent identifier; while
// it refuses the device (a decommissioned one renewing), the ACME order fails and no
// certificate is issued; once it no longer refuses, the same device gets one again.
func TestRefusedDeviceGetsNoCertificate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, ak, root := enrolledTPM(ctx, t)

	var mu sync.Mutex
	var asked [][]string
	refused := false
	errGone := errors.New("device decommissioned")
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{root},
		Refuse: func(_ context.Context, ids []string) error {
			mu.Lock()
			defer mu.Unlock()
			asked = append(asked, ids)
			if refused {
				return errGone
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer sca.Close()
	order := certOrder(ctx, t, tpm, ak, sca, false)
	if err := order(); err != nil {
		t.Fatalf("certificate while not refused: %v", err)
	}
	mu.Lock()
	if len(asked) != 1 || !slices.Equal(asked[0], []string{ak.PermanentIdentifier}) {
		t.Fatalf("Refuse was asked %v; want once, for %s", asked, ak.PermanentIdentifier)
	}
	refused = true
	mu.Unlock()
	if err := order(); err == nil || !strings.Contains(err.Error(), "unauthorized") || !strings.Contains(err.Error(), "device decommissioned") || !errors.Is(err, attest.ErrOutOfService) {
		t.Fatalf("order of the refused device = %v; want ACME unauthorized naming the reason, attest.ErrOutOfService (the agent then asks hourly)", err)
	}
	mu.Lock()
	refused = false
	n := len(asked)
	mu.Unlock()
	if n != 2 {
		t.Fatalf("Refuse asked %d times after the refused order; want 2", n)
	}
	if err := order(); err != nil {
		t.Fatalf("certificate once no longer refused: %v", err)
	}
}

// enrolledTPM is a simulator TPM with a manufacturer's EK certificate, enrolled with a
// fresh attestation CA: its AK certificate and that CA's root.
func enrolledTPM(ctx context.Context, t *testing.T) (*attest.TPM, *attest.AKCertificate, *x509.Certificate) {
	t.Helper()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	signer, root, _ := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	aca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	acaSrv := httptest.NewServer(aca.Handler())
	t.Cleanup(acaSrv.Close)
	ak, err := (&attest.EnrollClient{URL: acaSrv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatal(err)
	}
	return tpm, ak, root
}

// TestRotateStartsAnEmptyDatabase: Rotate restarts the CA on the same address with an
// empty database (step-ca's grows about 10 KB per certificate and never shrinks), and
// a device with its ACME account key from before gets its next certificate as before:
// the account is registered again.
func TestRotateStartsAnEmptyDatabase(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, ak, root := enrolledTPM(ctx, t)
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{root}})
	if err != nil {
		t.Fatal(err)
	}
	defer sca.Close()
	order := certOrder(ctx, t, tpm, ak, sca, true)
	for range 40 {
		if err := order(); err != nil {
			t.Fatal(err)
		}
	}
	grown, err := sca.DBBytes()
	if err != nil {
		t.Fatal(err)
	}
	url := sca.DirectoryURL
	if err := sca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	fresh, err := sca.DBBytes()
	if err != nil || fresh >= grown || sca.DirectoryURL != url {
		t.Fatalf("after the rotation: %d bytes (%v), %s; before it %d bytes, %s", fresh, err, sca.DirectoryURL, grown, url)
	}
	if err := order(); err != nil {
		t.Fatalf("an order with the account key from before the rotation: %v", err)
	}
	if err := sca.Close(); err != nil {
		t.Fatal(err)
	}
	if err := sca.Rotate(ctx); err == nil {
		t.Fatal("Rotate after Close succeeded")
	}
}

// certOrder returns a function that orders a device certificate from sca for a TPM key
// (made once), as the agent does: with a TPM-derived ACME account key when withAccount,
// else with a new account key per order.
func certOrder(ctx context.Context, t *testing.T, tpm *attest.TPM, ak *attest.AKCertificate, sca *stepca.Server, withAccount bool) func() error {
	t.Helper()
	key, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	req := attest.DeviceCertRequest{DirectoryURL: sca.DirectoryURL, HTTP: sca.Client(nil), AK: ak, Key: key}
	if withAccount {
		acct, err := tpm.CreateKey(ctx, []byte("device-tls\x00acme-account"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { acct.Close() })
		req.AccountKey = acct
	}
	return func() error {
		_, err := attest.RequestDeviceCert(ctx, req)
		return err
	}
}

// TestDeviceCertificatesAreNotRenewedThroughRenew: a device certificate is renewed by a
// new ACME order (device-attest-01, which proves the key is the TPM's and asks Refuse),
// never through step-ca's /renew, which would sign a new one on the old certificate
// alone. The provisioner disables renewal: /renew and /1.0/renew answer 401, served
// or refused alike. Before, /1.0/renew signed a new certificate for a serving device
// with no attestation, and answered a decommissioned one's with a 500 (found from
// outside, 2 Dec).
func TestDeviceCertificatesAreNotRenewedThroughRenew(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, ak, root := enrolledTPM(ctx, t)
	var mu sync.Mutex
	refused := false
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{root},
		Refuse: func(context.Context, []string) error {
			mu.Lock()
			defer mu.Unlock()
			if refused {
				return errors.New("device decommissioned")
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer sca.Close()
	key, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	chain, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: sca.DirectoryURL, HTTP: sca.Client(nil), AK: ak, Key: key})
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: key, Leaf: chain[0]}
	for _, c := range chain {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	hc := sca.Client(nil)
	hc.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{cert}
	for _, decommissioned := range []bool{false, true} {
		mu.Lock()
		refused = decommissioned
		mu.Unlock()
		for _, path := range []string{"/1.0/renew", "/renew"} {
			resp, err := hc.Post(sca.URL+path, "application/json", nil)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("POST %s with the device's certificate (decommissioned %v) = %d %s; want 401", path, decommissioned, resp.StatusCode, body)
			}
		}
	}
	// The device's own way still works while it is not refused.
	mu.Lock()
	refused = false
	mu.Unlock()
	if _, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: sca.DirectoryURL, HTTP: sca.Client(nil), AK: ak, Key: key}); err != nil {
		t.Fatalf("a new ACME order after /renew was refused: %v", err)
	}
}
