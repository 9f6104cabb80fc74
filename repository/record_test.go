package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestEventsRecordedInOrder(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.RotateKey(ctx, RoleModels, KeyEd25519, "", f.keyring()); err != nil {
		t.Fatal(err)
	}
	f.clock.Add(20 * time.Hour)
	if _, err := f.repo.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.WithActor("operator:alice").Publish(ctx, PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.1.0"}, Ext: ".onnx", Content: strings.NewReader("y"),
	}, f.keyring()); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"cli repo.init " + f.repo.Dir(),
		"cli repo.publish models/iris/1.0.0.onnx",
		"cli repo.keys.rotate models",
		"cli repo.refresh ",
		"operator:alice repo.publish models/iris/1.1.0.onnx",
	}
	if got := f.events.all(); !slices.Equal(got, want) {
		t.Errorf("recorded events:\n%q\nwant\n%q", got, want)
	}
}

// snapshotDir returns every file under dir with its content.
func snapshotDir(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			out[p] = string(b)
		}
		return nil
	})
	return out
}

// A change the recorder cannot record does not happen: the metadata on disk (and what
// clients see) stays as it was, and the error says why.
func TestRecordFailureFailsClosed(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	c := f.newClient()
	c.mustRefresh()
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	errDown := errors.New("audit database unavailable")
	f.events.fail = errDown
	before := snapshotDir(t, f.repo.MetadataDir())
	keysBefore := snapshotDir(t, f.offDir)

	_, err := f.publish(artifact.KindModel, "iris", "2.0.0", ".onnx", []byte("y"), nil)
	if !errors.Is(err, errDown) {
		t.Errorf("Publish with a failing recorder = %v; want %v", err, errDown)
	}
	_, err = f.repo.RotateKey(ctx, RoleModels, KeyEd25519, "", f.keyring())
	if !errors.Is(err, errDown) {
		t.Errorf("RotateKey with a failing recorder = %v; want %v", err, errDown)
	}
	f.clock.Add(20 * time.Hour)
	if _, err := f.repo.Refresh(ctx); !errors.Is(err, errDown) {
		t.Errorf("Refresh with a failing recorder = %v; want %v", err, errDown)
	}
	if _, err := f.repo.ProposeRoot(ctx, RootChange{Thresholds: map[string]int{"root": 1}}); !errors.Is(err, errDown) {
		t.Errorf("ProposeRoot with a failing recorder = %v; want %v", err, errDown)
	}

	after := snapshotDir(t, f.repo.MetadataDir())
	if len(after) != len(before) {
		t.Errorf("metadata files: %d before, %d after refused changes", len(before), len(after))
	}
	for p, b := range before {
		if after[p] != b {
			t.Errorf("%s changed although its change was not recorded", p)
		}
	}
	if got := snapshotDir(t, f.offDir); len(got) != len(keysBefore) {
		t.Errorf("offline keys: %d before, %d after a refused rotation", len(keysBefore), len(got))
	}
	if _, err := os.Stat(f.repo.ProposalPath(2)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("root proposal written although not recorded: %v", err)
	}
	f.clock.Add(-20 * time.Hour)
	up := c.mustRefresh()
	if _, err := up.GetTargetInfo("models/iris/2.0.0.onnx"); err == nil {
		t.Error("a client sees the target whose publication was not recorded")
	}

	// Once the log works again, so does the repository.
	f.events.fail = nil
	if _, err := f.publish(artifact.KindModel, "iris", "2.0.0", ".onnx", []byte("y"), nil); err != nil {
		t.Fatalf("Publish after the recorder recovered: %v", err)
	}
	if _, err := c.mustRefresh().GetTargetInfo("models/iris/2.0.0.onnx"); err != nil {
		t.Errorf("after recovery: %v", err)
	}
}

func TestInitFailsClosed(t *testing.T) {
	dir := t.TempDir()
	errDown := errors.New("audit database unavailable")
	_, err := Init(context.Background(), Config{Dir: dir, KDF: KDFParams{N: 1 << 10}, Recorder: &events{fail: errDown}}, InitOptions{Passphrase: []byte(testPass)})
	if !errors.Is(err, errDown) {
		t.Fatalf("Init with a failing recorder = %v; want %v", err, errDown)
	}
	if _, err := Open(Config{Dir: dir}); err == nil {
		t.Error("Open after an unrecorded Init succeeded; want no repository")
	}
	// What is left names itself, and says how out: Open and a new Init both say the
	// init did not finish and to remove the directory (before, Open said to run init
	// and init refused: "already holds metadata"). Removed, Init starts over.
	_, openErr := Open(Config{Dir: dir})
	_, initErr := Init(context.Background(), Config{Dir: dir, KDF: KDFParams{N: 1 << 10}}, InitOptions{Passphrase: []byte(testPass)})
	for _, err := range []error{openErr, initErr} {
		if err == nil || !strings.Contains(err.Error(), "an init that did not finish") || !strings.Contains(err.Error(), "remove the directory") {
			t.Errorf("on an unfinished init's directory: %v; want it named, with the way out", err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := Init(context.Background(), Config{Dir: dir, KDF: KDFParams{N: 1 << 10}}, InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Errorf("Init after the directory was removed: %v", err)
	}
}

// TestSweepMetadataTemps: the temporary file of a metadata write a kill stopped is
// removed once an hour old; a fresh one (a write perhaps under way) and every other
// file stay. Before, nothing removed them (found from outside, 2 Dec: 40 kills left
// .timestamp.json.tmp-*, .N.snapshot.json.tmp-* and .N.models.json.tmp-*).
func TestSweepMetadataTemps(t *testing.T) {
	dir := t.TempDir()
	if _, err := Init(context.Background(), Config{Dir: dir, KDF: KDFParams{N: 1 << 10}}, InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	r, err := Open(Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	md := r.MetadataDir()
	now := time.Now()
	old := now.Add(-2 * time.Hour)
	files := map[string]bool{ // name: removed
		".timestamp.json.tmp-123":      true,
		".7.snapshot.json.tmp-456":     true,
		".fresh.models.json.tmp-789":   false,
		"notes.txt":                    false,
		".timestamp.json.tmp-is-a-dir": false,
	}
	for name := range files {
		p := filepath.Join(md, name)
		if strings.HasSuffix(name, "-dir") {
			os.Mkdir(p, 0o755)
		} else if err := os.WriteFile(p, []byte("{"), 0o644); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, ".fresh") {
			os.Chtimes(p, old, old)
		}
	}
	n, err := r.SweepMetadataTemps(now)
	if err != nil || n != 2 {
		t.Errorf("SweepMetadataTemps = %d, %v; want 2 removed", n, err)
	}
	for name, removed := range files {
		if _, err := os.Stat(filepath.Join(md, name)); os.IsNotExist(err) != removed {
			t.Errorf("%s: removed %v; want %v", name, os.IsNotExist(err), removed)
		}
	}
	if _, err := r.Load(context.Background()); err != nil {
		t.Errorf("the repository after the sweep: %v", err)
	}
}
