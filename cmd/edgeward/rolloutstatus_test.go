package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestRolloutStatusShowsApprovals: a wave an operator approved reads "approved", one
// still waiting "needed" (every approval wave read "needed" after its approval: found
// by an outside operator journey).
func TestRolloutStatusShowsApprovals(t *testing.T) {
	now := time.Now()
	st := fleet.RolloutStatus{
		ID:     "vib-3",
		Target: policy.Target{Kind: "model", Name: "vibration", Version: "3.0.0"},
		State:  policy.RolloutState{Status: policy.StatusActive, Started: now.Add(-time.Hour), Wave: 0, Approved: []int{1}},
		Waves:  []fleet.WaveStatus{{Percent: 10}, {Percent: 50, Approval: true}, {Percent: 100, Approval: true}},
	}
	var out bytes.Buffer
	printRolloutStatus(&out, st, 0, now)
	rows := map[string]string{}
	for _, ln := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(ln); len(f) > 1 && (f[0] == "0*" || f[0] == "1" || f[0] == "2") {
			rows[strings.TrimSuffix(f[0], "*")] = f[len(f)-1]
		}
	}
	if rows["0"] != "-" || rows["1"] != "approved" || rows["2"] != "needed" {
		t.Fatalf("APPROVAL column = %v; want 0: -, 1: approved, 2: needed\n%s", rows, out.String())
	}
	if strings.Contains(out.String(), "since the resume") {
		t.Fatalf("a rollout never resumed says its waves count since a resume:\n%s", out.String())
	}
	// Resumed: the waves count the reports since, and the status says so.
	st.State.CountSince = now.Add(-5 * time.Minute)
	out.Reset()
	printRolloutStatus(&out, st, 0, now)
	if !strings.Contains(out.String(), "waves count the reports since the resume 5m") {
		t.Fatalf("a resumed rollout's status does not say since when its waves count:\n%s", out.String())
	}
}
