package attestca_test

import (
	"context"
	"crypto/x509"
	"encoding/asn1"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"go.step.sm/crypto/x509util"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/protocol"
)

type fixture struct {
	tpm    *attest.TPM
	maker  *attesttest.Manufacturer
	ca     *attestca.CA
	srv    *httptest.Server
	events *[]attestca.Event
}

// newFixture opens the simulator, provisions RSA and ECC EK certificates from
// a test manufacturer and serves a CA trusting that manufacturer.
func newFixture(t *testing.T, mod func(*attestca.Config)) *fixture {
	t.Helper()
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	m, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	for _, alg := range []attest.KeyAlg{attest.RSA, attest.ECC} {
		if _, err := m.Provision(ctx, tpm, alg); err != nil {
			t.Fatal(err)
		}
	}
	inter := x509.NewCertPool()
	inter.AddCert(m.Intermediate)
	f := &fixture{tpm: tpm, maker: m, events: new([]attestca.Event)}
	var mu sync.Mutex
	cfg := attestca.Config{
		ManufacturerRoots:         m.Roots(),
		ManufacturerIntermediates: inter,
		Audit: func(_ context.Context, e attestca.Event) {
			mu.Lock()
			*f.events = append(*f.events, e)
			mu.Unlock()
		},
	}
	cfg.Signer, cfg.Certificate, err = attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(&cfg)
	}
	f.ca, err = attestca.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/v1/attest/", http.StripPrefix("/v1/attest", f.ca.Handler()))
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fixture) client(alg attest.KeyAlg) *attest.EnrollClient {
	return &attest.EnrollClient{URL: f.srv.URL + "/v1/attest", HTTP: f.srv.Client(), EKAlg: alg}
}

func TestEnrollIssuesStepCAProfile(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for _, alg := range []attest.KeyAlg{attest.RSA, attest.ECC} {
		t.Run(alg.String(), func(t *testing.T) {
			got, err := f.client(alg).Enroll(ctx, f.tpm)
			if err != nil {
				t.Fatalf("Enroll() = %v", err)
			}
			c := got.Certificate
			ek, _ := f.tpm.EK(ctx, alg)
			wantID, _ := protocol.EKID(ek.Public)
			if got.PermanentIdentifier != wantID {
				t.Errorf("PermanentIdentifier = %q; want %q", got.PermanentIdentifier, wantID)
			}
			// The checks step-ca's doTPMAttestationFormat / validateAKCertificate make.
			if c.Version != 3 {
				t.Errorf("Version = %d; want 3", c.Version)
			}
			if c.Subject.String() != "" {
				t.Errorf("Subject = %q; want empty", c.Subject)
			}
			if c.IsCA {
				t.Errorf("IsCA = true")
			}
			var ekus []asn1.ObjectIdentifier
			for _, e := range c.Extensions {
				if e.Id.Equal(asn1.ObjectIdentifier{2, 5, 29, 37}) {
					if _, err := asn1.Unmarshal(e.Value, &ekus); err != nil {
						t.Fatal(err)
					}
				}
			}
			if len(ekus) == 0 || !ekus[0].Equal(asn1.ObjectIdentifier{2, 23, 133, 8, 3}) {
				t.Errorf("EKUs = %v; want first 2.23.133.8.3", ekus)
			}
			sans, err := x509util.ParseSubjectAlternativeNames(c)
			if err != nil {
				t.Fatalf("x509util.ParseSubjectAlternativeNames() = %v", err)
			}
			d := sans.TPMHardwareDetails
			info, _ := f.tpm.Info(ctx)
			if d.Manufacturer != info.Manufacturer || d.Model != info.Model || d.Version != info.Version {
				t.Errorf("TPM details = %+v; want %+v", d, info)
			}
			if len(sans.PermanentIdentifiers) != 1 || sans.PermanentIdentifiers[0].Identifier != wantID {
				t.Errorf("PermanentIdentifiers = %+v; want %q", sans.PermanentIdentifiers, wantID)
			}
			back, err := attest.ParseAKCertificatePEM(got.MarshalPEM())
			if err != nil || !back.Certificate.Equal(c) || back.PermanentIdentifier != wantID || len(back.Chain) != len(got.Chain) {
				t.Errorf("ParseAKCertificatePEM(MarshalPEM()) = %+v, %v", back, err)
			}
			ids, err := attestca.VerifyAKCert(c, f.ca.Roots(), nil, time.Now())
			if err != nil || len(ids) != 1 || ids[0] != wantID {
				t.Errorf("VerifyAKCert() = %v, %v", ids, err)
			}
			// The same chain verification step-ca does (SAN stripped, EKU any).
			cc := *c
			cc.UnhandledCriticalExtensions = nil
			if _, err := cc.Verify(x509.VerifyOptions{Roots: f.ca.Roots(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				t.Errorf("AK cert does not verify against the CA root: %v", err)
			}
		})
	}
	if n := len(*f.events); n != 4 || (*f.events)[1].Kind != "issued" {
		t.Errorf("audit events = %+v; want challenge, issued ×2", *f.events)
	}
}

// enrollRequest builds a genuine enrollment request from the simulator.
func enrollRequest(t *testing.T, tpm *attest.TPM, alg attest.KeyAlg) *protocol.EnrollRequest {
	t.Helper()
	ctx := context.Background()
	ek, err := tpm.EK(ctx, alg)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := tpm.AK(ctx)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := tpm.Info(ctx)
	return &protocol.EnrollRequest{
		EKAlg: alg.String(), EKCert: ek.CertificateDER, EKPublic: tpm2.Marshal(ek.TPMPublic),
		AKPublic: ak.TPMPublic, TPM: protocol.TPMInfo(info),
	}
}

func TestChallengeRejects(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, nil)
	other, _ := attesttest.NewManufacturer("Evil TPM")
	rsa := enrollRequest(t, f.tpm, attest.RSA)
	ecc := enrollRequest(t, f.tpm, attest.ECC)
	ekRSA, _ := f.tpm.EK(ctx, attest.RSA)
	info, _ := f.tpm.Info(ctx)
	foreignCert, err := other.IssueEKCert(ekRSA.Public, info)
	if err != nil {
		t.Fatal(err)
	}
	key, err := f.tpm.CreateKey(ctx, []byte("not an AK"))
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()

	tests := []struct {
		name string
		mod  func(r *protocol.EnrollRequest)
		want error
	}{
		{"EK cert from another manufacturer", func(r *protocol.EnrollRequest) { r.EKCert = foreignCert }, attestca.ErrRejected},
		{"EK public does not match cert", func(r *protocol.EnrollRequest) { r.EKPublic = ecc.EKPublic }, attestca.ErrRejected},
		{"no EK cert, no allowlist", func(r *protocol.EnrollRequest) { r.EKCert = nil }, attestca.ErrRejected},
		{"AK is an unrestricted key", func(r *protocol.EnrollRequest) { r.AKPublic = key.TPMPublic() }, attestca.ErrRejected},
		{"AK is the EK", func(r *protocol.EnrollRequest) { r.AKPublic = r.EKPublic }, attestca.ErrRejected},
		{"garbage EK cert", func(r *protocol.EnrollRequest) { r.EKCert = []byte("garbage") }, attestca.ErrBadRequest},
		{"garbage AK public", func(r *protocol.EnrollRequest) { r.AKPublic = []byte{1, 2, 3} }, attestca.ErrBadRequest},
		{"bad alg", func(r *protocol.EnrollRequest) { r.EKAlg = "dsa" }, attestca.ErrBadRequest},
	}
	for _, tc := range tests {
		r := *rsa
		tc.mod(&r)
		if _, err := f.ca.Challenge(ctx, &r); !errors.Is(err, tc.want) {
			t.Errorf("%s: Challenge() = %v; want %v", tc.name, err, tc.want)
		}
	}
}

func TestAllowlist(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		listed bool // the device's EK is on the allowlist
		noCert bool // the device sends no EK certificate
		want   error
	}{
		{"cert and on allowlist", true, false, nil},
		{"cert but not on allowlist", false, false, attestca.ErrRejected},
		{"no cert, on allowlist", true, true, nil},
		{"no cert, not on allowlist", false, true, attestca.ErrRejected},
	} {
		allowed := map[string]bool{"urn:ek:sha256:someone-else": true}
		f := newFixture(t, func(c *attestca.Config) { c.AllowedEKs = allowed })
		ek, _ := f.tpm.EK(ctx, attest.RSA)
		id, _ := protocol.EKID(ek.Public)
		if tc.listed {
			allowed[id] = true // before the CA's first use
		}
		r := enrollRequest(t, f.tpm, attest.RSA)
		if tc.noCert {
			r.EKCert = nil
		}
		_, err := f.ca.Challenge(ctx, r)
		if (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: Challenge() = %v; want %v", tc.name, err, tc.want)
		}
		f.tpm.Close() // the simulator is one per process
	}
}

func TestActivateWrongAKAndReplay(t *testing.T) {
	ctx := context.Background()
	now := time.Now()
	clock := func() time.Time { return now }
	f := newFixture(t, func(c *attestca.Config) { c.Now = clock; c.ChallengeTTL = time.Minute })
	req := enrollRequest(t, f.tpm, attest.RSA)

	// A restricted signing key that is NOT the key the device activates with:
	// the credential is bound to its name, so the TPM refuses to release the
	// secret for the real AK.
	var otherAK []byte
	err := f.tpm.Exec(ctx, func(tp transport.TPM) error {
		tmpl := tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256,
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, NoDA: true, Restricted: true, SignEncrypt: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Scheme:  tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgRSASSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgRSASSA, &tpm2.TPMSSigSchemeRSASSA{HashAlg: tpm2.TPMAlgSHA256})},
				KeyBits: 2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: []byte("another AK")}),
		}
		rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
		if err != nil {
			return err
		}
		pub, err := rsp.OutPublic.Contents()
		if err != nil {
			return err
		}
		otherAK = tpm2.Marshal(pub)
		_, err = tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(tp)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	r := *req
	r.AKPublic = otherAK
	ch, err := f.ca.Challenge(ctx, &r)
	if err != nil {
		t.Fatalf("Challenge(other AK) = %v", err)
	}
	if _, err := f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret); err == nil {
		t.Fatalf("ActivateCredential for a credential bound to another AK = nil; want TPM error")
	}
	// Guessing the secret fails, and burns the challenge.
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: make([]byte, 32)}); !errors.Is(err, attestca.ErrRejected) {
		t.Errorf("Activate(wrong secret) = %v; want ErrRejected", err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: make([]byte, 32)}); !errors.Is(err, attestca.ErrUnknownChallenge) {
		t.Errorf("Activate(same ID again) = %v; want ErrUnknownChallenge", err)
	}

	// The genuine AK works once; replaying the answer does not.
	ch, err = f.ca.Challenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); err != nil {
		t.Fatalf("Activate(genuine) = %v", err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); !errors.Is(err, attestca.ErrUnknownChallenge) {
		t.Errorf("Activate(replayed) = %v; want ErrUnknownChallenge", err)
	}

	// An expired challenge is refused even with the right secret.
	ch, _ = f.ca.Challenge(ctx, req)
	secret, _ = f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret)
	now = now.Add(2 * time.Minute)
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); !errors.Is(err, attestca.ErrUnknownChallenge) {
		t.Errorf("Activate(expired) = %v; want ErrUnknownChallenge", err)
	}
}

func TestHandlerHostileInput(t *testing.T) {
	f := newFixture(t, nil)
	good, _ := json.Marshal(enrollRequest(t, f.tpm, attest.RSA))
	tests := []struct {
		name, path, ctype, body string
		want                    int
	}{
		{"not JSON", "/enroll", "application/json", "{", 400},
		{"unknown field", "/enroll", "application/json", `{"ek_alg":"rsa","evil":1}`, 400},
		{"trailing data", "/enroll", "application/json", string(good) + "{}", 400},
		{"stray brace", "/enroll", "application/json", string(good) + "}", 400},
		{"wrong type", "/enroll", "application/json", `{"ek_cert":42}`, 400},
		{"bad base64", "/enroll", "application/json", `{"ek_cert":"!!!"}`, 400},
		{"empty", "/enroll", "application/json", ``, 400},
		{"too large", "/enroll", "application/json", `{"ek_alg":"` + strings.Repeat("a", attestca.MaxRequestBytes) + `"}`, 413},
		{"wrong content type", "/enroll", "text/plain", string(good), 415},
		{"unknown challenge", "/activate", "application/json", `{"id":"nope","secret":"AAAA"}`, 404},
		{"good", "/enroll", "application/json", string(good), 200},
		{"good with charset", "/enroll", "application/json; charset=utf-8", string(good), 200},
	}
	for _, tc := range tests {
		resp, err := f.srv.Client().Post(f.srv.URL+"/v1/attest"+tc.path, tc.ctype, strings.NewReader(tc.body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s: POST %s = %d %s; want %d", tc.name, tc.path, resp.StatusCode, b, tc.want)
			continue
		}
		if tc.want != 200 {
			var e protocol.Error
			if err := json.Unmarshal(b, &e); err != nil || e.Error == "" {
				t.Errorf("%s: error body %q is not {\"error\": ...}", tc.name, b)
			}
		}
	}
	resp, err := f.srv.Client().Get(f.srv.URL + "/v1/attest/enroll")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET /enroll = %d; want 405", resp.StatusCode)
	}
}

// TestEnrollSwtpm enrolls a real swtpm whose EK certificate swtpm_setup
// created, with the CA trusting swtpm's local CA as the manufacturer root.
func TestEnrollSwtpm(t *testing.T) {
	ctx := context.Background()
	sw := attesttest.StartSwtpm(t, true)
	tpm, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	signer, root, _ := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	ca, err := attestca.New(attestca.Config{
		Signer: signer, Certificate: root,
		ManufacturerRoots: sw.CARoots, ManufacturerIntermediates: sw.CAIntermediates,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ca.Handler())
	defer srv.Close()
	got, err := (&attest.EnrollClient{URL: srv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll(swtpm) = %v", err)
	}
	sans, err := x509util.ParseSubjectAlternativeNames(got.Certificate)
	if err != nil || sans.TPMHardwareDetails.Manufacturer != "id:00001014" || sans.TPMHardwareDetails.Model != "swtpm" {
		t.Errorf("swtpm AK cert TPM details = %+v, %v; want those of the EK cert (id:00001014, swtpm)", sans.TPMHardwareDetails, err)
	}

	// The same swtpm against a CA that trusts another manufacturer is refused.
	other, _ := attesttest.NewManufacturer("Acme TPM")
	ca2, _ := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: other.Roots()})
	srv2 := httptest.NewServer(ca2.Handler())
	defer srv2.Close()
	if _, err := (&attest.EnrollClient{URL: srv2.URL}).Enroll(ctx, tpm); !errors.Is(err, attest.ErrEnrollRejected) || errors.Is(err, attest.ErrOutOfService) {
		t.Errorf("Enroll(swtpm, wrong roots) = %v; want ErrEnrollRejected, not out of service (the roots may be fixed)", err)
	}
}

// TestRefuse: Config.Refuse is asked before a challenge and again before the AK
// certificate: ErrRefused refuses the EK (403) at either step, with the reason
// recorded; another error fails the request as the CA's own (500, retried later), not
// as a refusal. (A decommissioned device got AK certificates for ever before.)
func TestRefuse(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	verdict := map[string]error{}
	f := newFixture(t, func(c *attestca.Config) {
		c.Refuse = func(_ context.Context, ekID string) error {
			mu.Lock()
			defer mu.Unlock()
			return verdict[ekID]
		}
	})
	ek, _ := f.tpm.EK(ctx, attest.RSA)
	id, _ := protocol.EKID(ek.Public)
	set := func(err error) { mu.Lock(); verdict[id] = err; mu.Unlock() }
	req := enrollRequest(t, f.tpm, attest.RSA)

	set(fmt.Errorf("%w: device decommissioned: stolen", attestca.ErrRefused))
	if _, err := f.ca.Challenge(ctx, req); !errors.Is(err, attestca.ErrRejected) || !strings.Contains(err.Error(), "decommissioned") {
		t.Fatalf("Challenge(refused EK) = %v; want ErrRejected naming why", err)
	}
	set(errors.New("database unreachable"))
	if _, err := f.ca.Challenge(ctx, req); err == nil || errors.Is(err, attestca.ErrRejected) {
		t.Fatalf("Challenge(refusal unknown) = %v; want an error that is not a rejection", err)
	}
	// Refused between the challenge and its answer.
	set(nil)
	ch, err := f.ca.Challenge(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	secret, err := f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	set(fmt.Errorf("%w: device decommissioned", attestca.ErrRefused))
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); !errors.Is(err, attestca.ErrRejected) {
		t.Fatalf("Activate(EK refused since its challenge) = %v; want ErrRejected", err)
	}
	// A refusal that may end soon (an EK not on the allowlist yet) is a rejection the
	// device retries as usual: not out of service (it was, and such a device waited an
	// hour: found in review, 2 Dec).
	set(fmt.Errorf("%w: EK %s is not on the allowlist", attestca.ErrRefused, id))
	if _, err := f.client(attest.RSA).Enroll(ctx, f.tpm); !errors.Is(err, attest.ErrEnrollRejected) || errors.Is(err, attest.ErrOutOfService) {
		t.Fatalf("Enroll(EK not on the allowlist) = %v; want a rejection that is not out of service", err)
	}
	// Over HTTP a refusal for good says so (protocol.CodeRefused): the device's client
	// reads it as out of service (and asks again rarely).
	set(fmt.Errorf("%w (%w): device decommissioned: stolen", attestca.ErrRefused, attestca.ErrRefusedForGood))
	_, err = f.client(attest.RSA).Enroll(ctx, f.tpm)
	var rej *attest.RejectedError
	if !errors.As(err, &rej) || rej.Status != http.StatusForbidden || rej.Code != protocol.CodeRefused ||
		!errors.Is(err, attest.ErrOutOfService) || !errors.Is(err, attest.ErrEnrollRejected) || !strings.Contains(err.Error(), "decommissioned: stolen") {
		t.Fatalf("Enroll(refused EK) = %#v; want a 403 RejectedError, code %q, ErrOutOfService and ErrEnrollRejected, naming why", err, protocol.CodeRefused)
	}
	set(nil)
	if _, err := f.client(attest.RSA).Enroll(ctx, f.tpm); err != nil {
		t.Fatalf("Enroll(no longer refused) = %v", err)
	}
}
