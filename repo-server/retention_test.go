package reposerver

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// TestRetention: with DeviceConfig.Retention the server deletes the fleet's history
// older than the retention, by the repository's clock, and counts what it deleted in
// /metrics; what is younger stays.
func TestRetention(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, repository.KeyEd25519)
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	_, caCert, _ := attestca.NewRoot("Test Attestation CA", time.Hour)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	p, _ := policy.Parse(policy.File{Name: "p.yaml", Data: []byte("version: 1\n")})
	if err := f.srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: roots, Policy: func() *policy.Policy { return p },
		Retention: 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	now := f.clock.Now()
	if err := store.Enroll(ctx, "d", nil, now.Add(-72*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for _, age := range []time.Duration{72 * time.Hour, 48 * time.Hour, time.Hour} {
		if err := store.RecordVerdict(ctx, "d", policy.VerdictTrusted, age.String(), now.Add(-age)); err != nil {
			t.Fatal(err)
		}
	}
	f.srv.devices.pruneOnce(ctx)
	vs, err := store.DeviceVerdicts(ctx, "d", time.Time{}, 10)
	if err != nil || len(vs) != 1 || vs[0].Detail != "1h0m0s" {
		t.Fatalf("verdicts after retention = %+v, %v; want only the one an hour old", vs, err)
	}
	if n := testutil.ToFloat64(f.srv.devices.pruned.WithLabelValues("verdicts")); n != 2 {
		t.Errorf("edgeward_fleet_pruned_rows_total{table=verdicts} = %v; want 2", n)
	}
}
