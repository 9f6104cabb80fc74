package policy

import (
	"os"
	"testing"
	"time"
)

// FuzzParse: no input panics the loader, and whatever it accepts can be evaluated.
func FuzzParse(f *testing.F) {
	example, err := os.ReadFile("testdata/example/fleet.yaml")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(example)
	f.Add([]byte(evalPolicy))
	f.Add([]byte("rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 0.01}, {percent: 100}]\n"))
	f.Add([]byte("windows:\n  - {name: w, timezone: Asia/Kolkata, days: [fri-mon], from: '23:30', to: '00:15'}\n"))
	f.Add([]byte("rollouts: [{id: a, target: {kind: runtime, name: r, version: 1.0.0-rc.1}, selector: {expr: 'size(labels) > 0'}}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(File{Name: "f.yaml", Data: data})
		if err != nil {
			return
		}
		d := &Device{ID: "dev-1", Labels: map[string]string{"a": "b"}, Verdict: VerdictTrusted}
		now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
		d.VerdictAt = now
		states := map[string]RolloutState{}
		for _, r := range p.Rollouts {
			st, _ := Plan(r, RolloutState{}, nil, now)
			states[r.ID] = st
		}
		Evaluate(p, d, states, now, nil)
		for _, w := range p.Windows {
			w.Next(now)
		}
	})
}
