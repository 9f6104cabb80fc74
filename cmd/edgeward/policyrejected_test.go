package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestRolloutStatusShowsPolicyRejection: `rollout status`, the list and one rollout's,
// says first that the policy directory has a rejected file, naming it with its error;
// only /v1/policy and the dashboard said so, and status showed the last good policy as
// if all were well (found from outside).
func TestRolloutStatusShowsPolicyRejection(t *testing.T) {
	s := newOpServer(t)
	rm := s.cli(t, fleet.RoleReleaseManager)
	rm.must("rollout", "create", "--id", "vib-2", "--name", "vibration", "--version", "2.0.0")
	if out := rm.must("rollout", "status"); strings.Contains(out, "rejected") {
		t.Fatalf("rollout status with a valid policy:\n%s", out)
	}
	typo := "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n"
	if err := os.WriteFile(filepath.Join(s.dir, "20-typo.yaml"), []byte(typo), 0o644); err != nil {
		t.Fatal(err)
	}
	want := []string{"warning: the policy directory has a rejected file (20-typo.yaml)", `20-typo.yaml:4: rollout "t": wave 0: soak "10"`}
	var out string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if out = rm.must("rollout", "status"); strings.Contains(out, want[0]) || time.Now().After(deadline) {
			break
		}
	}
	for _, args := range [][]string{{"rollout", "status"}, {"rollout", "status", "vib-2"}} {
		out = rm.must(args...)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Errorf("%s lacks %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
		if !strings.Contains(out, "vib-2") {
			t.Errorf("%s lacks the rollouts of the last good policy:\n%s", strings.Join(args, " "), out)
		}
	}
}
