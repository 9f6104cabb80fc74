package policy

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// newFuzzParser builds the Parser, with its CEL environment, once per fuzz process: the
// fuzz function itself does per-input work only.
func newFuzzParser(f *testing.F) *Parser {
	f.Helper()
	p, err := NewParser()
	if err != nil {
		f.Fatal(err)
	}
	return p
}

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
	parser := newFuzzParser(f)
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := parser.Parse(File{Name: "f.yaml", Data: data})
		if err != nil {
			return
		}
		d := &Device{ID: "dev-1", Labels: map[string]string{"a": "b"}, Verdict: VerdictTrusted, VerdictAt: now}
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

// FuzzSelectorExpr: compiling a selector expression (the CEL a policy author writes)
// never panics; what compiles is a bool expression whose evaluation on any device,
// bounded by the cost limit, returns a match or a reason, never a panic.
func FuzzSelectorExpr(f *testing.F) {
	for _, e := range []string{
		`size(labels) > 0`,
		`model == "vibration-anomaly" && double(attrs["ram_mb"]) >= 512.0`,
		`labels["site"] == "berlin" && hardware == "aarch64"`,
		`double(attrs["ram_mb"]) >= 512.0 && !attrs["gpu"]`,
		`model == "vib" && model_version.startsWith("3.")`,
		`runtime_version == "1.24.1" && agent_version == "0.5.0" && id == "dev-1"`,
		`"line" in labels && !("zone" in labels)`,
		`id.matches("^dev-[0-9]+$") || labels.exists(k, k.endsWith("x"))`,
		`[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, a+b+c > 0)))`,
		`hardware > 3`,
		`hardware == `,
	} {
		f.Add(e)
	}
	parser := newFuzzParser(f)
	devices := []*Device{
		{ID: "dev-1"},
		{ID: "dev-2", Labels: map[string]string{"site": "berlin", "line": "press"}, Hardware: "aarch64", AgentVersion: "0.5.0",
			Attrs: map[string]any{"ram_mb": 1024.0, "gpu": false, "name": "x"},
			Slots: map[artifact.Kind]Slot{artifact.KindModel: {Name: "vib", Version: "3.1.0"}, artifact.KindRuntime: {Name: "ort", Version: "1.24.1"}}},
	}
	f.Fuzz(func(t *testing.T, expr string) {
		prg, err := compileExpr(parser.env, expr)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "CEL expression") {
				t.Fatalf("compileExpr(%q) = %v; want a CEL expression error", expr, err)
			}
			return
		}
		s := &Selector{Expr: expr, prg: prg}
		for _, d := range devices {
			if ok, why := s.Match(d); !ok && why == "" {
				t.Fatalf("Match(%s) with %q = false without a reason", d.ID, expr)
			}
		}
	})
}
