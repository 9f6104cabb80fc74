package reposerver

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// Two replicas on one fleet database: a device gets its nonce from one and checks in
// at the other, and the nonce cannot be replayed at either (nonces live in the
// database, not in a replica's memory).
func TestNonceFromOneReplicaCheckInAtAnother(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	store2, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store2.Close()
	srv2, err := NewServer(ServerConfig{Repo: f.repo})
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(d.ak.Chain[len(d.ak.Chain)-1])
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv2.EnableDeviceAPI(DeviceConfig{Fleet: store2, AttestRoots: roots, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs2 := httptest.NewServer(srv2.Handler())
	defer hs2.Close()
	replica2 := &deviceapi.Client{BaseURL: hs2.URL}

	req := d.request() // the nonce comes from replica 1
	resp, err := replica2.CheckIn(ctx, req)
	if err != nil || !resp.Trusted {
		t.Fatalf("check-in at replica 2 with replica 1's nonce = %+v, %v; want trusted", resp, err)
	}
	for name, c := range map[string]*deviceapi.Client{"replica 1": d.api, "replica 2": replica2} {
		_, err := c.CheckIn(ctx, req)
		var apiErr *deviceapi.Error
		if !errors.As(err, &apiErr) || apiErr.Status != 401 {
			t.Fatalf("replayed check-in at %s = %v; want 401", name, err)
		}
	}
	if _, err := f.store.Device(ctx, d.id); err != nil {
		t.Fatalf("device enrolled through replica 2 not seen by replica 1: %v", err)
	}
}

// routeActivate sends enrollment's second step (activate) to another server.
type routeActivate struct{ to *url.URL }

func (r routeActivate) RoundTrip(req *http.Request) (*http.Response, error) {
	if strings.HasSuffix(req.URL.Path, "/activate") {
		req = req.Clone(req.Context())
		req.URL.Scheme, req.URL.Host, req.Host = r.to.Scheme, r.to.Host, r.to.Host
	}
	return http.DefaultTransport.RoundTrip(req)
}

// Two replicas on one fleet database: a TPM gets its enrollment challenge from one
// and answers it at the other (challenges live in the database, not in a replica's
// memory), and the answered challenge is gone from the database.
func TestChallengeFromOneReplicaAnsweredAtAnother(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	f.clock.useReal()
	ctx := context.Background()
	maker, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	var urls []string
	for i := 0; i < 2; i++ {
		store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { store.Close() })
		srv := f.srv
		if i > 0 {
			if srv, err = NewServer(ServerConfig{Repo: f.repo}); err != nil {
				t.Fatal(err)
			}
		}
		ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter,
			Challenges: Challenges{Fleet: store}})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestCA: ca}); err != nil {
			t.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		t.Cleanup(hs.Close)
		urls = append(urls, hs.URL)
	}
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	to, _ := url.Parse(urls[1])
	client := &attest.EnrollClient{URL: urls[0] + wire.PathAttest, HTTP: &http.Client{Transport: routeActivate{to}}}
	ak, err := client.Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll(challenge from replica 1, answer at replica 2) = %v; want an AK certificate", err)
	}
	if ak.PermanentIdentifier == "" {
		t.Fatal("no permanent identifier")
	}
	var n int
	if err := f.srv.devices.cfg.Fleet.DB().QueryRowContext(ctx, `SELECT count(*) FROM challenges`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("pending challenges after enrollment = %d, %v; want 0 (answered once)", n, err)
	}
}
