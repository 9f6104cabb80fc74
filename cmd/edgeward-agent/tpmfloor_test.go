package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestFloorSurvivesWipe commits 2.0.0 with the floors in a TPM (swtpm), deletes the
// agent's sqlite state and checks that the validly signed 1.0.0 is still refused.
func TestFloorSurvivesWipe(t *testing.T) {
	tpm := attesttest.StartSwtpm(t, false)
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	state := t.TempDir()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	agent := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, append(args[:1:1], append([]string{"--state-dir", state}, args[1:]...)...), &out, &out)
		return code, out.String()
	}
	steps := [][]string{
		{"enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL(), "--tpm", tpm.URL},
		{"install", "--target", p2}, {"trial"}, {"confirm", "--pass"},
	}
	for _, s := range steps {
		if code, out := agent(s...); code != 0 {
			t.Fatalf("%v: %s", s, out)
		}
	}
	wipeDB := func() {
		for _, f := range []string{"state.db", "state.db-wal", "state.db-shm"} {
			os.Remove(filepath.Join(state, f))
		}
	}
	// Only the sqlite state lost: the committed slot is adopted, 1.0.0 refused.
	wipeDB()
	if code, out := agent("install", "--target", p1); code != 1 || !strings.Contains(out, "refusing model version 1.0.0") {
		t.Errorf("install of 1.0.0 after wiping the sqlite state: exit %d\n%s\nwant a refusal", code, out)
	}
	// The whole disk state lost but the TPM: the floor alone refuses 1.0.0.
	wipeDB()
	os.RemoveAll(filepath.Join(state, "slots"))
	code, out := agent("install", "--target", p1)
	if code != 1 || !strings.Contains(out, "below the device's floor 2.0.0") {
		t.Errorf("install of 1.0.0 after wiping sqlite and slots: exit %d\n%s\nwant a refusal at floor 2.0.0", code, out)
	}
	if _, out := agent("status"); !strings.Contains(out, "floor: 2.0.0") {
		t.Errorf("status after the wipe:\n%s\nwant floor 2.0.0 (from the TPM)", out)
	}
}
