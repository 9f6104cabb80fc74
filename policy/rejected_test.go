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

// TestStageRolloutNamesTheRejectedFile: when another file of the directory is invalid,
// a valid new rollout is refused with an error that says so, names that file and says
// what to do (every creation failed with the other file's error, as if it were its own).
func TestStageRolloutNamesTheRejectedFile(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "fleet.yaml"), policyV1)
	writeFile(t, filepath.Join(dir, "20-typo.yaml"), "rollouts:\n  - id: t\n    target: {kind: model, name: m, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n")
	now := time.Date(2024, 12, 2, 10, 0, 0, 0, time.UTC)
	_, err := StageRollout(dir, RolloutSpec{ID: "new", Target: TargetSpec{artifact.KindModel, "m", "2.0.0"}}, now)
	var rf *RejectedFilesError
	if !errors.Is(err, ErrRejectedFiles) || !errors.As(err, &rf) {
		t.Fatalf("StageRollout(valid, another file invalid) = %v; want a RejectedFilesError", err)
	}
	for _, want := range []string{`rollout "new" not created: the policy directory holds a file the server rejects: 20-typo.yaml:4: rollout "t": wave 0: soak "10"`, "correct or remove 20-typo.yaml"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("StageRollout error %q; want it to say %q", err, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("a refused rollout left files: %v", ents)
	}
	// The new rollout's own problems are its own error, as before.
	_, err = StageRollout(dir, RolloutSpec{ID: "new", Target: TargetSpec{artifact.KindModel, "m", "2.0.0"}, Waves: []WaveSpec{{Percent: 0}}}, now)
	var el ErrorList
	if errors.Is(err, ErrRejectedFiles) || !errors.As(err, &el) || !strings.Contains(err.Error(), "wave 0: percent 0") {
		t.Errorf("StageRollout(invalid) = %v; want its ErrorList", err)
	}
}
