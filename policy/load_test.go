package policy

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestLoadExample(t *testing.T) {
	p, err := Load("testdata/example")
	if err != nil {
		t.Fatalf("Load(testdata/example) = %v", err)
	}
	if got := len(p.Rollouts); got != 3 {
		t.Fatalf("rollouts = %d; want 3", got)
	}
	r := p.Rollout("vibration-3.1.0")
	if r == nil {
		t.Fatal("rollout vibration-3.1.0 missing")
	}
	if r.Target != (Target{artifact.KindModel, "vibration-anomaly", "3.1.0"}) {
		t.Errorf("target = %v", r.Target)
	}
	if len(r.Waves) != 4 || r.Waves[0].Percent != 1 || r.Waves[0].MaxFailureRatio != 0.2 || r.Waves[1].MinReports != 5 || !r.Waves[2].Approval || r.Waves[1].Soak != 4*time.Hour {
		t.Errorf("waves = %+v", r.Waves)
	}
	if r.Gates == nil || r.Gates.MinAccuracy != 0.96 {
		t.Errorf("gates = %+v", r.Gates)
	}
	if r.Pos.Line != 42 || !strings.HasSuffix(r.Pos.File, "fleet.yaml") {
		t.Errorf("pos = %+v; want fleet.yaml:42", r.Pos)
	}
	if p.Attestation.MaxAge != 30*time.Minute || p.Attestation.Disabled {
		t.Errorf("attestation = %+v", p.Attestation)
	}
	if p.Gates.MaxRSSMB != 256 {
		t.Errorf("default gates = %+v", p.Gates)
	}
	if w := p.Windows["berlin-nights"]; w == nil || w.Location.String() != "Europe/Berlin" || !w.Days[time.Friday] || w.Days[time.Saturday] {
		t.Errorf("window = %+v", w)
	}
	if len(p.Digest) != 64 {
		t.Errorf("digest = %q", p.Digest)
	}
	p2, _ := Load("testdata/example")
	if p2.Digest != p.Digest {
		t.Errorf("digest not stable: %s, %s", p.Digest, p2.Digest)
	}
}

// TestParseErrors checks that each mistake is reported with its file, line and a
// message an operator can act on.
func TestParseErrors(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // substring of the error, including "f.yaml:LINE:"
	}{
		{"unknown top field", "version: 1\nrolouts: []\n", "f.yaml:2: unknown field rolouts"},
		{"unknown rollout field", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    wavez: []\n", "f.yaml:4: unknown field wavez"},
		{"unknown wave field", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - {percent: 1, sok: 1h}\n", "f.yaml:5: unknown field sok"},
		{"bad percent type", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - percent: lots\n", "f.yaml:5: cannot unmarshal !!str `lots`: want a number"},
		{"map for list", "version: 1\nrollouts: {}\n", "f.yaml:2: cannot unmarshal !!map: want a list"},
		{"list for map", "gates: [1]\n", "f.yaml:1: cannot unmarshal !!seq: want a mapping"},
		{"bad bool", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - {percent: 1, approval: maybe}\n", "f.yaml:5: cannot unmarshal !!str `maybe`: want true or false"},
		{"bad labels", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      labels: [a]\n", "f.yaml:5: cannot unmarshal !!seq: want a mapping"},
		{"bad version", "rollouts:\n  - id: a\n    target:\n      kind: model\n      name: m\n      version: 1.0\n", `f.yaml:6: rollout "a": target version "1.0"`},
		{"bad kind", "rollouts:\n  - id: a\n    target:\n      kind: probe\n      name: m\n      version: 1.0.0\n", `f.yaml:4: rollout "a": target kind "probe": want model or runtime`},
		{"missing id", "rollouts:\n  - window: w\n    target: {kind: model, name: m, version: 1.0.0}\n", `f.yaml:2: rollout id ""`},
		{"missing target", "rollouts:\n  - id: a\n", `f.yaml:2: rollout "a": target missing`},
		{"bad id", "rollouts:\n  - id: Big Rollout\n", `f.yaml:2: rollout id "Big Rollout"`},
		{"duplicate id", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n  - id: a\n    target: {kind: model, name: m, version: 1.0.1}\n", `f.yaml:4: rollout "a" already defined at f.yaml:2`},
		{"approval on the first wave", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - {percent: 10, approval: true}\n      - percent: 100\n", `f.yaml:5: rollout "a": wave 0: approval: the first wave starts as soon as the rollout is created`},
		{"waves not increasing", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - percent: 10\n      - percent: 5\n", `f.yaml:6: rollout "a": wave 1: percent 5: want more than the previous wave (10)`},
		{"wave over 100", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - percent: 101\n", `f.yaml:5: rollout "a": wave 0: percent 101`},
		{"bad soak", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - percent: 100\n        soak: 1 day\n", `f.yaml:6: rollout "a": wave 0: soak "1 day"`},
		{"bad ratio", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    waves:\n      - percent: 100\n        max_failure_ratio: 1.5\n", `f.yaml:6: rollout "a": wave 0: max_failure_ratio 1.5`},
		{"bad pause ratio", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    pause:\n      max_failure_ratio: -1\n", `f.yaml:5: rollout "a": pause max_failure_ratio -1`},
		{"unknown pause field", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    pause: {ratio: 1}\n", `f.yaml:4: unknown field ratio`},
		{"bad range", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      agent_version: '>=1.x'\n", `f.yaml:5: selector agent_version: version range ">=1.x"`},
		{"CEL syntax", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      expr: 'hardware == '\n", `f.yaml:5: selector expr: CEL expression: ERROR: <input>:1:13: Syntax error`},
		{"CEL unknown variable", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      expr: 'hw == \"x\"'\n", `f.yaml:5: selector expr: CEL expression: ERROR: <input>:1:1: undeclared reference to 'hw'`},
		{"CEL type error", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      expr: 'hardware > 3'\n", `f.yaml:5: selector expr: CEL expression: ERROR: <input>:1:10: found no matching overload for '_>_'`},
		{"CEL not bool", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    selector:\n      expr: 'hardware'\n", `f.yaml:5: selector expr: CEL expression has type string, want bool`},
		{"unknown window", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n    window: nights\n", `f.yaml:4: rollout "a": unknown window "nights"`},
		{"bad timezone", "windows:\n  - name: w\n    timezone: Mars/Olympus\n    days: [mon]\n    from: '01:00'\n    to: '02:00'\n", `f.yaml:3: window "w": unknown time zone "Mars/Olympus"`},
		{"bad day", "windows:\n  - name: w\n    days: [mon, funday]\n    from: '01:00'\n    to: '02:00'\n", `f.yaml:3: window "w": unknown day "funday"`},
		{"bad time", "windows:\n  - name: w\n    days: [mon]\n    from: '25:00'\n    to: '02:00'\n", `f.yaml:4: window "w": from: time of day "25:00": out of range`},
		{"empty window", "windows:\n  - name: w\n    days: [mon]\n    from: '02:00'\n    to: '02:00'\n", `f.yaml:4: window "w": from 02:00 and to 02:00 make an empty window`},
		{"missing days", "windows:\n  - name: w\n    from: '01:00'\n    to: '02:00'\n", `f.yaml:2: window "w": days missing`},
		{"bad gate", "gates:\n  min_accuracy: 95\n", "f.yaml:2: gate min_accuracy 95: want a value in [0, 1]"},
		{"bad max_age", "attestation:\n  max_age: soon\n", `f.yaml:2: attestation max_age "soon"`},
		{"misspelt runtime field", "attestation:\n  runtime:\n    enforced: true\n", `f.yaml:3: unknown runtime policy field "enforced"`},
		{"bad runtime digest", "attestation:\n  runtime:\n    agent: [abc]\n", `f.yaml:3: attestation runtime: reference: invalid: agent: "abc"`},
		{"misspelt boot field", "attestation:\n  boot:\n    - secure_bot: true\n", `f.yaml:3: unknown boot policy field "secure_bot"`},
		{"bad boot digest", "attestation:\n  boot:\n    - boot_applications: [abc]\n", `f.yaml:3: attestation boot: reference: invalid: boot_applications: "abc" is not 64 lowercase hex digits`},
		{"boot PCR out of range", "attestation:\n  boot:\n    - pcrs: {10: [" + strings.Repeat("a", 64) + "]}\n", `f.yaml:3: attestation boot: reference: invalid: pcrs: 10 is not a boot PCR`},
		{"unknown policy version", "version: 2\n", "f.yaml:1: version 2: this server reads policy version 1"},
		{"two documents", "version: 1\n---\nversion: 1\n", "f.yaml:2: more than one YAML document"},
		{"duplicate key", "version: 1\nversion: 1\n", `f.yaml:2: mapping key "version" already defined at line 1`},
		{"syntax", "rollouts: [\n", "f.yaml:1: did not find expected node content"},
		{"empty file", "", "f.yaml: empty file"},
		{"maintenance unknown window", "maintenance:\n  - window: none\n", `f.yaml:2: maintenance: unknown window "none"`},
		{"mapping for scalar", "rollouts:\n  - id: {a: b}\n", "f.yaml:2: want a value, got a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse(File{Name: "f.yaml", Data: []byte(tt.yaml)})
			if err == nil {
				t.Fatalf("Parse(%q) = %v, nil; want error containing %q", tt.yaml, p, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%q) error =\n%v\nwant it to contain\n%s", tt.yaml, err, tt.want)
			}
			var pe *Error
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *policy.Error", err)
			}
			if strings.Contains(err.Error(), "policy.raw") || strings.Contains(err.Error(), "located[") {
				t.Errorf("error leaks Go type names: %v", err)
			}
		})
	}
}

func TestParseSeveralFiles(t *testing.T) {
	a := File{Name: "a.yaml", Data: []byte("attestation: {max_age: 5m}\nwindows:\n  - {name: w, days: [all], from: '01:00', to: '02:00'}\n")}
	b := File{Name: "b.yaml", Data: []byte("rollouts:\n  - id: r\n    target: {kind: runtime, name: ort, version: 1.2.3}\n    window: w\n")}
	p, err := Parse(a, b)
	if err != nil {
		t.Fatalf("Parse(a, b) = %v", err)
	}
	if p.Rollouts[0].Window != p.Windows["w"] || p.Attestation.MaxAge != 5*time.Minute {
		t.Errorf("merged policy wrong: %+v", p)
	}
	pp, err := Parse(File{Name: "p.yaml", Data: []byte("rollouts:\n  - id: r\n    target: {kind: model, name: m, version: 1.0.0}\n    pause: {max_failure_ratio: 0.5, min_reports: 20}\n    waves:\n      - {percent: 1}\n      - {percent: 100, min_reports: 7}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if w := pp.Rollouts[0].Waves; w[0].MaxFailureRatio != 0.5 || w[0].MinReports != 20 || w[1].MaxFailureRatio != 0.5 || w[1].MinReports != 7 {
		t.Errorf("pause defaults: waves = %+v", w)
	}
	// Waves default to one wave of 100%.
	if w := p.Rollouts[0].Waves; len(w) != 1 || w[0].Percent != 100 {
		t.Errorf("default waves = %+v", w)
	}
	_, err = Parse(File{Name: "g1.yaml", Data: []byte("gates: {max_p99_ms: 5}\n")}, File{Name: "g2.yaml", Data: []byte("version: 1\ngates:\n  max_p99_ms: 4\n")})
	if err == nil || !strings.Contains(err.Error(), "g2.yaml:3: gates already set in g1.yaml") {
		t.Errorf("duplicate gates: err = %v", err)
	}
	_, err = Parse(a, File{Name: "c.yaml", Data: []byte("\nattestation: {required: false}\n")})
	if err == nil || !strings.Contains(err.Error(), "c.yaml:2: attestation already set in a.yaml") {
		t.Errorf("duplicate attestation: err = %v", err)
	}
}

func TestParseReportsEveryError(t *testing.T) {
	_, err := Parse(File{Name: "f.yaml", Data: []byte("rollouts:\n  - id: a\n  - id: B\n")})
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 2 {
		t.Fatalf("err = %v; want 2 errors", err)
	}
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	if _, err := Load(dir); !errors.Is(err, ErrNoPolicy) {
		t.Errorf("Load(empty dir) = %v; want ErrNoPolicy", err)
	}
	write := func(name, s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(".fleet.yaml.swp", "garbage: [")
	write("fleet.yaml~", "garbage: [")
	write("README.md", "# not policy")
	write("fleet.yaml", "rollouts:\n  - id: a\n    target: {kind: model, name: m, version: 1.0.0}\n")
	p, err := Load(dir)
	if err != nil || len(p.Rollouts) != 1 {
		t.Fatalf("Load = %v, %v; want 1 rollout (hidden, backup and other files skipped)", p, err)
	}
	write("big.yaml", strings.Repeat("#", MaxFileSize+1))
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("Load(big file) = %v; want size error", err)
	}
}

func TestParseBootPolicy(t *testing.T) {
	k, d := strings.Repeat("a", 64), strings.Repeat("b", 64)
	p, err := Parse(File{Name: "f.yaml", Data: []byte("attestation:\n  boot:\n    - hardware: [aarch64]\n      secure_boot: true\n      boot_applications: [" + k + "]\n      forbidden: [" + d + "]\n      pcrs: {0: [" + d + "]}\n    - {}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if p.Attestation.Runtime != nil {
		t.Fatalf("runtime policy = %+v; want none", p.Attestation.Runtime)
	}
	b := p.Attestation.Boot
	if len(b) != 2 || !b[0].SecureBoot || b[0].Hardware[0] != "aarch64" || b[0].BootApplications[0] != k || b[0].Forbidden[0] != d || b[0].PCRs[0][0] != d {
		t.Fatalf("Parse boot policy = %+v", b)
	}
}

func TestParseRuntimePolicy(t *testing.T) {
	a, r := strings.Repeat("a", 64), strings.Repeat("b", 64)
	p, err := Parse(File{Name: "f.yaml", Data: []byte("attestation:\n  runtime:\n    agent: [" + a + "]\n    runtime: [" + r + "]\n    allowed: [" + r + "]\n    enforce: true\n")})
	if err != nil {
		t.Fatal(err)
	}
	rt := p.Attestation.Runtime
	if rt == nil || !rt.Enforce || rt.Agent[0] != a || rt.Runtime[0] != r || rt.Allowed[0] != r {
		t.Fatalf("Parse runtime policy = %+v", rt)
	}
}
