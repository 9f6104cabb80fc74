package fleet

import (
	"reflect"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/policy"
)

// TestAdmitVerdictRecordsEvidence: the attestation.verdict audit record carries what the
// boot log and the IMA list proved, so that an auditor sees on what grounds a device
// was trusted, and carries neither when the device sent none.
func TestAdmitVerdictRecordsEvidence(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	boot := &reference.BootState{SecureBoot: true, BootApplications: []string{"aa", "bb"}}
	rt := &reference.RuntimeState{Entries: 3, Agent: []string{"cc"}}
	verdictData := func(b *reference.BootState, r *reference.RuntimeState) map[string]any {
		t.Helper()
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID = "dev-1"
		out, err := Admit(Admission{Stored: d, CheckIn: CheckIn{ID: "dev-1", At: t0}, Verdict: policy.VerdictTrusted, Boot: b, Runtime: r, Now: t0})
		if err != nil {
			t.Fatalf("Admit = %v", err)
		}
		for _, rec := range out.Audit {
			if rec.Kind == "attestation.verdict" {
				m, _ := rec.Data.(map[string]any)
				return m
			}
		}
		t.Fatal("no attestation.verdict audit record")
		return nil
	}
	got := verdictData(boot, rt)
	if !reflect.DeepEqual(got["boot"], boot) || !reflect.DeepEqual(got["runtime"], rt) {
		t.Errorf("verdict record with evidence = %v; want boot %v and runtime %v", got, boot, rt)
	}
	got = verdictData(nil, nil)
	if _, ok := got["boot"]; ok {
		t.Errorf("verdict record without a boot log has boot = %v", got["boot"])
	}
	if _, ok := got["runtime"]; ok {
		t.Errorf("verdict record without an IMA list has runtime = %v", got["runtime"])
	}
}
