package repository

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestRetire(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	mustPublish := func(kind artifact.Kind, version, ext, content string) *PublishResult {
		t.Helper()
		res, err := f.publish(kind, "vib", version, ext, []byte(content), nil)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	mustPublish(artifact.KindProbe, "1.0.0", ".json", "probe 1")
	old := mustPublish(artifact.KindModel, "1.0.0", ".onnx", "model 1")
	mustPublish(artifact.KindModel, "1.1.0", ".onnx", "model 1.1")
	mustPublish(artifact.KindModel, "1.2.0", ".onnx", "model 1.2")
	mustPublish(artifact.KindModel, "0.9.0", ".onnx", "model 1.2") // same content as 1.2.0
	sizeBefore := roleSize(t, f, RoleModels)

	// Unknown versions change nothing.
	before := snapshotFiles(t, f)
	if _, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "vib", Versions: []string{"1.0.0", "7.0.0"}}, f.keyring()); !errors.Is(err, ErrNotPublished) {
		t.Fatalf("Retire of an unpublished version = %v; want ErrNotPublished", err)
	}
	if snapshotFiles(t, f) != before {
		t.Error("a refused retire changed the repository")
	}
	if l, _ := f.repo.Retired(); len(l) != 0 {
		t.Errorf("retired list after a refused retire = %v", l)
	}

	res, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "vib", Keep: 1}, f.keyring())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, rt := range res.Retired {
		paths = append(paths, rt.Path)
	}
	slices.Sort(paths)
	want := []string{"models/vib/0.9.0.onnx", "models/vib/1.0.0.onnx", "models/vib/1.1.0.onnx", "probes/vib/1.0.0.json"}
	if !slices.Equal(paths, want) {
		t.Fatalf("retired %v; want %v (the probe set of 1.0.0 with it)", paths, want)
	}
	if after := roleSize(t, f, RoleModels); after >= sizeBefore {
		t.Errorf("models.json %d bytes after retiring; want less than %d", after, sizeBefore)
	}
	// A device's TUF client no longer finds the retired versions; the kept one it does.
	up := f.newClient().mustRefresh()
	if _, err := up.GetTargetInfo("models/vib/1.0.0.onnx"); err == nil {
		t.Error("a client still finds the retired models/vib/1.0.0.onnx")
	}
	if _, err := up.GetTargetInfo("models/vib/1.2.0.onnx"); err != nil {
		t.Errorf("the kept version: %v", err)
	}
	// Contents stay for the grace period; the list names them with their digests.
	if _, err := os.Stat(f.repo.BlobPath(old.SHA256)); err != nil {
		t.Errorf("retired content removed at once: %v", err)
	}
	list, err := f.repo.Retired()
	if err != nil || len(list) != 4 {
		t.Fatalf("Retired() = %v, %v", list, err)
	}
	if m := list[0].Meta(); m == nil || m.Name != "vib" {
		t.Errorf("retired entry meta = %+v", m)
	}
	if ev := strings.Join(f.events.all(), "\n"); strings.Count(ev, "repo.retire") != 4 {
		t.Errorf("events = %s; want 4 repo.retire", ev)
	}
	// Sweeping: nothing before the grace ends; then the contents no listed target shares.
	if n, _, err := f.repo.SweepRetired(ctx, f.clock.Now()); err != nil || n != 0 {
		t.Errorf("SweepRetired during the grace = %d, %v; want 0", n, err)
	}
	n, _, err := f.repo.SweepRetired(ctx, f.clock.Now().Add(DefaultRetireGrace+time.Hour))
	if err != nil || n != 3 {
		t.Errorf("SweepRetired after the grace = %d, %v; want 3 (0.9.0 shares 1.2.0's content)", n, err)
	}
	if _, err := os.Stat(f.repo.BlobPath(old.SHA256)); !os.IsNotExist(err) {
		t.Errorf("retired content after the sweep: %v; want removed", err)
	}
	c := f.newClient()
	if data, _, err := c.download(c.mustRefresh(), "models/vib/1.2.0.onnx"); err != nil || string(data) != "model 1.2" {
		t.Errorf("the kept version after the sweep = %q, %v", data, err)
	}
	if _, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "vib", Keep: 1}, f.keyring()); !errors.Is(err, ErrNothingToRetire) {
		t.Errorf("Retire with nothing beyond Keep = %v; want ErrNothingToRetire", err)
	}
}

// A role already past the bound (the bound was lowered) can still shrink: retiring is
// the way out, and publishing works again afterwards.
func TestRetireBelowTheBound(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	for i := range 8 {
		if _, err := f.publish(artifact.KindModel, "m", fmt.Sprintf("1.0.%d", i), ".onnx", []byte(fmt.Sprint(i)), func(r *PublishRequest) { r.Meta.Extra = bigExtra(3 << 10) }); err != nil {
			t.Fatal(err)
		}
	}
	f.setLimits(t, Limits{MaxRoleBytes: roleSize(t, f, RoleModels) - 1})
	if _, err := f.publish(artifact.KindModel, "m", "2.0.0", ".onnx", []byte("new"), nil); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("publish past the lowered bound = %v; want ErrTooLarge", err)
	}
	if _, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "m", Versions: []string{"1.0.0"}}, f.keyring()); err != nil {
		t.Fatalf("Retire above the bound = %v; want it allowed (it shrinks the role)", err)
	}
	if _, err := f.publish(artifact.KindModel, "m", "2.0.0", ".onnx", []byte("new"), nil); err != nil {
		t.Errorf("publish after retiring = %v", err)
	}
}

func roleSize(t *testing.T, f *fixture, role string) int {
	t.Helper()
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f.repo.path("repository", "metadata", fmt.Sprintf("%d.%s.json", st.Targets[role].Signed.Version, role)))
	if err != nil {
		t.Fatal(err)
	}
	return int(fi.Size())
}

// liveThenFailFS writes timestamp.json and then reports an error, as a failed sync of
// its directory after the rename would: the change is live, and the caller hears of a
// failure.
type liveThenFailFS struct{ OSFS }

func (f liveThenFailFS) WriteFile(name string, data []byte, perm os.FileMode) error {
	if err := f.OSFS.WriteFile(name, data, perm); err != nil {
		return err
	}
	if strings.HasSuffix(name, "timestamp.json") {
		return errors.New("simulated: sync of the metadata directory failed")
	}
	return nil
}

// TestRetiredListKeptWhenTheRetireWentLive: a retire that failed after timestamp.json
// went live (only a step after the rename failed) keeps the retired list it wrote: the
// retired versions are gone from the metadata, and the server must still recognise
// devices running them. The list used to be restored to before the retire.
func TestRetiredListKeptWhenTheRetireWentLive(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	for _, v := range []string{"1.0.0", "2.0.0"} {
		if _, err := f.publish(artifact.KindModel, "vib", v, ".onnx", []byte("model "+v), nil); err != nil {
			t.Fatal(err)
		}
	}
	fs := f.repo.fs
	f.repo.fs = liveThenFailFS{}
	_, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "vib", Versions: []string{"1.0.0"}}, f.keyring())
	f.repo.fs = fs
	if err == nil {
		t.Fatal("Retire with the directory sync failing = nil; want the error")
	}
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Targets[artifact.KindModel.Role()].Signed.Targets["models/vib/1.0.0.onnx"] != nil {
		t.Fatal("1.0.0 still listed: the retire did not go live, the test shows nothing")
	}
	list, err := f.repo.Retired()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].Path != "models/vib/1.0.0.onnx" {
		t.Fatalf("retired list after a live retire that reported a failure = %+v; want 1.0.0", list)
	}
}

// TestRetiredVersionKeepsItsContent: a retired version may be published again with the
// content it had (it comes back), never with other bytes (ErrConflict): one version
// had two contents, and the server took the measurements of either for it (found from
// outside, 2 Dec).
func TestRetiredVersionKeepsItsContent(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	if _, err := f.publish(artifact.KindModel, "rr", "1.0.0", ".onnx", []byte("model r1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "rr", Versions: []string{"1.0.0"}}, f.keyring()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.publish(artifact.KindModel, "rr", "1.0.0", ".onnx", []byte("model r2, other bytes"), nil); !errors.Is(err, ErrConflict) || !strings.Contains(err.Error(), "retired with other content") {
		t.Fatalf("publish a retired version with other bytes = %v; want ErrConflict", err)
	}
	if _, err := f.publish(artifact.KindModel, "rr", "1.0.0", ".onnx", []byte("model r1"), nil); err != nil {
		t.Fatalf("publish a retired version with its own bytes again = %v; want it back", err)
	}
}
