package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestRandomKills SIGKILLs the agent at random moments of install, trial, commit and
// rollback (EDGEWARD_KILLS times, default 40) and checks after each kill that the active
// slot holds a complete committed version and the floor never dropped, and after each
// restart that no temporary file is left behind.
func TestRandomKills(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent and kills it many times")
	}
	kills := 40
	if n, err := strconv.Atoi(os.Getenv("EDGEWARD_KILLS")); err == nil && n > 0 {
		kills = n
	}
	ctx := context.Background()
	bin := buildAgent(t)
	r := tuftest.New(t)
	state := t.TempDir()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	a := agentRunner{t: t, bin: bin, state: state}
	if code, _ := a.run("", "enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
		t.Fatal("enroll failed")
	}
	rng := rand.New(rand.NewPCG(1, 2))
	paths := map[int]string{}
	published := func(n int) string {
		if p, ok := paths[n]; ok {
			return p
		}
		paths[n] = r.AddPattern("m", fmt.Sprintf("1.0.%d", n), 2<<20)
		return paths[n]
	}
	var floor uint64
	killed, next := 0, 1
	for round := 0; killed < kills && round < kills*10; round++ {
		s, _, m := inspect(t, state)
		m.Close()
		if s.Current != nil {
			v, _ := artifact.ParseVersion(s.Current.Version)
			next = int(v.Patch) + 1
		}
		if s.Pending != nil {
			v, _ := artifact.ParseVersion(s.Pending.Version)
			next = int(v.Patch)
		}
		confirm := []string{"confirm", "--pass"}
		if rng.IntN(3) == 0 {
			confirm = []string{"confirm", "--fail", "gate"}
		}
		steps := [][]string{{"install", "--target", published(next), "--checkpoint-bytes", "262144"}, {"trial"}, confirm}
		left := time.Duration(rng.IntN(120)) * time.Millisecond
		for _, step := range steps {
			cmd := exec.Command(bin, append(step[:1:1], append([]string{"--state-dir", state}, step[1:]...)...)...)
			start := time.Now()
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			timer := time.AfterFunc(left, func() { cmd.Process.Kill() })
			err := cmd.Wait()
			fired := !timer.Stop()
			left -= time.Since(start)
			if fired && err != nil {
				killed++
				break
			}
		}
		// As found after the kill.
		s, f, m := inspect(t, state)
		if f < floor {
			t.Fatalf("round %d: floor dropped from %d to %d", round, floor, f)
		}
		floor = f
		// Before recovery, temporary files may be left behind and the floor may lag a
		// commit, but the active slot must hold the committed version intact.
		if err := m.CheckActive(ctx); err != nil {
			t.Fatalf("round %d after the kill, before recovery (%v): %v", round, s, err)
		}
		m.Close()
		if code, _ := a.run("", "recover"); code != 0 {
			t.Fatalf("round %d: recover failed", round)
		}
		s, f, m = inspect(t, state)
		if err := m.CheckInvariant(ctx); err != nil {
			t.Fatalf("round %d after recovery: %v", round, err)
		}
		m.Close()
		if f < floor {
			t.Fatalf("round %d: floor dropped after recovery", round)
		}
		floor = f
	}
	s, _, _ := inspect(t, state)
	t.Logf("%d kills; final state %v", killed, s)
	if killed < kills {
		t.Errorf("only %d kills landed; want %d", killed, kills)
	}
}
