package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/disktest"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// fullDisk mounts a small tmpfs at dir and returns a function that fills it up and one
// that frees it (disktest).
func fullDisk(t *testing.T, dir string) (fill, free func()) {
	t.Helper()
	disktest.Mount(t, dir, "20m")
	return disktest.Filler(t, dir)
}

// TestStateOnFullDisk puts the state's TUF directory on a file system that fills up
// after a model was committed: the state still opens (go-tuf used to rewrite root.json
// at every open, failing with "no space left on device", so the agent did not start and
// the device stopped serving), status and recover still report the committed slot, a
// refresh with nothing new succeeds, one that must persist new metadata fails as an
// infrastructure failure (no_space, retried), and succeeds once space is freed.
func TestStateOnFullDisk(t *testing.T) {
	dir := StateDir(t.TempDir())
	if err := os.MkdirAll(dir.TUF(), 0o700); err != nil {
		t.Fatal(err)
	}
	fill, free := fullDisk(t, dir.TUF())
	testStateOnFullDisk(t, dir, fill, free)
}

// TestWholeStateOnFullDisk is TestStateOnFullDisk with the whole state directory on the
// full file system, as on a device. Besides TUF, the state's sqlite databases must open
// there (their -wal and -shm files are kept at close and reused: internal/durable), and
// recovery must not rewrite a slot pointer that is already right (rollback's activate).
func TestWholeStateOnFullDisk(t *testing.T) {
	base := t.TempDir()
	fill, free := fullDisk(t, base)
	testStateOnFullDisk(t, StateDir(filepath.Join(base, "st")), fill, free)
}

// enrolledWithModel enrolls a device state at dir with r, and commits iris 1.0.0, which
// it publishes, into its model slot; it returns the model's target path. The state is
// closed again.
func enrolledWithModel(t *testing.T, ctx context.Context, dir StateDir, r *tuftest.Repo) string {
	t.Helper()
	p, _ := r.AddModel("iris", "1.0.0", 0)
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL()}); err != nil {
		t.Fatal(err)
	}
	st, err := OpenState(ctx, StateConfig{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Slots.Recover(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.TUF.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	commitTarget(t, ctx, st, artifact.KindModel, p)
	return p
}

func testStateOnFullDisk(t *testing.T, dir StateDir, fill, free func()) {
	ctx := context.Background()
	r := tuftest.New(t)
	p := enrolledWithModel(t, ctx, dir, r)

	fill()
	st, err := OpenState(ctx, StateConfig{Dir: dir})
	if err != nil {
		t.Fatalf("OpenState on a full disk = %v; want it opened (the device must keep serving)", err)
	}
	defer st.Close()
	committed := func(when string) {
		t.Helper()
		s, err := st.ReadStatus(ctx)
		if err != nil {
			t.Fatalf("ReadStatus %s = %v", when, err)
		}
		for _, ss := range s.Slots {
			if ss.Kind == string(artifact.KindModel) && (ss.Version != "1.0.0" || ss.Path != p) {
				t.Errorf("status %s: model slot %+v; want 1.0.0 committed", when, ss)
			}
		}
		if s.TrustedRoot != 1 {
			t.Errorf("status %s: trusted root v%d; want v1", when, s.TrustedRoot)
		}
	}
	committed("on a full disk")
	if err := st.Slots.Recover(ctx); err != nil {
		t.Fatalf("Recover on a full disk = %v", err)
	}
	committed("after recover on a full disk")
	if err := st.TUF.Refresh(ctx); err != nil {
		t.Errorf("Refresh on a full disk with nothing new published = %v; want nil (nothing to write)", err)
	}

	r.AddModel("iris", "1.1.0", 0)
	err = st.TUF.Refresh(ctx)
	if !errors.Is(err, syscall.ENOSPC) || !updater.Transient(err) || updater.ClassifyError(err) != wire.ErrorNoSpace {
		t.Fatalf("Refresh on a full disk with new metadata = %v; want ENOSPC, an infrastructure failure (no_space)", err)
	}
	committed("after a failed refresh")

	free()
	if err := st.TUF.Refresh(ctx); err != nil {
		t.Fatalf("Refresh once space is freed = %v", err)
	}
	if _, _, err := st.TUF.Resolve(ctx, artifact.KindModel, artifact.TargetPath(artifact.KindModel, "iris", "1.1.0", ".onnx")); err != nil {
		t.Errorf("Resolve of the new version once space is freed = %v", err)
	}
}

// TestMetadataTimeoutWithoutRoots: a state opened without server roots (no --server-ca)
// bounds its metadata requests too; a metadata server that never answers fails the
// refresh with ErrMetadataTimeout within StateConfig.MetadataTimeout instead of hanging
// the agent forever.
func TestMetadataTimeoutWithoutRoots(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		select {
		case <-release:
		case <-req.Context().Done():
		}
	}))
	t.Cleanup(hang.Close)
	t.Cleanup(func() { close(release) })
	dir := StateDir(t.TempDir())
	if err := Enroll(dir, r.RootBytes(1), Enrollment{MetadataURL: hang.URL + "/metadata"}); err != nil {
		t.Fatal(err)
	}
	st, err := OpenState(ctx, StateConfig{Dir: dir, MetadataTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	done := make(chan error, 1)
	go func() { done <- st.TUF.Refresh(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, updater.ErrMetadataTimeout) || !updater.Transient(err) {
			t.Fatalf("Refresh against a server that never answers = %v; want ErrMetadataTimeout (transient)", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Refresh against a server that never answers has not returned after 10s (metadata timeout 200ms)")
	}
}
