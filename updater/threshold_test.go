package updater

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repository"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

const thresholdPass = "threshold test passphrase"

// serveRepoDir serves metadata from metaDir and targets from repo's blob store by
// their consistent path <dir>/<sha256>.<name>, as repo-server does.
func serveRepoDir(t *testing.T, repo *repository.Repo, metaDir string) *httptest.Server {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metadata/{file}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFile(w, r, filepath.Join(metaDir, filepath.Base(r.PathValue("file"))))
	})
	mux.HandleFunc("GET /targets/{path...}", func(w http.ResponseWriter, r *http.Request) {
		sum, _, _ := strings.Cut(path.Base(r.PathValue("path")), ".")
		if len(sum) != 64 {
			http.NotFound(w, r)
			return
		}
		http.ServeFile(w, r, repo.BlobPath(sum))
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs
}

// onlineSigner signs with the repository's online key of role.
func onlineSigner(t *testing.T, repo *repository.Repo, role string) *repository.Key {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(repo.OnlineKeyDir(), role+"-*.key"))
	if len(files) != 1 {
		t.Fatalf("online %s keys: %v", role, files)
	}
	data, err := os.ReadFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	k, err := repository.ParseKey(data, nil)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func resign[T metadata.Roles](t *testing.T, m *metadata.Metadata[T], k *repository.Key, file string) {
	t.Helper()
	s, err := k.Signer()
	if err != nil {
		t.Fatal(err)
	}
	m.ClearSignatures()
	if _, err := m.Sign(s); err != nil {
		t.Fatal(err)
	}
	if err := m.ToFile(file, true); err != nil {
		t.Fatal(err)
	}
}

// TestDeviceEnforcesDelegatedThreshold: models needs 2 of 2 keys. A device refuses a
// models role signed by one of them, even when the snapshot and timestamp, signed by
// the real online keys, name it (a mirror serving a staged version, or a thief of one
// models key); it accepts the same version once both have signed and it is published.
func TestDeviceEnforcesDelegatedThreshold(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	pass := func() ([]byte, error) { return []byte(thresholdPass), nil }
	res, err := repository.Init(ctx, repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}}, repository.InitOptions{KeyType: repository.KeyEd25519, Passphrase: []byte(thresholdPass)})
	if err != nil {
		t.Fatal(err)
	}
	repo := res.Repo
	bob, err := repository.GenerateKey(repository.RoleModels, repository.KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	bobFile, err := repository.WriteKeyFile(repository.OSFS{}, t.TempDir(), bob, []byte(thresholdPass), repository.KDFParams{N: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := repo.ChangeDelegation(ctx, repository.DelegationChange{Role: repository.RoleModels, AddKeys: []*metadata.Key{bob.Public}, Threshold: 2},
		&repository.KeyRing{Files: []string{bobFile}, Passphrase: pass}); err != nil {
		t.Fatal(err)
	}
	// The operator holds one models key: the publish is staged, signed by it alone.
	pub, err := repo.Publish(ctx, repository.PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("iris model"))},
		&repository.KeyRing{Passphrase: pass, Stage: true})
	if err != nil || pub.Staged == nil {
		t.Fatalf("publish with one of two models keys = %+v, %v; want staged", pub, err)
	}
	v := pub.Staged.Version(repository.RoleModels)

	// The mirror: the repository's metadata plus the 1-of-2 models, named by a snapshot
	// and timestamp signed with the real online keys.
	mirror := t.TempDir()
	entries, _ := os.ReadDir(repo.MetadataDir())
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(repo.MetadataDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(mirror, e.Name()), data, 0o644)
	}
	staged, err := os.ReadFile(repo.StagedPath(repository.RoleModels, v))
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(mirror, fmt.Sprintf("%d.models.json", v)), staged, 0o644)
	st, err := repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap := st.Snapshot
	snap.Signed.Version++
	snap.Signed.Meta["models.json"] = metadata.MetaFile(v)
	resign(t, snap, onlineSigner(t, repo, metadata.SNAPSHOT), filepath.Join(mirror, fmt.Sprintf("%d.snapshot.json", snap.Signed.Version)))
	ts := st.Timestamp
	ts.Signed.Version++
	ts.Signed.Meta["snapshot.json"] = metadata.MetaFile(snap.Signed.Version)
	resign(t, ts, onlineSigner(t, repo, metadata.TIMESTAMP), filepath.Join(mirror, "timestamp.json"))

	root1, err := os.ReadFile(filepath.Join(repo.MetadataDir(), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	device := func(hs *httptest.Server) (*TUF, error) {
		mdir := t.TempDir()
		if err := PinRoot(mdir, root1); err != nil {
			t.Fatal(err)
		}
		c, err := NewTUF(TUFConfig{MetadataDir: mdir, MetadataURL: hs.URL + "/metadata", TargetsURL: hs.URL + "/targets", Downloader: testDownloader(nil)})
		if err != nil {
			t.Fatal(err)
		}
		return c, c.Refresh(ctx)
	}
	c, err := device(serveRepoDir(t, repo, mirror))
	if err == nil {
		_, err = c.Target(ctx, "models/iris/1.0.0.onnx")
	}
	if err == nil || !strings.Contains(err.Error(), "not enough signatures, got 1, want 2") {
		t.Fatalf("device on models v%d signed by 1 of 2 keys: %v; want refused for its threshold", v, err)
	}

	if _, err := repo.SignStaged(ctx, repository.RoleModels, bob); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.PublishStaged(ctx, repository.RoleModels, nil); err != nil {
		t.Fatal(err)
	}
	c, err = device(serveRepoDir(t, repo, repo.MetadataDir()))
	if err != nil {
		t.Fatalf("device refresh on models signed by 2 of 2: %v", err)
	}
	tf, err := c.Target(ctx, "models/iris/1.0.0.onnx")
	if err != nil {
		t.Fatalf("device looks up the model signed by 2 of 2: %v", err)
	}
	dst := filepath.Join(t.TempDir(), "iris.onnx")
	if _, err := c.Download(ctx, tf, dst); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(dst); string(got) != "iris model" {
		t.Fatalf("downloaded %q", got)
	}
}
