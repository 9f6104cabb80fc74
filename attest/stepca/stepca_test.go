package stepca_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"go.step.sm/crypto/x509util"
	"golang.org/x/crypto/acme"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/stepca"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/wire"
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
	// The attestation CA also trusts a second manufacturer, whose TPM (the
	// simulator) is another enrolled device.
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	roots, inter := sw.CARoots.Clone(), sw.CAIntermediates.Clone()
	roots.AddCert(maker.Root)
	inter.AddCert(maker.Intermediate)
	f := deviceFlow(ctx, t, tpm, roots, inter, false, embedded)

	// Hostile: device B's genuine evidence sent over device A's mTLS
	// connection (a device certificate presented by another device).
	sim, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	if _, err := maker.Provision(ctx, sim, attest.RSA); err != nil {
		t.Fatal(err)
	}
	acaSrv := httptest.NewServer(f.aca.Handler())
	defer acaSrv.Close()
	akB, err := (&attest.EnrollClient{URL: acaSrv.URL}).Enroll(ctx, sim)
	if err != nil {
		t.Fatalf("Enroll(device B) = %v", err)
	}
	if err := sim.ResetPCR(ctx, 16); err != nil {
		t.Fatal(err)
	}
	for _, e := range f.log {
		if _, err := sim.Measure(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	evB, err := sim.Evidence(ctx, akB, f.nonce(), []int{16}, f.log)
	if err != nil {
		t.Fatal(err)
	}
	if v := f.checkin(evB); v.Trusted || v.Reasons[0].Code != verify.IdentityMismatch {
		t.Errorf("device B's evidence over device A's connection = %v; want identity_mismatch", v.Reasons)
	}
}

// flow is what deviceFlow leaves running for further checks: the attestation
// CA, the device's AK certificate and log, and its mTLS check-in.
type flow struct {
	aca     *attestca.CA
	ak      *attest.AKCertificate
	log     eventlog.Log
	nonce   func() []byte
	checkin func(*wire.Evidence) verify.Verdict
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
	startCA func(context.Context, *testing.T, *x509.Certificate) deviceCA) flow {
	signer, root, _ := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	aca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: makerRoots, ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	acaSrv := httptest.NewServer(aca.Handler())
	t.Cleanup(acaSrv.Close)
	ak, err := (&attest.EnrollClient{URL: acaSrv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll() = %v", err)
	}

	sca := startCA(ctx, t, root)

	key, err := tpm.CreateKey(ctx, []byte("device-tls"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { key.Close() })
	start := time.Now()
	chain, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{
		DirectoryURL: sca.dir, HTTP: sca.client, AK: ak, Key: key,
	})
	if err != nil {
		t.Fatalf("RequestDeviceCert() = %v", err)
	}
	t.Logf("device certificate in %v", time.Since(start))
	// Renewals as agent.DeviceCert makes them: the ACME account key is a TPM key derived
	// from a label, created afresh by each agent start (two key objects here, as two
	// processes would), and it is the same account every time: the orders succeed
	// (JWS signed inside the TPM), and registering again finds the account.
	var accts []*attest.Key
	for i := range 2 {
		acct, err := tpm.CreateKey(ctx, []byte("device-tls\x00acme-account"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { acct.Close() })
		accts = append(accts, acct)
		if _, err := attest.RequestDeviceCert(ctx, attest.DeviceCertRequest{DirectoryURL: sca.dir, HTTP: sca.client, AK: ak, Key: key, AccountKey: acct}); err != nil {
			t.Fatalf("RequestDeviceCert with the TPM account key, start %d: %v", i+1, err)
		}
	}
	if !accts[0].Public().(*ecdsa.PublicKey).Equal(accts[1].Public()) {
		t.Fatal("the account key differs between two starts")
	}
	again := &acme.Client{Key: accts[1], DirectoryURL: sca.dir, HTTPClient: sca.client}
	if _, err := again.Register(ctx, &acme.Account{}, acme.AcceptTOS); !errors.Is(err, acme.ErrAccountAlreadyExists) {
		t.Fatalf("registering the second start's account key = %v; want ErrAccountAlreadyExists (one account)", err)
	}
	leaf := chain[0]
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d > 25*time.Hour || d < 23*time.Hour {
		t.Errorf("certificate lifetime = %v; want about 24h", d)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(leaf)
	if err != nil || len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != ak.PermanentIdentifier {
		t.Errorf("device certificate permanent identifiers = %+v, %v; want %q", sans.PermanentIdentifiers, err, ak.PermanentIdentifier)
	}

	// mTLS check-in: the server takes the device identity from the client
	// certificate (whose key is the TPM key), issues a nonce, and verifies
	// the device's quote and log against that identity.
	roots := x509.NewCertPool()
	roots.AddCert(sca.root)
	nonces := verify.NewNonces(verify.NoncesConfig{})
	expected := []eventlog.Artifact{{Kind: "model", Name: "m", Version: "1.0.0", SHA256: strings.Repeat("ab", 32)}}
	identity := func(r *http.Request) string {
		s, _ := x509util.ParseSubjectAlternativeNames(r.TLS.PeerCertificates[0])
		if len(s.PermanentIdentifiers) != 1 {
			return ""
		}
		return s.PermanentIdentifiers[0].Identifier
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /nonce", func(w http.ResponseWriter, r *http.Request) {
		n, err := nonces.Issue(identity(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Write(n)
	})
	mux.HandleFunc("POST /checkin", func(w http.ResponseWriter, r *http.Request) {
		var ev wire.Evidence
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&ev); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		id := identity(r)
		// This protocol quotes the nonce itself: the nonce to consume is what was quoted.
		var nonce []byte
		if att, err := tpm2.Unmarshal[tpm2.TPMSAttest](ev.Quote.Attest); err == nil {
			nonce = att.ExtraData.Buffer
		}
		v := verify.Check(nonces, id, nonce, nil, verify.Policy{Roots: aca.Roots(), PermanentIdentifier: id, Expected: expected}, ev, time.Now())
		json.NewEncoder(w).Encode(v)
	})
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: roots}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	tlsCert := tls.Certificate{PrivateKey: key, Leaf: leaf}
	for _, c := range chain {
		tlsCert.Certificate = append(tlsCert.Certificate, c.Raw)
	}
	hc := srv.Client()
	hc.Transport.(*http.Transport).TLSClientConfig.Certificates = []tls.Certificate{tlsCert}
	f := flow{aca: aca, ak: ak}
	f.nonce = func() []byte {
		resp, err := hc.Get(srv.URL + "/nonce")
		if err != nil {
			t.Fatalf("mTLS GET /nonce with the TPM key = %v", err)
		}
		defer resp.Body.Close()
		n, _ := io.ReadAll(resp.Body)
		return n
	}
	f.checkin = func(ev *wire.Evidence) verify.Verdict {
		b, _ := json.Marshal(ev)
		resp, err := hc.Post(srv.URL+"/checkin", "application/json", bytes.NewReader(b))
		if err != nil {
			t.Fatalf("mTLS POST /checkin = %v", err)
		}
		defer resp.Body.Close()
		var v verify.Verdict
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("check-in answer: %v", err)
		}
		return v
	}

	if err := tpm.ResetPCR(ctx, 16); err != nil {
		t.Fatal(err)
	}
	e := eventlog.Event{PCR: 16, Kind: "model", Name: "m", Version: "1.0.0", SHA256: strings.Repeat("ab", 32)}
	if _, err := tpm.Measure(ctx, e); err != nil {
		t.Fatal(err)
	}
	f.log = eventlog.Log{e}
	ev, err := tpm.Evidence(ctx, ak, f.nonce(), []int{16}, f.log)
	if err != nil {
		t.Fatal(err)
	}
	if v := f.checkin(ev); !v.Trusted {
		t.Errorf("mTLS check-in verdict = %v; want trusted", v.Reasons)
	}
	if v := f.checkin(ev); v.Trusted || len(v.Reasons) != 1 || v.Reasons[0].Code != verify.NonceUnknownOrReused {
		t.Errorf("replayed check-in verdict = %v; want nonce_unknown_or_reused", v.Reasons)
	}

	if !hostile {
		return f
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
	// Hostile: a quote presented with an AK certificate from another CA.
	ev, err = tpm.Evidence(ctx, rogueAK, f.nonce(), []int{16}, f.log)
	if err != nil {
		t.Fatal(err)
	}
	if v := f.checkin(ev); v.Trusted || v.Reasons[0].Code != verify.AKCertInvalid {
		t.Errorf("check-in with a rogue AK certificate = %v; want ak_cert_invalid", v.Reasons)
	}
	return f
}
