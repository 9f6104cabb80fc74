package repository

import (
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

// TestPruneMetadata: old versions of the snapshot and the targets roles are removed
// once more than KeepMetadata newer ones exist and a day has passed; every root and
// the newest versions stay, a client that trusts the first root still updates, and a
// fresh client too. Before, nothing removed them: every publish added a whole copy of
// its role for good (found from outside, 2 Dec).
func TestPruneMetadata(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	old := f.newClient()
	old.mustRefresh()
	for i := range 14 {
		if _, err := f.publish(artifact.KindModel, "iris", fmt.Sprintf("1.0.%d", i), ".onnx", []byte(fmt.Sprint("model ", i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	count := func(role string) int {
		t.Helper()
		n := 0
		ents, _ := os.ReadDir(f.repo.MetadataDir())
		for _, e := range ents {
			if m := versionedRE.FindStringSubmatch(e.Name()); m != nil && m[2] == role {
				n++
			}
		}
		return n
	}
	models, snaps, roots := count("models"), count("snapshot"), count("root")
	if models < 15 || snaps < 15 {
		t.Fatalf("before: %d models, %d snapshot versions; want one a publish", models, snaps)
	}
	// Within the grace nothing goes, however old its number.
	if n, _, err := f.repo.PruneMetadata(t.Context(), time.Now()); err != nil || n != 0 {
		t.Fatalf("PruneMetadata within the grace = %d, %v; want nothing removed", n, err)
	}
	n, size, err := f.repo.PruneMetadata(t.Context(), time.Now().Add(MetadataGrace+time.Minute))
	if err != nil || n == 0 || size == 0 {
		t.Fatalf("PruneMetadata a day later = %d files, %d bytes, %v", n, size, err)
	}
	if got := count("models"); got != KeepMetadata {
		t.Errorf("models versions after: %d; want %d", got, KeepMetadata)
	}
	if got := count("snapshot"); got != KeepMetadata {
		t.Errorf("snapshot versions after: %d; want %d", got, KeepMetadata)
	}
	if got := count("root"); got != roots {
		t.Errorf("root versions after: %d; want all %d", got, roots)
	}
	if _, err := f.repo.Load(t.Context()); err != nil {
		t.Fatalf("the repository after pruning: %v", err)
	}
	for _, c := range []*client{old, f.newClient()} {
		up := c.mustRefresh()
		if _, err := up.GetTargetInfo("models/iris/1.0.13.onnx"); err != nil {
			t.Errorf("a client after pruning: %v", err)
		}
	}
}
