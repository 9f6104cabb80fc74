package rollback

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// FuzzStep drives the machine with arbitrary event sequences (one byte an event) and
// checks, after every step, what must hold whatever happens:
//   - the active slot changes only on a commit (or an adoption from an empty state);
//   - the committed version is never lost, and its floor never goes down;
//   - no action clears, downloads into or verifies the active slot;
//   - an install below the floor or older than the committed version is refused.
func FuzzStep(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 4, 0, 1, 2, 3, 5})
	f.Add([]byte{0, 7, 0, 1, 8, 0, 1, 2, 3, 6, 9, 9})
	f.Add([]byte{10, 0, 1, 2, 3, 9, 6, 4, 11})
	f.Fuzz(func(t *testing.T, script []byte) {
		checkSequence(t, script)
	})
}

// TestStepRandomSequences runs FuzzStep's checks over many pseudo-random sequences.
func TestStepRandomSequences(t *testing.T) {
	r := rand.New(rand.NewPCG(4, 2))
	for range 3000 {
		script := make([]byte, 1+r.IntN(60))
		for i := range script {
			script[i] = byte(r.IntN(256))
		}
		checkSequence(t, script)
	}
}

func checkSequence(t *testing.T, script []byte) {
	versions := []string{"0.9.0", "1.0.0", "1.0.1-rc.1", "1.0.1", "2.0.0", "2.1.0"}
	s := State{Kind: artifact.KindModel}
	now := t0
	floor := uint64(0) // what the shell's floor store holds
	var committed []string
	for i, b := range script {
		var ev Event
		v := target(t, versions[int(b>>4)%len(versions)])
		switch b % 12 {
		case 0:
			ev = EvInstall{Target: v, Floor: floor}
		case 1:
			ev = EvDownloaded{}
		case 2:
			ev = EvVerified{}
		case 3:
			ev = EvBeginTrial{Timeout: time.Duration(1+b>>4) * time.Minute}
		case 4:
			ev = EvTrialPassed{Floor: floor}
		case 5:
			ev = EvTrialFailed{Reason: "gate"}
		case 6:
			now = now.Add(time.Duration(b>>4) * time.Minute)
			ev = EvTick{}
		case 7:
			ev = EvFailed{Reason: "network"}
		case 8:
			ev = EvAbort{Reason: "superseded"}
		case 9:
			ev = EvRecover{}
		case 10:
			ev = EvAdopt{Target: v, Slot: Slot("ab"[b>>4%2 : b>>4%2+1]), Floor: floor}
		case 11:
			now = now.Add(time.Duration(b) * time.Second)
			ev = EvRecover{}
		}
		n, acts, err := Step(s, ev, now)
		where := fmt.Sprintf("step %d (%s) from %v", i, ev.event(), s)
		if err != nil {
			if n.Seq != s.Seq || !sameState(n, s) || len(acts) != 0 {
				t.Fatalf("%s: error %v changed the state or asked for actions", where, err)
			}
			continue
		}
		if in, ok := ev.(EvInstall); ok && n.Pending != nil && n.Phase == Downloading && s.phase() != Downloading {
			if in.Target.Floor < floor || (s.Current != nil && compareVersions(in.Target.Version, s.Current.Version) < 0) {
				t.Fatalf("%s: accepted %s below floor %d or committed %v", where, in.Target.Version, floor, s.Current)
			}
		}
		if n.Active != s.Active {
			_, adopt := ev.(EvAdopt)
			if !(s.Phase == Trial && n.Phase == Committed) && !(adopt && s.Active == "") {
				t.Fatalf("%s: active slot moved to %q", where, n.Active)
			}
		}
		if s.Current != nil && n.Current == nil {
			t.Fatalf("%s: lost the committed version", where)
		}
		for _, a := range acts {
			if s.Active != "" && n.Active == s.Active && a.Slot == s.Active && (a.Kind == ClearSlot || a.Kind == Download || a.Kind == Verify || a.Kind == StartTrial) {
				t.Fatalf("%s: action %v touches the active slot", where, a)
			}
			if a.Kind == RaiseFloor {
				if a.Floor < floor && n.Phase != Committed {
					t.Fatalf("%s: lowers the floor", where)
				}
				floor = max(floor, a.Floor)
			}
		}
		if n.Phase == Committed && (s.Phase != Committed || n.Current != s.Current) {
			committed = append(committed, n.Current.Version)
		}
		s = n
	}
	for i := 1; i < len(committed); i++ {
		if compareVersions(committed[i], committed[i-1]) < 0 {
			t.Fatalf("committed %v: a later commit is older", committed)
		}
	}
}

func compareVersions(a, b string) int {
	va, _ := artifact.ParseVersion(a)
	vb, _ := artifact.ParseVersion(b)
	return va.Compare(vb)
}
