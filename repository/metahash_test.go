package repository

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

// hostileMirror serves the metadata files of dir and, for any target path, body: a
// mirror the attacker controls.
func hostileMirror(t *testing.T, dir string, body []byte) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metadata/{file}", func(w http.ResponseWriter, req *http.Request) {
		http.ServeFile(w, req, filepath.Join(dir, filepath.Base(req.PathValue("file"))))
	})
	mux.HandleFunc("GET /targets/{path...}", func(w http.ResponseWriter, req *http.Request) {
		w.Write(body)
	})
	hs := httptest.NewServer(mux)
	t.Cleanup(hs.Close)
	return hs
}

// freshClient is a device that pins root v1 and has no other metadata yet (new to the
// repository, or whose metadata cache was lost), refreshing from url at now.
func freshClient(t *testing.T, f *fixture, url string) (*updater.Updater, error) {
	t.Helper()
	cfg, err := config.New(url+"/metadata", f.root1)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg.RemoteTargetsURL = url + "/targets"
	cfg.LocalMetadataDir = dir
	cfg.LocalTargetsDir = filepath.Join(dir, "targets")
	up, err := updater.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	up.UnsafeSetRefTime(f.clock.Now())
	return up, up.Refresh()
}

func copyDir(t *testing.T, from string) string {
	t.Helper()
	to := t.TempDir()
	entries, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), readFile(t, filepath.Join(from, e.Name())), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return to
}

// TestRotatedOutModelsKeyFromAMirror: the models key is stolen and rotated out. The
// attacker's mirror replays the metadata of before the rotation (its timestamp not yet
// expired) with the models role of the version that snapshot names re-signed by the
// stolen key, adding a model. A device new to the repository must refuse it: the
// snapshot names the role's hash, not only its version. Before, it resolved the
// attacker's model (found from outside, 2 Dec: a device back from an absence was in the
// same place for up to the timestamp's lifetime after the rotation).
func TestRotatedOutModelsKeyFromAMirror(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("v1"), nil); err != nil {
		t.Fatal(err)
	}
	before := copyDir(t, f.repo.MetadataDir()) // what a mirror cached before the rotation
	stolen, err := f.keyring().Load(f.keys[RoleModels][0])
	if err != nil {
		t.Fatal(err)
	}
	if res, err := f.repo.RotateKey(ctx, RoleModels, KeyEd25519, "", f.keyring()); err != nil || !res.Published {
		t.Fatalf("RotateKey(models) = %+v, %v", res, err)
	}

	ts, err := metadata.Timestamp().FromBytes(readFile(t, filepath.Join(before, "timestamp.json")))
	if err != nil {
		t.Fatal(err)
	}
	sn, err := metadata.Snapshot().FromBytes(readFile(t, filepath.Join(before, fmt.Sprintf("%d.snapshot.json", ts.Signed.Meta["snapshot.json"].Version))))
	if err != nil {
		t.Fatal(err)
	}
	file := fmt.Sprintf("%d.models.json", sn.Signed.Meta["models.json"].Version)
	models, err := metadata.Targets().FromBytes(readFile(t, filepath.Join(before, file)))
	if err != nil {
		t.Fatal(err)
	}
	evil := []byte("malware")
	tf, _ := metadata.TargetFile().FromBytes("models/iris/6.6.6.onnx", evil)
	models.Signed.Targets[tf.Path] = tf
	forged, err := signMeta(file, models, []*Key{stolen})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(before, file), forged, 0o644); err != nil {
		t.Fatal(err)
	}

	mirror := hostileMirror(t, before, evil)
	up, err := freshClient(t, f, mirror.URL)
	if err != nil {
		t.Fatalf("a fresh device's refresh from the replayed metadata = %v; want it to verify up to the snapshot (the attack's premise)", err)
	}
	if got, err := up.GetTargetInfo("models/iris/6.6.6.onnx"); err == nil {
		t.Fatalf("GetTargetInfo(models/iris/6.6.6.onnx) = %s; want it refused: the models role was signed by the rotated-out key", got.Path)
	} else if !strings.Contains(err.Error(), "hash") && !strings.Contains(err.Error(), "length") {
		t.Errorf("GetTargetInfo(models/iris/6.6.6.onnx) = %v; want a hash or length mismatch against the snapshot", err)
	}
	// The honest repository still serves a fresh device.
	up, err = freshClient(t, f, f.http.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := up.GetTargetInfo("models/iris/1.0.0.onnx"); err != nil {
		t.Errorf("GetTargetInfo(models/iris/1.0.0.onnx) from the repository = %v", err)
	}
}

// TestStolenSnapshotKeyCannotMixVersions: with the snapshot key alone, an attacker
// re-signs the current snapshot version naming an older models role, one without the
// newest model. A fresh device must refuse it: the timestamp names the snapshot's hash.
func TestStolenSnapshotKeyCannotMixVersions(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("v1"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.publish(artifact.KindModel, "iris", "2.0.0", ".onnx", []byte("v2"), nil); err != nil {
		t.Fatal(err)
	}
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids, n, _ := roleKeyIDs(st, metadata.SNAPSHOT)
	snapKeys, err := (&KeyRing{}).Find(metadata.SNAPSHOT, ids, n, []string{f.repo.OnlineKeyDir()})
	if err != nil {
		t.Fatal(err)
	}
	mirrorDir := copyDir(t, f.repo.MetadataDir())
	sn := st.Snapshot
	sn.Signed.Meta["models.json"] = metadata.MetaFile(sn.Signed.Meta["models.json"].Version - 1)
	file := fmt.Sprintf("%d.snapshot.json", sn.Signed.Version)
	forged, err := signMeta(file, sn, snapKeys)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mirrorDir, file), forged, 0o644); err != nil {
		t.Fatal(err)
	}
	mirror := hostileMirror(t, mirrorDir, nil)
	up, err := freshClient(t, f, mirror.URL)
	if err == nil {
		_, err = up.GetTargetInfo("models/iris/2.0.0.onnx")
		t.Fatalf("a fresh device accepted a snapshot re-signed with the stolen key naming an older models role (iris 2.0.0: %v)", err)
	}
	if !strings.Contains(err.Error(), "hash") && !strings.Contains(err.Error(), "length") {
		t.Errorf("refresh from the forged snapshot = %v; want a hash or length mismatch against the timestamp", err)
	}
}

// TestSnapshotNamesRoleHashes: the snapshot names every targets role, and the timestamp
// the snapshot, by length and SHA-256 of the file served, after Init, a publish and a
// re-signing; a repository whose snapshot names versions only (made before) gets them
// at its next change; and Load refuses a role file that is not the one named.
func TestSnapshotNamesRoleHashes(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	check := func(when string) {
		t.Helper()
		st, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatalf("%s: Load: %v", when, err)
		}
		named := map[string]*metadata.MetaFiles{"snapshot.json": st.Timestamp.Signed.Meta["snapshot.json"]}
		for name, mf := range st.Snapshot.Signed.Meta {
			named[name] = mf
		}
		if len(named) != 4 {
			t.Fatalf("%s: snapshot and timestamp name %d files; want 4", when, len(named))
		}
		for name, mf := range named {
			data := readFile(t, filepath.Join(f.repo.MetadataDir(), fmt.Sprintf("%d.%s", mf.Version, name)))
			sum := sha256.Sum256(data)
			if mf.Length != int64(len(data)) || string(mf.Hashes["sha256"]) != string(sum[:]) {
				t.Errorf("%s: %s named with length %d and sha256 %x; the file has %d bytes and sha256 %x", when, name, mf.Length, mf.Hashes["sha256"], len(data), sum)
			}
		}
	}
	check("after Init")
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("v1"), nil); err != nil {
		t.Fatal(err)
	}
	check("after a publish")
	f.clock.Add(5 * 24 * time.Hour)
	if renewed, err := f.repo.Refresh(ctx); err != nil || len(renewed) == 0 {
		t.Fatalf("Refresh = %v, %v", renewed, err)
	}
	check("after a re-signing")

	// A snapshot and timestamp as repositories wrote them before: versions only.
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	online := func(role string) []*Key {
		ids, n, _ := roleKeyIDs(st, role)
		k, err := (&KeyRing{}).Find(role, ids, n, []string{f.repo.OnlineKeyDir()})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	for name, mf := range st.Snapshot.Signed.Meta {
		st.Snapshot.Signed.Meta[name] = metadata.MetaFile(mf.Version)
	}
	st.Snapshot.Signed.Version++
	if err := writeMeta(f.repo, fmt.Sprintf("%d.snapshot.json", st.Snapshot.Signed.Version), st.Snapshot, online(metadata.SNAPSHOT)); err != nil {
		t.Fatal(err)
	}
	st.Timestamp.Signed.Version++
	st.Timestamp.Signed.Meta["snapshot.json"] = metadata.MetaFile(st.Snapshot.Signed.Version)
	if err := writeMeta(f.repo, "timestamp.json", st.Timestamp, online(metadata.TIMESTAMP)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatalf("Load of a snapshot naming versions only = %v; want it loaded as before", err)
	}
	if _, err := f.publish(artifact.KindModel, "iris", "2.0.0", ".onnx", []byte("v2"), nil); err != nil {
		t.Fatal(err)
	}
	check("after the first change of a repository from before hashes")
	c := f.newClient()
	up := c.mustRefresh()
	if data, _, err := c.download(up, "models/iris/2.0.0.onnx"); err != nil || string(data) != "v2" {
		t.Fatalf("download = %q, %v", data, err)
	}

	// Another runtimes file of the same version, validly signed: not the one named.
	st, err = f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	rt := st.Targets[RoleRuntimes]
	rt.Signed.Expires = rt.Signed.Expires.Add(time.Hour)
	ids, n, _ := roleKeyIDs(st, RoleRuntimes)
	keys, err := f.keyring().Find(RoleRuntimes, ids, n, []string{f.offDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(f.repo, fmt.Sprintf("%d.runtimes.json", rt.Signed.Version), rt, keys); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.Load(ctx); err == nil || !strings.Contains(err.Error(), "not the file the snapshot or timestamp names") {
		t.Errorf("Load with another runtimes file of the named version = %v; want it refused", err)
	}
}
