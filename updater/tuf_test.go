package updater

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

func newClient(t *testing.T, r *tuftest.Repo, dir string) *TUF {
	t.Helper()
	c, err := NewTUF(TUFConfig{MetadataDir: dir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), Downloader: testDownloader(nil)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}

func TestTUFRefreshDownloadAndCache(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p, data := r.AddModel("iris", "1.0.0", 0)
	mdir, tdir := t.TempDir(), t.TempDir()
	if err := PinRoot(mdir, r.RootBytes(1)); err != nil {
		t.Fatal(err)
	}
	r.RotateRoot()
	r.RotateRoot()
	c := newClient(t, r, mdir)
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh across two root rotations = %v", err)
	}
	if got, want := dirNames(t, mdir), []string{"root.json", "snapshot.json", "targets.json", "timestamp.json"}; !slices.Equal(got, want) {
		t.Errorf("metadata dir holds %v; want %v", got, want)
	}
	b, _ := os.ReadFile(filepath.Join(mdir, "root.json"))
	if !bytes.Equal(b, r.RootBytes(3)) {
		t.Errorf("root.json is not the rotated root version 3")
	}
	tf, err := c.Target(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(tdir, "iris")
	for i, wantCached := range []bool{false, true} {
		cached, err := c.Download(ctx, tf, dst)
		if err != nil || cached != wantCached {
			t.Fatalf("Download #%d = %v, %v; want cached=%v", i, cached, err, wantCached)
		}
	}
	if n := r.Hits("/targets/"); n != 1 {
		t.Errorf("%d target requests; a cached target must not be downloaded again", n)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Errorf("downloaded bytes differ")
	}
	if got := dirNames(t, tdir); !slices.Equal(got, []string{"iris"}) {
		t.Errorf("target dir holds %v; want only the target", got)
	}
	// The same client refreshes again and sees what was published since.
	p2, _ := r.AddModel("iris", "1.1.0", 0)
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("second Refresh = %v", err)
	}
	if _, err := c.Target(ctx, p2); err != nil {
		t.Errorf("Target(%s) after the second refresh = %v", p2, err)
	}
}

func TestTUFRejects(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p, _ := r.AddModel("iris", "1.0.0", 0)
	mdir, tdir := t.TempDir(), t.TempDir()
	PinRoot(mdir, r.RootBytes(1))
	c := newClient(t, r, mdir)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// The server swaps the target's bytes: TUF's hashes catch it.
	tf, _ := c.Target(ctx, p)
	r.Put("/targets/models/iris/"+filepath.Base(c.URL(tf)), bytes.Repeat([]byte("x"), int(tf.Length)))
	d := *c.dl
	d.NoResume = true
	c.dl = &d
	if _, err := c.Download(ctx, tf, filepath.Join(tdir, "iris")); !errors.Is(err, ErrHashMismatch) {
		t.Errorf("Download of swapped bytes = %v; want ErrHashMismatch", err)
	}
	if got := dirNames(t, tdir); len(got) != 0 {
		t.Errorf("target dir holds %v after a rejected download", got)
	}
	if _, err := c.Target(ctx, "models/iris/9.9.9.onnx"); err == nil {
		t.Errorf("Target of an unlisted path succeeded")
	}
	// Expired metadata: the client's clock is past every expiry.
	c2, _ := NewTUF(TUFConfig{MetadataDir: mdir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), Now: func() time.Time { return time.Now().Add(2 * 365 * 24 * time.Hour) }})
	if err := c2.Refresh(ctx); err == nil {
		t.Errorf("Refresh with expired metadata succeeded")
	}
}

// TestInstallThroughTUF installs models only from what TUF verified, streams them into
// the slots and refuses a validly signed older version.
func TestInstallThroughTUF(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, d1 := r.AddModel("iris", "1.0.0", 0)
	p2, d2 := r.AddModel("iris", "2.0.0", 0)
	state := t.TempDir()
	mdir := filepath.Join(state, "tuf")
	PinRoot(mdir, r.RootBytes(1))
	c := newClient(t, r, mdir)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	m, err := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		data []byte
	}{{p1, d1}, {p2, d2}} {
		tg, _, err := c.Resolve(ctx, artifact.KindModel, tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if s, err := m.Install(ctx, artifact.KindModel, tg); err != nil || s.Phase != rollback.Staged {
			t.Fatalf("Install(%s) = %v, %v", tc.path, s, err)
		}
		m.BeginTrial(ctx, artifact.KindModel, time.Minute)
		s, err := m.Confirm(ctx, artifact.KindModel, true, "")
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(m.Payload(artifact.KindModel, s.Active)); !bytes.Equal(got, tc.data) {
			t.Fatalf("slot %s does not hold %s", s.Active, tc.path)
		}
	}
	tg, _, err := c.Resolve(ctx, artifact.KindModel, p1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Install(ctx, artifact.KindModel, tg); !errors.Is(err, rollback.ErrDowngrade) {
		t.Errorf("Install of the older signed 1.0.0 = %v; want ErrDowngrade", err)
	}
	if _, _, err := c.Resolve(ctx, artifact.KindRuntime, p1); err == nil {
		t.Errorf("Resolve of a model as a runtime succeeded")
	}
	// Metadata that disagrees with its path, or a target for other hardware, is refused.
	r.AddTarget("models/iris/3.0.0.onnx", []byte("x"), artifact.Meta{Kind: artifact.KindModel, Name: "wine", Version: "3.0.0"})
	r.AddTarget("models/iris/4.0.0.onnx", []byte("y"), artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "4.0.0", Hardware: []string{"riscv64"}})
	r.Publish()
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"models/iris/3.0.0.onnx", "models/iris/4.0.0.onnx"} {
		if _, _, err := c.Resolve(ctx, artifact.KindModel, p); err == nil {
			t.Errorf("Resolve(%s) succeeded; want a refusal", p)
		}
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Error(err)
	}
}

// TestTUFDelegatedRoles looks targets up through Edgeward's delegations: models/* and
// probes/* signed by "models", runtimes/* by "runtimes".
func TestTUFDelegatedRoles(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.Delegate("models", "models/*/*", "probes/*/*")
	r.Delegate("runtimes", "runtimes/*/*")
	r.Publish()
	p, data := r.AddModel("iris", "1.0.0", 0)
	mdir := t.TempDir()
	PinRoot(mdir, r.RootBytes(1))
	c := newClient(t, r, mdir)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	tg, meta, err := c.Resolve(ctx, artifact.KindModel, p)
	if err != nil || meta.Name != "iris" || tg.Length != int64(len(data)) {
		t.Fatalf("Resolve(%s) through the models delegation = %+v, %v", p, tg, err)
	}
	if got, want := dirNames(t, mdir), []string{"models.json", "root.json", "snapshot.json", "targets.json", "timestamp.json"}; !slices.Equal(got, want) {
		t.Errorf("metadata dir = %v; want %v", got, want)
	}
	if _, err := c.Target(ctx, "runtimes/ort/1.0.0.tar"); err == nil {
		t.Errorf("Target of an unlisted runtime succeeded")
	}
}

// TestTUFRootBackup restores a root.json damaged by a crash from the backup copy kept
// after the last refresh (which followed a rotation).
func TestTUFRootBackup(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	mdir := t.TempDir()
	backup := filepath.Join(t.TempDir(), "root.pinned")
	PinRoot(mdir, r.RootBytes(1))
	r.RotateRoot()
	cfg := TUFConfig{MetadataDir: mdir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), RootBackup: backup}
	c, err := NewTUF(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mdir, "root.json"), nil, 0o644) // torn write
	c, err = NewTUF(cfg)
	if err != nil {
		t.Fatalf("NewTUF with a damaged root.json = %v", err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh after restoring the root = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(mdir, "root.json")); !bytes.Equal(b, r.RootBytes(2)) {
		t.Errorf("restored root is not the rotated version 2")
	}
	os.WriteFile(filepath.Join(mdir, "root.json"), []byte("{"), 0o644)
	os.Remove(backup)
	if _, err := NewTUF(cfg); err == nil {
		t.Errorf("NewTUF with a damaged root and no backup succeeded")
	}
}
