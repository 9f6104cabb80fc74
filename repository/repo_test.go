package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"
)

const testPass = "correct horse battery staple"

// fakeClock is a settable clock shared by the repository and the TUF client.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type fixture struct {
	t      testing.TB
	repo   *Repo
	http   *httptest.Server
	clock  *fakeClock
	keys   map[string][]string // role → key files from Init
	root1  []byte              // the root a client pins
	offDir string
	events *events
}

// events is a Recorder that keeps what it is given and fails while fail is set.
type events struct {
	mu   sync.Mutex
	list []string
	fail error
}

func (e *events) Record(ctx context.Context, actor, kind, subject string, data any) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.fail != nil {
		return e.fail
	}
	e.list = append(e.list, actor+" "+kind+" "+subject)
	return nil
}

func (e *events) all() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.list...)
}

func newFixture(t testing.TB, kt KeyType) *fixture {
	t.Helper()
	clock := &fakeClock{t: time.Now().UTC().Truncate(time.Second)}
	dir := t.TempDir()
	ev := &events{}
	res, err := Init(context.Background(), Config{Dir: dir, Now: clock.Now, KDF: KDFParams{N: 1 << 10}, Recorder: ev}, InitOptions{
		KeyType: kt, Passphrase: []byte(testPass),
	})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	hs := httptest.NewServer(staticHandler(res.Repo))
	t.Cleanup(hs.Close)
	root1, err := os.ReadFile(filepath.Join(res.Repo.MetadataDir(), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, repo: res.Repo, http: hs, clock: clock, keys: res.KeyFiles, root1: root1, offDir: res.Repo.OfflineKeyDir(), events: ev}
}

// staticHandler serves the repository as a static mirror would (repo-server does it
// with caching and metrics): metadata files by name, targets by their consistent
// path <dir>/<sha256>.<name> from the blob store.
func staticHandler(r *Repo) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metadata/{file}", func(w http.ResponseWriter, req *http.Request) {
		http.ServeFile(w, req, filepath.Join(r.MetadataDir(), filepath.Base(req.PathValue("file"))))
	})
	mux.HandleFunc("GET /targets/{path...}", func(w http.ResponseWriter, req *http.Request) {
		base := path.Base(req.PathValue("path"))
		sum, _, ok := strings.Cut(base, ".")
		if !ok || len(sum) != 64 {
			http.NotFound(w, req)
			return
		}
		http.ServeFile(w, req, r.BlobPath(sum))
	})
	return mux
}

func (f *fixture) keyring(files ...string) *KeyRing {
	return &KeyRing{Files: files, Passphrase: func() ([]byte, error) { return []byte(testPass), nil }}
}

func (f *fixture) publish(kind artifact.Kind, name, version, ext string, content []byte, mod func(*PublishRequest)) (*PublishResult, error) {
	req := PublishRequest{
		Meta:    artifact.Meta{Kind: kind, Name: name, Version: version, Format: strings.TrimPrefix(ext, ".")},
		Ext:     ext,
		Content: bytes.NewReader(content),
	}
	if mod != nil {
		mod(&req)
	}
	return f.repo.Publish(context.Background(), req, f.keyring())
}

// client is a real go-tuf updater over HTTP with its own metadata cache directory, which
// it keeps across refreshes (as a device does).
type client struct {
	f   *fixture
	dir string
}

func (f *fixture) newClient() *client {
	return &client{f: f, dir: f.t.TempDir()}
}

func (c *client) refresh() (*updater.Updater, error) {
	root := c.f.root1
	if b, err := os.ReadFile(filepath.Join(c.dir, "root.json")); err == nil {
		root = b
	}
	cfg, err := config.New(c.f.http.URL+"/metadata", root)
	if err != nil {
		return nil, err
	}
	cfg.RemoteTargetsURL = c.f.http.URL + "/targets"
	cfg.LocalMetadataDir = c.dir
	cfg.LocalTargetsDir = filepath.Join(c.dir, "targets")
	up, err := updater.New(cfg)
	if err != nil {
		return nil, err
	}
	up.UnsafeSetRefTime(c.f.clock.Now())
	return up, up.Refresh()
}

func (c *client) mustRefresh() *updater.Updater {
	c.f.t.Helper()
	up, err := c.refresh()
	if err != nil {
		c.f.t.Fatalf("client refresh: %v", err)
	}
	return up
}

func (c *client) download(up *updater.Updater, path string) ([]byte, *metadata.TargetFiles, error) {
	tf, err := up.GetTargetInfo(path)
	if err != nil {
		return nil, nil, err
	}
	_, data, err := up.DownloadTarget(tf, filepath.Join(c.dir, "dl-"+filepath.Base(path)), "")
	return data, tf, err
}

func TestClientFetchesPublishedModel(t *testing.T) {
	for _, kt := range []KeyType{KeyEd25519, KeyECDSAP256} {
		t.Run(string(kt), func(t *testing.T) {
			f := newFixture(t, kt)
			c := f.newClient()
			up := c.mustRefresh()
			if v := up.GetTrustedMetadataSet().Timestamp.Signed.Version; v != 1 {
				t.Fatalf("initial timestamp version = %d; want 1", v)
			}
			if _, err := up.GetTargetInfo("models/iris/1.0.0.onnx"); err == nil {
				t.Fatal("GetTargetInfo on an empty repository succeeded")
			}

			probe := []byte(`{"inputs":[[5.1,3.5,1.4,0.2]],"labels":[0]}`)
			if _, err := f.publish(artifact.KindProbe, "iris", "1.0.0", ".json", probe, nil); err != nil {
				t.Fatalf("publish probe: %v", err)
			}
			model := bytes.Repeat([]byte("onnx-model-bytes"), 1000)
			res, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", model, func(r *PublishRequest) {
				r.Meta.Gates = &artifact.Gates{MinAccuracy: 0.9, MaxP99Ms: 5}
				r.Meta.Extra = map[string]json.RawMessage{"team": json.RawMessage(`"vision"`)}
			})
			if err != nil {
				t.Fatalf("publish model: %v", err)
			}
			if res.Role != RoleModels || res.Path != "models/iris/1.0.0.onnx" || res.Length != int64(len(model)) {
				t.Fatalf("publish result = %+v", res)
			}

			up = c.mustRefresh()
			data, tf, err := c.download(up, "models/iris/1.0.0.onnx")
			if err != nil {
				t.Fatalf("download model: %v", err)
			}
			if !bytes.Equal(data, model) {
				t.Fatalf("downloaded %d bytes; want the %d published", len(data), len(model))
			}
			var meta artifact.Meta
			if err := json.Unmarshal(*tf.Custom, &meta); err != nil {
				t.Fatal(err)
			}
			if meta.Probe != "probes/iris/1.0.0.json" || meta.Gates == nil || meta.Gates.MinAccuracy != 0.9 || string(meta.Extra["team"]) != `"vision"` {
				t.Fatalf("custom metadata = %+v; want probe, gates and extra kept", meta)
			}
			if data, _, err := c.download(up, "probes/iris/1.0.0.json"); err != nil || !bytes.Equal(data, probe) {
				t.Fatalf("download probe = %q, %v", data, err)
			}
		})
	}
}

func (f *fixture) rootKeyFiles(i ...int) []string {
	var out []string
	for _, n := range i {
		out = append(out, f.keys[metadata.ROOT][n])
	}
	return out
}

func TestRootRotationByThreshold(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	c := f.newClient()
	c.mustRefresh()
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Three new root keys replace the three old ones; threshold stays 2.
	newDir := t.TempDir()
	var newFiles []string
	var newPubs []*metadata.Key
	for range 3 {
		k, err := GenerateKey("root", KeyEd25519, nil)
		if err != nil {
			t.Fatal(err)
		}
		p, err := WriteKeyFile(OSFS{}, newDir, k, []byte(testPass), KDFParams{N: 1 << 10})
		if err != nil {
			t.Fatal(err)
		}
		newFiles = append(newFiles, p)
		newPubs = append(newPubs, k.Public)
	}
	prop, err := f.repo.ProposeRoot(ctx, RootChange{
		AddKeys:    map[string][]*metadata.Key{metadata.ROOT: newPubs},
		RevokeKeys: map[string][]string{metadata.ROOT: st.Root.Signed.Roles[metadata.ROOT].KeyIDs},
	})
	if err != nil {
		t.Fatalf("ProposeRoot: %v", err)
	}
	sign := func(file string) {
		t.Helper()
		k, err := f.keyring().Load(file)
		if err != nil {
			t.Fatal(err)
		}
		// Each holder signs the proposal file alone, as on their own machine, with a
		// copy of the root in force (an old key signs a root that drops it).
		if _, err := SignRootFile(nil, prop, k, &st.Root.Signed); err != nil {
			t.Fatalf("SignRootFile: %v", err)
		}
	}
	publish := func() error {
		_, err := f.repo.PublishRoot(ctx, prop, f.keyring())
		return err
	}

	// A key of neither root is refused, and the file is left as it was: its signature
	// would count toward no threshold. Before, it was added without a word.
	before, err := os.ReadFile(prop)
	if err != nil {
		t.Fatal(err)
	}
	stranger, err := GenerateKey("targets", KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SignRootFile(nil, prop, stranger, &st.Root.Signed); err == nil || !strings.Contains(err.Error(), "count for neither") {
		t.Errorf("SignRootFile with a key of neither root = %v; want a refusal", err)
	}
	// An old key the proposal drops, with the root in force not at hand: refused,
	// saying how to sign.
	old, err := f.keyring().Load(f.rootKeyFiles(2)[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := SignRootFile(nil, prop, old, nil); err == nil || !strings.Contains(err.Error(), "--current") {
		t.Errorf("SignRootFile with a dropped key and no current root = %v; want a refusal naming --current", err)
	}
	// The root in force must be the one the proposal follows.
	older := st.Root.Signed
	older.Version--
	if _, err := SignRootFile(nil, prop, old, &older); err == nil || !strings.Contains(err.Error(), "follows") {
		t.Errorf("SignRootFile with the wrong current root = %v; want a refusal", err)
	}
	if after, _ := os.ReadFile(prop); !bytes.Equal(after, before) {
		t.Errorf("refused signatures changed the proposal")
	}

	if err := publish(); !errors.Is(err, ErrThreshold) {
		t.Fatalf("publish unsigned = %v; want ErrThreshold", err)
	}
	sign(f.rootKeyFiles(0)[0])
	sign(newFiles[0])
	sign(newFiles[1])
	if err := publish(); !errors.Is(err, ErrThreshold) || !strings.Contains(err.Error(), "current root") {
		t.Fatalf("publish with 1 of 3 old keys = %v; want ErrThreshold for the current root", err)
	}
	sign(f.rootKeyFiles(1)[0])
	// Signing again with the same key does not count twice.
	sign(newFiles[1])
	if err := publish(); err != nil {
		t.Fatalf("publish with 2 old + 2 new: %v", err)
	}
	up := c.mustRefresh()
	if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 2 {
		t.Fatalf("client root version = %d; want 2", v)
	}

	// v3 signed by the new keys only: the old ones no longer matter, and one of them
	// is refused (its signature would be noise).
	if st, err = f.repo.Load(ctx); err != nil {
		t.Fatal(err)
	}
	prop, err = f.repo.ProposeRoot(ctx, RootChange{})
	if err != nil {
		t.Fatal(err)
	}
	sign(newFiles[0])
	if _, err := SignRootFile(nil, prop, old, &st.Root.Signed); err == nil || !strings.Contains(err.Error(), "not a root key of v2 or v3") {
		t.Errorf("SignRootFile v3 with a key v2 dropped = %v; want a refusal", err)
	}
	if err := publish(); !errors.Is(err, ErrThreshold) {
		t.Fatalf("publish v3 with one current key = %v; want ErrThreshold", err)
	}
	sign(newFiles[2])
	if err := publish(); err != nil {
		t.Fatalf("publish v3: %v", err)
	}
	up = c.mustRefresh()
	if v := up.GetTrustedMetadataSet().Root.Signed.Version; v != 3 {
		t.Fatalf("client root version = %d; want 3", v)
	}
	// A stale proposal (for a version already published) is refused.
	if _, err := f.repo.PublishRoot(ctx, prop, nil); err == nil {
		t.Fatal("publishing a consumed proposal succeeded")
	}
}

func TestOnlineKeyRotation(t *testing.T) {
	for _, role := range []string{metadata.TIMESTAMP, metadata.SNAPSHOT} {
		t.Run(role, func(t *testing.T) {
			f := newFixture(t, KeyEd25519)
			ctx := context.Background()
			c := f.newClient()
			c.mustRefresh()
			before, _ := f.repo.Load(ctx)
			oldIDs := before.Root.Signed.Roles[role].KeyIDs

			// Without root keys the rotation waits for the ceremony.
			res, err := f.repo.RotateKey(ctx, role, KeyECDSAP256, "", &KeyRing{})
			if err != nil {
				t.Fatalf("RotateKey: %v", err)
			}
			if res.Published {
				t.Fatal("rotation published without root signatures")
			}
			// A client still works while the proposal waits.
			c.mustRefresh()
			f.signStagedRoot(0, 2)
			if _, err := f.repo.PublishRoot(ctx, "", nil); err != nil {
				t.Fatalf("PublishRoot: %v", err)
			}
			up := c.mustRefresh()
			trusted := up.GetTrustedMetadataSet()
			if got := trusted.Root.Signed.Roles[role].KeyIDs; len(got) != 1 || got[0] != res.NewKeyID || got[0] == oldIDs[0] {
				t.Fatalf("client's %s keys = %v; want [%s]", role, got, short(res.NewKeyID))
			}
			// The old online key is gone: metadata signed only by it is rejected.
			if err := trusted.Root.VerifyDelegate(role, onlyOldSigned(t, f, role, oldIDs[0])); err == nil {
				t.Fatalf("%s signed by the revoked key verifies", role)
			}
			// The server keeps working with the new key alone, and a fresh client too.
			f.clock.Add(23 * time.Hour)
			f.repo.Refresh(ctx)
			c.mustRefresh()
			f.newClient().mustRefresh()

			// One-step rotation when the caller holds root keys.
			res2, err := f.repo.RotateKey(ctx, role, KeyEd25519, "", f.keyring(f.rootKeyFiles(0, 1)...))
			if err != nil || !res2.Published {
				t.Fatalf("RotateKey with root keys = %+v, %v; want published", res2, err)
			}
			up = c.mustRefresh()
			if got := up.GetTrustedMetadataSet().Root.Signed.Roles[role].KeyIDs; got[0] != res2.NewKeyID {
				t.Fatalf("client's %s key = %s; want %s", role, short(got[0]), short(res2.NewKeyID))
			}
		})
	}
}

// onlyOldSigned returns the role's current metadata re-signed by the revoked key only.
func onlyOldSigned(t *testing.T, f *fixture, role, oldID string) any {
	t.Helper()
	k, err := (&KeyRing{}).Find(role, []string{oldID}, 1, []string{f.repo.OnlineKeyDir()})
	if err != nil {
		t.Fatal(err)
	}
	s, _ := k[0].Signer()
	if role == metadata.TIMESTAMP {
		m, err := metadata.Timestamp().FromFile(filepath.Join(f.repo.MetadataDir(), "timestamp.json"))
		if err != nil {
			t.Fatal(err)
		}
		m.ClearSignatures()
		m.Sign(s)
		return m
	}
	st, _ := f.repo.Load(context.Background())
	st.Snapshot.ClearSignatures()
	st.Snapshot.Sign(s)
	return st.Snapshot
}

func TestDelegatedKeyRotationAndWrongKey(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	c := f.newClient()
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("v1"), nil); err != nil {
		t.Fatal(err)
	}
	c.mustRefresh()

	oldModelsKey := f.keys[RoleModels][0]
	res, err := f.repo.RotateKey(ctx, RoleModels, KeyEd25519, "", f.keyring())
	if err != nil || !res.Published {
		t.Fatalf("RotateKey(models) = %+v, %v", res, err)
	}
	// The client follows the rotation and still verifies the old target.
	up := c.mustRefresh()
	if data, _, err := c.download(up, "models/iris/1.0.0.onnx"); err != nil || string(data) != "v1" {
		t.Fatalf("download after rotation = %q, %v", data, err)
	}
	// Publishing with only the revoked key is refused before anything is written.
	tsBefore := readFile(t, filepath.Join(f.repo.MetadataDir(), "timestamp.json"))
	onlyOld := &KeyRing{Files: []string{oldModelsKey}, Passphrase: f.keyring().Passphrase}
	moveAway(t, f.offDir, res.NewKey)
	_, err = f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "2.0.0"}, Ext: ".onnx", Content: strings.NewReader("v2")}, onlyOld)
	if err == nil || !strings.Contains(err.Error(), "role models needs 1") {
		t.Fatalf("publish with the revoked key = %v; want a missing-key error", err)
	}
	if !bytes.Equal(tsBefore, readFile(t, filepath.Join(f.repo.MetadataDir(), "timestamp.json"))) {
		t.Fatal("a refused publish changed timestamp.json")
	}

	// An attacker holding the online keys and the revoked models key forges a models
	// version: the client rejects it.
	forgeDelegated(t, f, RoleModels, oldModelsKey, "models/evil/6.6.6.onnx")
	up, err = c.refresh()
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if _, err := up.GetTargetInfo("models/evil/6.6.6.onnx"); err == nil {
		t.Fatal("client accepted a models role signed by the wrong key")
	}
}

func moveAway(t *testing.T, dir, file string) {
	t.Helper()
	if err := os.Rename(file, filepath.Join(t.TempDir(), filepath.Base(file))); err != nil {
		t.Fatal(err)
	}
}

// forgeDelegated writes a new version of role signed with keyFile, and a snapshot and
// timestamp pointing to it signed with the real online keys.
func forgeDelegated(t *testing.T, f *fixture, role, keyFile, tpath string) {
	t.Helper()
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	bad, err := f.keyring().Load(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	m := st.Targets[role]
	m.Signed.Version++
	tf, _ := metadata.TargetFile().FromBytes(tpath, []byte("malware"))
	m.Signed.Targets[tpath] = tf
	if err := writeMeta(f.repo, fmt.Sprintf("%d.%s.json", m.Signed.Version, role), m, []*Key{bad}); err != nil {
		t.Fatal(err)
	}
	online := func(r string) []*Key {
		ids, n, _ := roleKeyIDs(st, r)
		k, err := (&KeyRing{}).Find(r, ids, n, []string{f.repo.OnlineKeyDir()})
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	st.Snapshot.Signed.Version++
	st.Snapshot.Signed.Meta[role+".json"] = metadata.MetaFile(m.Signed.Version)
	if err := writeMeta(f.repo, fmt.Sprintf("%d.snapshot.json", st.Snapshot.Signed.Version), st.Snapshot, online(metadata.SNAPSHOT)); err != nil {
		t.Fatal(err)
	}
	st.Timestamp.Signed.Version++
	st.Timestamp.Signed.Meta["snapshot.json"] = metadata.MetaFile(st.Snapshot.Signed.Version)
	if err := writeMeta(f.repo, "timestamp.json", st.Timestamp, online(metadata.TIMESTAMP)); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRepublishSameVersion(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	c := f.newClient()
	if _, err := f.publish(artifact.KindRuntime, "onnxruntime", "1.24.3", ".tar", []byte("runtime A"), nil); err != nil {
		t.Fatal(err)
	}
	res, err := f.publish(artifact.KindRuntime, "onnxruntime", "1.24.3", ".tar", []byte("runtime A"), nil)
	if err != nil || !res.Unchanged {
		t.Fatalf("republish identical = %+v, %v; want Unchanged", res, err)
	}
	before := snapshotFiles(t, f)
	for _, ext := range []string{".tar", ".tgz"} {
		_, err = f.publish(artifact.KindRuntime, "onnxruntime", "1.24.3", ext, []byte("runtime B"), nil)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("republish %s with new bytes = %v; want ErrConflict", ext, err)
		}
	}
	if after := snapshotFiles(t, f); after != before {
		t.Fatalf("refused republish changed the metadata:\n%s\nthen\n%s", before, after)
	}
	up := c.mustRefresh()
	if data, _, err := c.download(up, "runtimes/onnxruntime/1.24.3.tar"); err != nil || string(data) != "runtime A" {
		t.Fatalf("download = %q, %v; want the first bytes", data, err)
	}
}

// snapshotFiles lists the metadata directory with sizes, and the incoming blob area.
func snapshotFiles(t *testing.T, f *fixture) string {
	t.Helper()
	var b strings.Builder
	for _, d := range []string{f.repo.MetadataDir(), f.repo.path("blobs", "incoming"), f.repo.path("blobs", "sha256")} {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			fi, _ := e.Info()
			fmt.Fprintf(&b, "%s/%s %d\n", filepath.Base(d), e.Name(), fi.Size())
		}
	}
	fmt.Fprintf(&b, "timestamp %x", readFile(t, filepath.Join(f.repo.MetadataDir(), "timestamp.json")))
	return b.String()
}

// failingFS fails writes whose name matches, like a full disk.
type failingFS struct {
	OSFS
	match string
	after int64 // bytes written before failing
}

var errNoSpace = fmt.Errorf("simulated: %w", syscall.ENOSPC)

func (f failingFS) WriteFile(name string, data []byte, perm os.FileMode) error {
	if strings.Contains(name, f.match) {
		// Write part of the data to a temp file, then fail, as a full disk would.
		_, err := f.WriteStream(name, bytes.NewReader(data), perm)
		return err
	}
	return f.OSFS.WriteFile(name, data, perm)
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func (f failingFS) WriteStream(name string, r io.Reader, perm os.FileMode) (int64, error) {
	if strings.Contains(name, f.match) {
		return f.OSFS.WriteStream(name, io.MultiReader(io.LimitReader(r, f.after), errReader{errNoSpace}), perm)
	}
	return f.OSFS.WriteStream(name, r, perm)
}

func TestBadInputChangesNothing(t *testing.T) {
	ctx := context.Background()
	model := func() PublishRequest {
		return PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "2.0.0"}, Ext: ".onnx", Content: strings.NewReader("model v2")}
	}
	tests := []struct {
		name    string
		prepare func(f *fixture) (PublishRequest, *KeyRing, *Repo)
		want    string
		is      error
	}{
		{
			name: "wrong passphrase",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				return model(), &KeyRing{Passphrase: func() ([]byte, error) { return []byte("wrong"), nil }}, f.repo
			},
			is: ErrWrongPassphrase,
		},
		{
			name: "missing key file",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				kr := f.keyring(filepath.Join(t.TempDir(), "nope.key"))
				return model(), kr, f.repo
			},
			is: os.ErrNotExist,
		},
		{
			name: "no key for the role",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				moveAway(t, f.offDir, f.keys[RoleModels][0])
				return model(), f.keyring(), f.repo
			},
			want: "role models needs 1",
		},
		{
			name: "path outside the role's delegation",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				r := model()
				r.Role = RoleRuntimes
				return r, f.keyring(), f.repo
			},
			is: ErrOutsideDelegation,
		},
		{
			name: "truncated delegated metadata",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				p := filepath.Join(f.repo.MetadataDir(), "2.models.json")
				b := readFile(t, p)
				os.WriteFile(p, b[:len(b)/2], 0o644)
				return model(), f.keyring(), f.repo
			},
			want: "2.models.json: not valid JSON",
		},
		{
			name: "non-JSON timestamp",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				os.WriteFile(filepath.Join(f.repo.MetadataDir(), "timestamp.json"), []byte("<html>oops</html>"), 0o644)
				return model(), f.keyring(), f.repo
			},
			want: "timestamp.json: not valid JSON",
		},
		{
			name: "disk full writing the snapshot",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				r := *f.repo
				r.fs = failingFS{match: "snapshot.json", after: 100}
				return model(), f.keyring(), &r
			},
			is: syscall.ENOSPC,
		},
		{
			name: "disk full storing the content",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				r := *f.repo
				r.fs = failingFS{match: "incoming", after: 3}
				return model(), f.keyring(), &r
			},
			is: syscall.ENOSPC,
		},
		{
			name: "invalid version",
			prepare: func(f *fixture) (PublishRequest, *KeyRing, *Repo) {
				r := model()
				r.Meta.Version = "../../etc"
				return r, f.keyring(), f.repo
			},
			want: "semantic version",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, KeyEd25519)
			if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("model v1"), nil); err != nil {
				t.Fatal(err)
			}
			req, kr, repo := tc.prepare(f)
			before := snapshotFiles(t, f)
			_, err := repo.Publish(ctx, req, kr)
			if err == nil {
				t.Fatal("Publish succeeded; want an error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Fatalf("Publish = %v; want errors.Is %v", err, tc.is)
			}
			if tc.want != "" && !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Publish = %v; want it to mention %q", err, tc.want)
			}
			if after := snapshotFiles(t, f); after != before {
				t.Fatalf("failed publish changed the repository:\n%s\nthen\n%s", before, after)
			}
		})
	}
}

func TestRepositoryStaysConsistentWhilePublishing(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := f.newClient()
			for ctx.Err() == nil {
				if _, err := c.refresh(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for i := range 15 {
		if _, err := f.publish(artifact.KindModel, "m", fmt.Sprintf("1.0.%d", i), ".onnx", []byte{byte(i)}, nil); err != nil {
			t.Fatal(err)
		}
	}
	cancel()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("a client saw an inconsistent repository: %v", err)
	}
}

// TestRootChangeKeepingAnOnlineKey: a root change that adds a timestamp key and keeps
// the old one (whose private half the server holds; the new one's is elsewhere) is
// published, and the repository and its clients still load: the old key, both the new
// root's and the old root's, signs timestamp.json once. It signed twice, and go-tuf
// refuses metadata with two signatures by one key: the repository could not load
// itself and every device's refresh failed.
func TestRootChangeKeepingAnOnlineKey(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	c := f.newClient()
	c.mustRefresh()
	extra, err := GenerateKey(metadata.TIMESTAMP, KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.ProposeRoot(ctx, RootChange{AddKeys: map[string][]*metadata.Key{metadata.TIMESTAMP: {extra.Public}}}); err != nil {
		t.Fatal(err)
	}
	f.signStagedRoot(0, 1)
	if _, err := f.repo.PublishRoot(ctx, "", nil); err != nil {
		t.Fatalf("PublishRoot: %v", err)
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatalf("Load after the root change: %v", err)
	}
	if v := c.mustRefresh().GetTrustedMetadataSet().Root.Signed.Version; v != 2 {
		t.Fatalf("client root version = %d; want 2", v)
	}
	f.newClient().mustRefresh()
}

// TestRootWrittenBeforeTheTimestamp: a new root whose file cannot be written (a full
// disk) leaves the repository as it was, loadable and served; metadata signed by the
// new root's keys never goes live without that root. (The root was written after
// timestamp.json, so a failure there left live targets signed by a key no published
// root names: Load, and every device, failed until someone copied the root in.)
func TestRootWrittenBeforeTheTimestamp(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	c := f.newClient()
	c.mustRefresh()
	// A new targets key: its role is re-signed by it in the same transaction.
	nk, err := GenerateKey(metadata.TARGETS, KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WriteKeyFile(OSFS{}, f.offDir, nk, []byte(testPass), KDFParams{N: 1 << 10}); err != nil {
		t.Fatal(err)
	}
	before, _ := f.repo.Load(ctx)
	if _, err := f.repo.ProposeRoot(ctx, RootChange{
		AddKeys:    map[string][]*metadata.Key{metadata.TARGETS: {nk.Public}},
		RevokeKeys: map[string][]string{metadata.TARGETS: before.Root.Signed.Roles[metadata.TARGETS].KeyIDs},
	}); err != nil {
		t.Fatal(err)
	}
	f.signStagedRoot(0, 1)
	fs := f.repo.fs
	f.repo.fs = failingFS{OSFS: OSFS{}, match: "2.root.json"}
	_, err = f.repo.PublishRoot(ctx, "", f.keyring())
	f.repo.fs = fs
	if err == nil {
		t.Fatal("PublishRoot succeeded with its root unwritable")
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatalf("Load after the failed root publication: %v", err)
	}
	c.mustRefresh()
	f.newClient().mustRefresh()
}

// TestPublishedTargetCannotBeReplacedThroughItsPath: version "1.0.0-rc.onnx" published
// without an extension has the path of version "1.0.0-rc" published as .onnx. It is
// refused; it used to pass the conflict check (which compares versions) and replace the
// published target's bytes under the same path.
func TestPublishedTargetCannotBeReplacedThroughItsPath(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0-rc", ".onnx", []byte("the published model"), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0-rc.onnx", "", []byte("other bytes"), nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("publish 1.0.0-rc.onnx without an extension = %v; want ErrInvalid", err)
	}
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tf := st.Targets[artifact.KindModel.Role()].Signed.Targets["models/m/1.0.0-rc.onnx"]
	if tf == nil || tf.Length != int64(len("the published model")) {
		t.Fatalf("models/m/1.0.0-rc.onnx = %+v; want the first publication", tf)
	}
}

// TestChangeFailsWhenItsLockIsLost: a change whose lock (a lease) was lost while it ran
// makes nothing visible and records nothing: its metadata, built from what it read under
// the lock, would overwrite the next holder's.
func TestChangeFailsWhenItsLockIsLost(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	lost := errors.New("lease lost to another holder")
	before := len(f.events.all())
	f.repo = f.repo.WithLease(func(context.Context) (func(), error) { return func() {}, nil }, func(context.Context) error { return lost })
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("model"), nil); !errors.Is(err, lost) {
		t.Fatalf("publish with its lock lost = %v; want the loss", err)
	}
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if tf := st.Targets[artifact.KindModel.Role()]; tf != nil && tf.Signed.Targets["models/m/1.0.0.onnx"] != nil {
		t.Fatal("the change became visible")
	}
	if after := f.events.all(); len(after) != before {
		t.Fatalf("events recorded for a change that did not happen: %v", after[before:])
	}
	f.repo = f.repo.WithLease(func(context.Context) (func(), error) { return func() {}, nil }, func(context.Context) error { return nil })
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("model"), nil); err != nil {
		t.Fatalf("publish with its lock held: %v", err)
	}
}

// TestLostLockLeavesTheNextHoldersFiles: a change that finds its lock (a lease) lost
// leaves the files it created, for the next holder may have written the same names
// since: here the next versions of the targets and snapshot metadata, which its live
// timestamp would name. Before, the failed change removed them, and devices could no
// longer fetch the next holder's snapshot.
func TestLostLockLeavesTheNextHoldersFiles(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	lost := errors.New("lease lost to another holder")
	names := func() map[string]bool {
		m := map[string]bool{}
		for _, dir := range []string{f.repo.MetadataDir(), filepath.Join(f.repo.Dir(), "blobs", "sha256")} {
			des, _ := os.ReadDir(dir)
			for _, de := range des {
				m[filepath.Join(dir, de.Name())] = true
			}
		}
		return m
	}
	before := names()
	theirs := map[string][]byte{}
	held := func(context.Context) error {
		// Meanwhile the next holder published: it wrote the next metadata versions
		// under the same names (and shares the content).
		for name := range names() {
			if before[name] || theirs[name] != nil || filepath.Dir(name) != f.repo.MetadataDir() {
				continue
			}
			theirs[name] = []byte("the next holder's " + filepath.Base(name))
			if err := os.WriteFile(name, theirs[name], 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return lost
	}
	f.repo = f.repo.WithLease(func(context.Context) (func(), error) { return func() {}, nil }, held)
	_, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("model"), nil)
	if !errors.Is(err, lost) || !strings.Contains(err.Error(), "another writer may have written them") {
		t.Errorf("publish with its lock lost = %v; want the loss, naming the files left", err)
	}
	if len(theirs) < 2 {
		t.Fatalf("the change created %d metadata files; want the next targets and snapshot", len(theirs))
	}
	for name, want := range theirs {
		if got, err := os.ReadFile(name); err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after the change that lost its lock failed: %q, %v; want the next holder's", filepath.Base(name), got, err)
		}
	}
	sum := sha256.Sum256([]byte("model"))
	if _, err := os.Stat(f.repo.BlobPath(hex.EncodeToString(sum[:]))); err != nil {
		t.Errorf("the content the next holder may share was removed: %v", err)
	}
	// With the lock held, a failed change still removes what it created.
	for name := range theirs {
		os.Remove(name)
	}
	f.repo = f.repo.WithLease(func(context.Context) (func(), error) { return func() {}, nil }, func(context.Context) error { return nil })
	before = names()
	f.events.mu.Lock()
	f.events.fail = errors.New("audit log unavailable")
	f.events.mu.Unlock()
	if _, err := f.publish(artifact.KindModel, "m", "1.0.1", ".onnx", []byte("model 1.0.1"), nil); err == nil {
		t.Fatal("publish with the audit log failing succeeded")
	}
	f.events.mu.Lock()
	f.events.fail = nil
	f.events.mu.Unlock()
	for name := range names() {
		if !before[name] {
			t.Errorf("%s stays after a failed change that held its lock", name)
		}
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestLockLostWhileRecording: the lock is checked again once the change is recorded
// (the audit log, a database, may take longer than the lease): a change whose lease
// passed to another writer while it recorded does not write its timestamp over the
// other's. Before, it did.
func TestLockLostWhileRecording(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	version := st.Timestamp.Signed.Version
	lost := errors.New("lease lost to another holder")
	checks := 0
	held := func(context.Context) error {
		checks++
		if checks > 1 {
			return lost
		}
		return nil
	}
	f.repo = f.repo.WithLease(func(context.Context) (func(), error) { return func() {}, nil }, held)
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("model"), nil); !errors.Is(err, lost) {
		t.Errorf("publish whose lease was lost while it recorded = %v; want the loss", err)
	}
	if st, err = f.repo.Load(ctx); err != nil {
		t.Fatal(err)
	}
	if st.Timestamp.Signed.Version != version {
		t.Errorf("timestamp v%d after the change lost its lease; want v%d, untouched", st.Timestamp.Signed.Version, version)
	}
}

// signStagedRoot signs the staged root proposal with the fixture's root keys idx, each
// loaded as its holder would (SignRoot).
func (f *fixture) signStagedRoot(idx ...int) {
	f.t.Helper()
	kr := f.keyring(f.rootKeyFiles(idx...)...)
	for _, file := range kr.Files {
		k, err := kr.Load(file)
		if err != nil {
			f.t.Fatal(err)
		}
		if _, _, err := f.repo.SignRoot(context.Background(), k); err != nil {
			f.t.Fatalf("SignRoot: %v", err)
		}
	}
}
