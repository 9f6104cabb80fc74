package policy

import (
	"bufio"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/scenarios")

// TestScenarios runs the fleet simulations in testdata/scenarios/*.txt and compares their
// transcripts with the .golden files next to them. A scenario is a policy (between
// "policy" and "end") and commands:
//
//	fleet N key=value...   add N devices: labels.K=V, hardware=, agent=, model=name@ver, runtime=name@ver, window=false
//	fail name@ver RATE     installs of that target fail (probe_failed) on RATE of the devices
//	tick STEP N            N steps of STEP: plan every rollout, evaluate every device, install
//	pause|resume|abort ID  operator actions
//	approve ID WAVE
//	untrust N              the first N devices get an untrusted verdict
//
// Each step that changes something prints the time, the events and the fleet's versions.
// The devices install instantly; a device commits a version only above its floor.
func TestScenarios(t *testing.T) {
	files, _ := filepath.Glob("testdata/scenarios/*.txt")
	if len(files) == 0 {
		t.Fatal("no scenarios")
	}
	for _, f := range files {
		name := strings.TrimSuffix(filepath.Base(f), ".txt")
		t.Run(name, func(t *testing.T) {
			got := runScenario(t, f)
			golden := strings.TrimSuffix(f, ".txt") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run with -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("scenario %s transcript differs from %s (run with -update and review the diff):\n%s", name, golden, got)
			}
		})
	}
}

type simDevice struct {
	Device
	floor map[artifact.Kind]string
}

type sim struct {
	t       *testing.T
	p       *Policy
	now     time.Time
	start   time.Time
	devs    []*simDevice
	states  map[string]RolloutState
	reports []wire.Report
	fail    map[string]float64 // name@version → fraction failing
	holds   string             // the last step's holds, to print only changes
	out     strings.Builder
}

func runScenario(t *testing.T, path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)
	s := &sim{t: t, now: start, start: start, states: map[string]RolloutState{}, fail: map[string]float64{}}
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	var pol []string
	inPolicy := false
	for sc.Scan() {
		line := sc.Text()
		if inPolicy {
			if strings.TrimSpace(line) == "end" {
				inPolicy = false
				if s.p, err = Parse(File{Name: path, Data: []byte(strings.Join(pol, "\n"))}); err != nil {
					t.Fatalf("policy: %v", err)
				}
				continue
			}
			pol = append(pol, line)
			continue
		}
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		fmt.Fprintf(&s.out, "> %s\n", line)
		switch f[0] {
		case "policy":
			inPolicy, pol = true, nil
		case "fleet":
			s.addFleet(f[1:])
		case "fail":
			s.fail[f[1]] = atof(t, f[2])
		case "untrust":
			for _, d := range s.devs[:atoi(t, f[1])] {
				d.Verdict = VerdictUntrusted
			}
		case "tick":
			step, err := time.ParseDuration(f[1])
			if err != nil {
				t.Fatal(err)
			}
			for range atoi(t, f[2]) {
				s.now = s.now.Add(step)
				s.step()
			}
		case "pause", "resume", "abort", "approve":
			s.operator(f)
		default:
			t.Fatalf("unknown command %q", line)
		}
	}
	return s.out.String()
}

func atoi(t *testing.T, s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func atof(t *testing.T, s string) float64 {
	n, err := strconv.ParseFloat(s, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func (s *sim) addFleet(args []string) {
	n := atoi(s.t, args[0])
	base := len(s.devs)
	for i := range n {
		d := &simDevice{Device: Device{ID: fmt.Sprintf("dev-%04d", base+i), Labels: map[string]string{}, Slots: map[artifact.Kind]Slot{}, Verdict: VerdictTrusted}, floor: map[artifact.Kind]string{}}
		for _, kv := range args[1:] {
			k, v, _ := strings.Cut(kv, "=")
			switch {
			case strings.HasPrefix(k, "labels."):
				d.Labels[strings.TrimPrefix(k, "labels.")] = v
			case k == "hardware":
				d.Hardware = v
			case k == "agent":
				d.AgentVersion = v
			case k == "model" || k == "runtime":
				name, ver, _ := strings.Cut(v, "@")
				d.Slots[artifact.Kind(k)] = Slot{Name: name, Version: ver}
				d.floor[artifact.Kind(k)] = ver
			default:
				s.t.Fatalf("fleet: unknown attribute %q", kv)
			}
		}
		s.devs = append(s.devs, d)
	}
	fmt.Fprintf(&s.out, "  %s\n", s.versions())
}

func (s *sim) operator(f []string) {
	id := f[1]
	st := s.states[id]
	st.ID = id
	var ev Event
	var err error
	switch f[0] {
	case "pause":
		st, ev, err = Pause(st, "op", "by hand", s.now)
	case "resume":
		st, ev, err = Resume(st, "op", s.now)
	case "abort":
		st, ev, err = Abort(st, "op", "by hand", s.now)
	case "approve":
		st, ev, err = Approve(s.p.Rollout(id), st, atoi(s.t, f[2]), "op", s.now)
	}
	if err != nil {
		fmt.Fprintf(&s.out, "  error: %v\n", err)
		return
	}
	s.states[id] = st
	fmt.Fprintf(&s.out, "  %s event %s wave=%d\n", s.clock(), ev.Type, ev.Wave)
}

func (s *sim) clock() string {
	d := s.now.Sub(s.start)
	return fmt.Sprintf("+%02dh%02dm", int(d.Hours()), int(d.Minutes())%60)
}

// step plans every rollout, then lets every device check in and install.
func (s *sim) step() {
	var lines []string
	for _, r := range s.p.Rollouts {
		st, evs := Plan(r, s.states[r.ID], s.reports, s.now)
		s.states[r.ID] = st
		for _, e := range evs {
			l := fmt.Sprintf("event %s %s wave=%d", e.Rollout, e.Type, e.Wave)
			if e.Reason != "" {
				l += " (" + e.Reason + ")"
			}
			lines = append(lines, l)
		}
	}
	holds := map[string]int{}
	installs, failures := 0, 0
	for _, d := range s.devs {
		d.VerdictAt = s.now
		dec := Evaluate(s.p, &d.Device, s.states, s.now, nil)
		for _, sd := range dec.Slots {
			if sd.Action != ActionInstall {
				if sd.Reason != ReasonUpToDate && sd.Reason != ReasonNotSelected {
					holds[string(sd.Action)+":"+string(sd.Reason)]++
				}
				continue
			}
			installs++
			rep := wire.Report{DeviceID: d.ID, RolloutID: sd.Rollout, Kind: sd.Kind, Name: sd.Target.Name, Version: sd.Target.Version, At: s.now, Outcome: wire.OutcomeCommitted}
			cur := d.Slots[sd.Kind]
			key := sd.Target.Name + "@" + sd.Target.Version
			switch {
			case d.floor[sd.Kind] != "" && lower(sd.Target.Version, d.floor[sd.Kind]):
				rep.Outcome, rep.Cause = wire.OutcomeInstallError, "downgrade refused"
			case Bucket("fail:"+key, d.ID) < int(s.fail[key]*10000):
				rep.Outcome, rep.Cause = wire.OutcomeProbeFailed, "accuracy below gate"
			}
			if rep.Outcome.Failed() {
				failures++
				cur.Failed = sd.Target.Version
			} else {
				cur = Slot{Name: sd.Target.Name, Version: sd.Target.Version, Previous: cur.Version}
				d.floor[sd.Kind] = sd.Target.Version
			}
			d.Slots[sd.Kind] = cur
			s.reports = append(s.reports, rep)
		}
	}
	if len(lines) == 0 && installs == 0 && fmtCounts(holds) == s.holds {
		return
	}
	s.holds = fmtCounts(holds)
	fmt.Fprintf(&s.out, "  %s", s.clock())
	for _, l := range lines {
		fmt.Fprintf(&s.out, "\n    %s", l)
	}
	fmt.Fprintf(&s.out, "\n    installs=%d failures=%d holds=%v\n    %s\n", installs, failures, fmtCounts(holds), s.versions())
}

func (s *sim) versions() string {
	c := map[string]int{}
	for _, d := range s.devs {
		for _, k := range SlotKinds() {
			if sl := d.Slots[k]; sl.Version != "" {
				c[string(k)+":"+sl.Name+"@"+sl.Version]++
			}
		}
	}
	return "fleet " + fmtCounts(c)
}

func fmtCounts(c map[string]int) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(c)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, c[k]))
	}
	return "{" + strings.Join(parts, " ") + "}"
}
