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

func TestCreateRollout(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), "windows:\n  - {name: nights, days: [all], from: '22:00', to: '04:00'}\n"+
		"rollouts:\n  - id: base\n    target: {kind: model, name: vib, version: 3.0.0}\n")
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	ratio, minReports := 0.25, 4
	spec := RolloutSpec{
		ID:       "vib-3.1.0",
		Target:   TargetSpec{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"},
		Selector: &SelectorSpec{Labels: map[string]string{"line": "press"}, Expr: `attrs["ram_mb"] > 512.0 && hardware != "x: y"`},
		Window:   "nights",
		Gates:    &GatesSpec{MinAccuracy: 0.97},
		Pause:    &PauseSpec{MaxFailureRatio: &ratio, MinReports: &minReports},
		Waves:    []WaveSpec{{Percent: 1, Soak: "1h"}, {Percent: 100, Approval: true}},
	}
	path, err := CreateRollout(dir, spec, now)
	if err != nil {
		t.Fatalf("CreateRollout = %v", err)
	}
	if !strings.HasPrefix(filepath.Base(path), CreatedPrefix) {
		t.Errorf("path = %s", path)
	}
	p, err := Load(dir)
	if err != nil {
		t.Fatalf("Load after CreateRollout = %v", err)
	}
	r := p.Rollout("vib-3.1.0")
	if r == nil || r.Window != p.Windows["nights"] || r.Gates.MinAccuracy != 0.97 || len(r.Waves) != 2 || r.Waves[0].Soak != time.Hour ||
		!r.Waves[1].Approval || r.Waves[0].MaxFailureRatio != 0.25 || r.Waves[1].MinReports != 4 || r.Selector.Expr != spec.Selector.Expr {
		t.Fatalf("created rollout = %+v", r)
	}
	// Created later sorts first: the newest rollout takes precedence.
	if _, err := CreateRollout(dir, RolloutSpec{ID: "vib-3.2.0", Target: TargetSpec{artifact.KindModel, "vib", "3.2.0"}}, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	p, _ = Load(dir)
	var order []string
	for _, r := range p.Rollouts {
		order = append(order, r.ID)
	}
	if got := strings.Join(order, " "); got != "vib-3.2.0 vib-3.1.0 base" {
		t.Errorf("rollout order = %s; want newest first", got)
	}

	// Invalid: nothing is written, and the error says what is wrong.
	for _, tt := range []struct {
		spec RolloutSpec
		want string
	}{
		{RolloutSpec{ID: "x", Target: TargetSpec{artifact.KindModel, "vib", "3.3.0"}, Window: "days"}, `unknown window "days"`},
		{RolloutSpec{ID: "y", Target: TargetSpec{artifact.KindModel, "vib", "3.3.0"}, Selector: &SelectorSpec{Expr: "hardware > 1"}}, "found no matching overload"},
		{RolloutSpec{ID: "base", Target: TargetSpec{artifact.KindModel, "vib", "3.3.0"}}, `rollout "base" already defined`},
		{RolloutSpec{ID: "Bad/../id", Target: TargetSpec{artifact.KindModel, "vib", "3.3.0"}}, `rollout id "Bad/../id"`},
		{RolloutSpec{ID: "z", Target: TargetSpec{artifact.KindModel, "vib", "3.3.0"}, Waves: []WaveSpec{{Percent: 50}, {Percent: 10}}}, "wave 2: percent 10"},
	} {
		before, _ := os.ReadDir(dir)
		_, err := CreateRollout(dir, tt.spec, now.Add(2*time.Hour))
		var list ErrorList
		if !errors.As(err, &list) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("CreateRollout(%s) = %v; want an ErrorList containing %q", tt.spec.ID, err, tt.want)
		}
		if after, _ := os.ReadDir(dir); len(after) != len(before) {
			t.Errorf("CreateRollout(%s) left files behind: %d -> %d", tt.spec.ID, len(before), len(after))
		}
	}
}

func TestCreateRolloutIsHotReloaded(t *testing.T) {
	w, dir, _ := startWatcher(t)
	if _, err := CreateRollout(dir, RolloutSpec{ID: "new", Target: TargetSpec{artifact.KindModel, "m", "9.0.0"}}, time.Now()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, w, 5*time.Second, "created rollout loaded", func() bool { return w.Policy().Rollout("new") != nil })
	if rolloutID(w) != "new" {
		t.Errorf("first rollout = %s; want the created one first", rolloutID(w))
	}
}
