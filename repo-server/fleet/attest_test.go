package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/policy"
)

// TestAttestCountsAnUntrustedDeviceOnce: a device that stays untrusted over several
// check-ins is one attestation failure of the rollout it runs, not one per check-in.
func testAttestCountsAnUntrustedDeviceOnce(t *testing.T, db opener) {
	ctx := context.Background()
	s, err := Open(ctx, db(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte(`version: 1
rollouts:
  - id: vib-1.0.0
    target: {kind: model, name: vib, version: 1.0.0}
    waves: [{percent: 100}]
`)})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(1700000000, 0)
	if err := s.Enroll(ctx, "dev-1", nil, t0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}, At: t0}); err != nil {
		t.Fatal(err)
	}
	verdicts := []policy.Verdict{policy.VerdictTrusted, policy.VerdictUntrusted, policy.VerdictUntrusted, policy.VerdictUntrusted, policy.VerdictTrusted, policy.VerdictUntrusted}
	for i, v := range verdicts {
		if err := s.Attest(ctx, p, "dev-1", v, "artifact_mismatch", t0.Add(time.Duration(i)*time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	reps, err := s.Reports(ctx, ReportFilter{RolloutID: "vib-1.0.0"})
	if err != nil {
		t.Fatal(err)
	}
	if len(reps) != 2 {
		t.Fatalf("attestation reports = %d; want 2 (one per turn to untrusted)", len(reps))
	}
}
