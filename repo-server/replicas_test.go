package reposerver

import (
	"context"
	"crypto/x509"
	"errors"
	"net/http/httptest"
	"testing"

	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// Two replicas on one fleet database: a device gets its nonce from one and checks in
// at the other, and the nonce cannot be replayed at either (nonces live in the
// database, not in a replica's memory).
func TestNonceFromOneReplicaCheckInAtAnother(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	store2, err := fleet.Open(ctx, DBPath(f.repo.Dir()))
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
