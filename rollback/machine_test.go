package rollback

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// target returns a Target for version v of a model, with a made-up length and hash.
func target(tb testing.TB, v string) Target {
	tb.Helper()
	ver, err := artifact.ParseVersion(v)
	if err != nil {
		tb.Fatal(err)
	}
	f, err := ver.Floor()
	if err != nil {
		tb.Fatal(err)
	}
	sum := sha256.Sum256([]byte(v))
	return Target{Path: artifact.TargetPath(artifact.KindModel, "m", v, ".onnx"), Version: v, Floor: f, Length: 100, SHA256: hex.EncodeToString(sum[:])}
}

func floorOf(tb testing.TB, v string) uint64 { return target(tb, v).Floor }

// TestScenarios replays each testdata/*.txt through Step and compares the transcript
// with testdata/*.golden. Commands, one a line:
//
//	install VERSION [floor=VERSION]   downloaded   verified   failed REASON   abort REASON
//	begin-trial DURATION   pass [floor=VERSION]   fail REASON   tick   recover   advance DURATION
//	adopt SLOT VERSION [floor=VERSION]
func TestScenarios(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no scenarios: %v", err)
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".txt")
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			got := runScenario(t, string(in))
			golden := strings.TrimSuffix(file, ".txt") + ".golden"
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

func runScenario(t *testing.T, script string) string {
	var b strings.Builder
	s := State{Kind: artifact.KindModel}
	now := t0
	floor := uint64(0)
	for _, line := range strings.Split(script, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			b.WriteString(line + "\n")
			continue
		}
		fields := strings.Fields(line)
		arg := strings.Join(fields[1:], " ")
		opt := func(key, def string) string {
			for _, f := range fields[1:] {
				if v, ok := strings.CutPrefix(f, key+"="); ok {
					return v
				}
			}
			return def
		}
		fl := floor
		if v := opt("floor", ""); v != "" {
			fl = floorOf(t, v)
		}
		var ev Event
		switch fields[0] {
		case "install":
			ev = EvInstall{Target: target(t, fields[1]), Floor: fl}
		case "adopt":
			ev = EvAdopt{Slot: Slot(fields[1]), Target: target(t, fields[2]), Floor: fl}
		case "downloaded":
			ev = EvDownloaded{}
		case "verified":
			ev = EvVerified{}
		case "failed":
			ev = EvFailed{Reason: arg}
		case "abort":
			ev = EvAbort{Reason: arg}
		case "begin-trial":
			d, err := time.ParseDuration(arg)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			ev = EvBeginTrial{Timeout: d}
		case "pass":
			ev = EvTrialPassed{Floor: fl}
		case "fail":
			ev = EvTrialFailed{Reason: arg}
		case "tick":
			ev = EvTick{}
		case "recover":
			ev = EvRecover{}
		case "restart":
			ev = EvRecover{Restart: true}
		case "advance":
			d, err := time.ParseDuration(arg)
			if err != nil {
				t.Fatalf("%s: %v", line, err)
			}
			now = now.Add(d)
			fmt.Fprintf(&b, "> %s\n  now %s\n", line, now.Format(time.RFC3339))
			continue
		default:
			t.Fatalf("unknown command %q", line)
		}
		n, acts, err := Step(s, ev, now)
		fmt.Fprintf(&b, "> %s\n", line)
		if err != nil {
			fmt.Fprintf(&b, "  error: %v\n", err)
		}
		fmt.Fprintf(&b, "  %s\n", n)
		for _, a := range acts {
			fmt.Fprintf(&b, "  - %s\n", a)
			if a.Kind == RaiseFloor && a.Floor > floor {
				floor = a.Floor
			}
		}
		checkInvariant(t, line, s, n)
		s = n
	}
	return b.String()
}

// checkInvariant fails the test if a transition moved the active slot anywhere but to a
// version that had just passed its trial, or lost the committed version.
func checkInvariant(t *testing.T, line string, old, n State) {
	t.Helper()
	if n.Active != old.Active && !(old.Phase == Trial && n.Phase == Committed) && !(old.Active == "" && n.Phase == Committed) {
		t.Errorf("%s: active slot moved from %q to %q outside a commit", line, old.Active, n.Active)
	}
	if old.Current != nil && n.Current == nil {
		t.Errorf("%s: lost the committed version", line)
	}
	if (n.Active == "") != (n.Current == nil) {
		t.Errorf("%s: active slot %q and current version %v disagree", line, n.Active, n.Current)
	}
}

func TestStepErrors(t *testing.T) {
	v1, v2 := target(t, "1.0.0"), target(t, "2.0.0")
	committed := State{Kind: artifact.KindModel, Phase: Committed, Active: SlotA, Current: &v2}
	downloading := State{Kind: artifact.KindModel, Phase: Downloading, Active: SlotA, Current: &v1, Pending: &v2}
	for _, tc := range []struct {
		name string
		s    State
		ev   Event
		want error
	}{
		{"older signed version", committed, EvInstall{Target: v1, Floor: v2.Floor}, ErrDowngrade},
		{"below floor with empty slots", State{Kind: artifact.KindModel}, EvInstall{Target: v1, Floor: v2.Floor}, ErrDowngrade},
		{"second install during download", downloading, EvInstall{Target: target(t, "3.0.0"), Floor: v1.Floor}, ErrBusy},
		{"verified while downloading", downloading, EvVerified{}, ErrBadTransition},
		{"pass without trial", committed, EvTrialPassed{}, ErrBadTransition},
		{"downloaded when idle", State{Kind: artifact.KindModel}, EvDownloaded{}, ErrBadTransition},
		{"abort a committed version", committed, EvAbort{}, ErrBadTransition},
	} {
		n, acts, err := Step(tc.s, tc.ev, t0)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Step = %v; want %v", tc.name, err, tc.want)
		}
		if len(acts) != 0 || !sameState(n, tc.s) || n.Seq != tc.s.Seq {
			t.Errorf("%s: Step changed the state or asked for actions on error: %v %v", tc.name, n, acts)
		}
	}
	_, _, err := Step(committed, EvInstall{Target: v1, Floor: v2.Floor}, t0)
	var de *DowngradeError
	if !errors.As(err, &de) || de.Version != "1.0.0" || !strings.Contains(err.Error(), "older than the committed version 2.0.0") {
		t.Errorf("Step(older) error = %v; want a DowngradeError naming version 1.0.0 and floor 2.0.0", err)
	}
}

// TestRecoverEveryPhase checks that recovery from every phase leaves the active slot
// alone unless a trial passed, and that a recovered trial past its deadline rolls back.
func TestRecoverEveryPhase(t *testing.T) {
	v1, v2 := target(t, "1.0.0"), target(t, "2.0.0")
	for _, ph := range []Phase{Idle, Downloading, Verifying, Staged, Trial, Committed, RolledBack, Failed} {
		s := State{Kind: artifact.KindModel, Phase: ph, Active: SlotA, Current: &v1}
		if ph == Downloading || ph == Verifying || ph == Staged || ph == Trial {
			s.Pending = &v2
		}
		if ph == Trial {
			s.Deadline = t0.Add(time.Minute)
		}
		for _, now := range []time.Time{t0, t0.Add(time.Hour)} {
			n, acts, err := Step(s, EvRecover{}, now)
			if err != nil {
				t.Fatalf("Step(%s, recover) = %v", ph, err)
			}
			if n.Active != SlotA || n.Current != &v1 {
				t.Errorf("recover from %s moved the active slot: %v", ph, n)
			}
			for _, a := range acts {
				if a.Kind == ClearSlot && a.Slot == SlotA {
					t.Errorf("recover from %s clears the active slot", ph)
				}
				if a.Kind == Activate && a.Slot != SlotA {
					t.Errorf("recover from %s activates slot %s", ph, a.Slot)
				}
			}
			wantPhase := ph
			if ph == Trial && now.After(s.Deadline) {
				wantPhase = RolledBack
			}
			if n.Phase != wantPhase {
				t.Errorf("recover from %s at %v: phase %s; want %s", ph, now, n.Phase, wantPhase)
			}
		}
	}
}
