package policy_test

import (
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/policy"
)

// The server's use of the package: load the policy, plan the rollouts, evaluate a
// device at check-in.
func Example() {
	p, err := policy.Load("testdata/example")
	if err != nil {
		fmt.Println(err)
		return
	}
	now := time.Date(2026, 11, 27, 23, 30, 0, 0, time.UTC) // a Friday night
	states := map[string]policy.RolloutState{}
	for _, r := range p.Rollouts {
		st, events := policy.Plan(r, states[r.ID], nil, now) // the server persists st, then logs events
		states[r.ID] = st
		fmt.Println(r.ID, len(events), "events, status", st.Status)
	}
	dev := &policy.Device{
		ID: "press-0042", Labels: map[string]string{"line": "press", "site": "berlin"}, Hardware: "aarch64", AgentVersion: "0.5.0",
		Slots: map[artifact.Kind]policy.Slot{
			artifact.KindModel:   {Name: "vibration-anomaly", Version: "3.0.0"},
			artifact.KindRuntime: {Name: "onnxruntime", Version: "1.24.0"},
		},
		Attrs:   map[string]any{"ram_mb": 2048.0},
		Verdict: policy.VerdictTrusted, VerdictAt: now.Add(-5 * time.Minute),
	}
	dec := policy.Evaluate(p, dev, states, now, nil)
	for _, sd := range dec.Slots {
		fmt.Println(sd.Kind, sd.Action, sd.Reason, sd.Target)
	}
	// Output:
	// vibration-3.1.0 2 events, status active
	// vibration-3.0.0 3 events, status completed
	// onnxruntime-1.24.1 2 events, status active
	// model hold up_to_date model/vibration-anomaly@3.0.0
	// runtime hold wave_not_reached runtime/onnxruntime@1.24.1
}
