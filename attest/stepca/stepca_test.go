package stepca_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.step.sm/crypto/x509util"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/stepca"
)

// TestDeviceCertificateAndMTLS runs the whole device identity flow with real
// components: simulator TPM with a manufacturer EK certificate → attestation
// CA → AK certificate → embedded step-ca ACME device-attest-01 (format tpm)
// → a 24h certificate for a TPM-resident key → mTLS with that key.
func TestDeviceCertificateAndMTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	deviceFlow(ctx, t, tpm, maker.Roots(), inter, true, embedded)
}

// TestDeviceCertificateSwtpm is the same flow with swtpm over TCP, its EK
// certificate from swtpm_setup.
func TestDeviceCertificateSwtpm(t *testing.T) {
	if testing.Short() {
		t.Skip("starts step-ca")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sw := attesttest.StartSwtpm(t, true)
	tpm, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	deviceFlow(ctx, t, tpm, sw.CARoots, sw.CAIntermediates, false, embedded)
}

// deviceCA is a running step-ca: its ACME directory, a client trusting it,
// and the root device certificates chain to.
type deviceCA struct {
	dir    string
	client *http.Client
	root   *x509.Certificate
}

func embedded(ctx context.Context, t *testing.T, attRoot *x509.Certificate) deviceCA {
	sca, err := stepca.Start(ctx, stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{attRoot}})
	if err != nil {
		t.Fatalf("stepca.Start() = %v", err)
	}
	t.Cleanup(func() { sca.Close() })
	return deviceCA{dir: sca.DirectoryURL, client: sca.Client(nil), root: sca.Root}
}

func deviceFlow(ctx context.Context, t *testing.T, tpm *attest.TPM, makerRoots, inter *x509.CertPool, hostile bool,
	startCA func(context.Context, *testing.T, *x509.Certificate) deviceCA) {
	signer, root, _ := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	aca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: makerRoots, ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	acaSrv := httptest.NewServer(aca.Handler())
	defer acaSrv.Close()
	ak, err := (&attest.EnrollClient{URL: acaSrv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll() = %v", err)
	}

	sca := startCA(ctx, t, root)

	key, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	start := time.Now()
	chain, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{
		DirectoryURL: sca.dir, HTTP: sca.client, AK: ak, Key: key,
	})
	if err != nil {
		t.Fatalf("RequestDeviceCert() = %v", err)
	}
	t.Logf("device certificate in %v", time.Since(start))
	leaf := chain[0]
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 25*time.Hour || d < 23*time.Hour {
		t.Errorf("certificate lifetime = %v; want about 24h", d)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != ak.PermanentIdentifier {
		t.Errorf("device certificate permanent identifiers = %+v, %v; want %q", sans.PermanentIdentifiers, err, ak.PermanentIdentifier)
	}

	// mTLS: a server that requires client certificates from step-ca's root;
	// the client's private key is the TPM key.
	roots := x509.NewCertPool()
	roots.AddCert(sca.root)
	var seen string
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := r.TLS.PeerCertificates[0]
		s, _ := x509util.ParseSubjectAlternativeNames(c)
		if len(s.PermanentIdentifiers) > 0 {
			seen = s.PermanentIdentifiers[0].Identifier
		}
		io.WriteString(w, "ok")
	}))
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots}
	srv.StartTLS()
	defer srv.Close()
	tlsCert := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tlsCert.Certificate = append(tlsCert.Certificate, c.Raw)
	}
	hc := srv.Client()
	hc.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{tlsCert}
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatalf("mTLS GET with the TPM key = %v", err)
	}
	resp.Body.Close()
	if seen != ak.PermanentIdentifier {
		t.Errorf("server saw device %q; want %q", seen, ak.PermanentIdentifier)
	}

	if !hostile {
		return
	}
	// Hostile: an AK certificate from a CA step-ca does not trust.
	signer2, root2, _ := attestca.NewRoot("Rogue CA", time.Hour)
	rogue, _ := attestca.New(attestca.Config{Signer: signer2, Certificate: root2, ManufacturerRoots: makerRoots, ManufacturerIntermediates: inter})
	rogueSrv := httptest.NewServer(rogue.Handler())
	defer rogueSrv.Close()
	rogueAK, err := (&attest.EnrollClient{URL: rogueSrv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: sca.dir, HTTP: sca.client, AK: rogueAK, Key: key}); !errors.Is(err, attest.ErrACME) || !strings.Contains(err.Error(), "x5c is not valid") {
		t.Errorf("RequestDeviceCert(rogue AK cert) = %v; want ErrACME", err)
	}
	// Hostile: an order for another device's permanent identifier.
	other := *ak
	other.PermanentIdentifier = "urn:ek:sha256:c29tZW9uZSBlbHNl"
	if _, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: sca.dir, HTTP: sca.client, AK: &other, Key: key}); !errors.Is(err, attest.ErrACME) || !strings.Contains(err.Error(), "permanent identifier") {
		t.Errorf("RequestDeviceCert(other identifier) = %v; want ErrACME", err)
	}
}
