package updater

import (
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// confRepo is a static TUF repository (consistent snapshots, every role at version 1)
// built by hand with go-tuf's metadata API and served over HTTP under /metadata/, for
// the cases of the public tuf-conformance suite that tuftest.Repo cannot shape.
type confRepo struct {
	t    *testing.T
	mu   sync.Mutex
	srv  *httptest.Server
	keys map[string]ed25519.PrivateKey // the top-level roles'
	root []byte
	file map[string][]byte // file name -> bytes
}

func newConfRepo(t *testing.T) *confRepo {
	t.Helper()
	r := &confRepo{t: t, keys: map[string]ed25519.PrivateKey{}, file: map[string][]byte{}}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		b, ok := r.file[strings.TrimPrefix(req.URL.Path, "/metadata/")]
		r.mu.Unlock()
		if !ok {
			http.NotFound(w, req)
			return
		}
		w.Write(b)
	}))
	t.Cleanup(r.srv.Close)
	root := metadata.Root(confExpiry())
	for _, role := range []string{metadata.ROOT, metadata.TIMESTAMP, metadata.SNAPSHOT, metadata.TARGETS} {
		priv, key := confKey(t)
		r.keys[role] = priv
		if err := root.Signed.AddKey(key, role); err != nil {
			t.Fatal(err)
		}
	}
	r.root = confPut(r, metadata.ROOT, root, r.keys[metadata.ROOT])
	return r
}

func confExpiry() time.Time { return time.Now().Add(24 * time.Hour) }

func confKey(t *testing.T) (ed25519.PrivateKey, *metadata.Key) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		t.Fatal(err)
	}
	return priv, key
}

// confPut signs md with keys and serves it as role's version 1 (timestamp unversioned).
func confPut[T metadata.Roles](r *confRepo, role string, md *metadata.Metadata[T], keys ...ed25519.PrivateKey) []byte {
	r.t.Helper()
	for _, k := range keys {
		s, err := signature.LoadSigner(k, crypto.Hash(0))
		if err != nil {
			r.t.Fatal(err)
		}
		if _, err := md.Sign(s); err != nil {
			r.t.Fatal(err)
		}
	}
	b, err := md.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	name := "1." + role + ".json"
	if role == metadata.TIMESTAMP {
		name = "timestamp.json"
	}
	r.mu.Lock()
	r.file[name] = b
	r.mu.Unlock()
	return b
}

// publish serves targets, a snapshot listing targets.json and each of meta (file names)
// at version 1, and the timestamp.
func (r *confRepo) publish(targets *metadata.Metadata[metadata.TargetsType], meta ...string) {
	confPut(r, metadata.TARGETS, targets, r.keys[metadata.TARGETS])
	snap := metadata.Snapshot(confExpiry())
	for _, name := range meta {
		snap.Signed.Meta[name] = metadata.MetaFile(1)
	}
	confPut(r, metadata.SNAPSHOT, snap, r.keys[metadata.SNAPSHOT])
	confPut(r, metadata.TIMESTAMP, metadata.Timestamp(confExpiry()), r.keys[metadata.TIMESTAMP])
}

// client is a TUF client of the repository, its root pinned in a new directory.
func (r *confRepo) client() (*TUF, string) {
	r.t.Helper()
	dir := r.t.TempDir()
	if err := PinRoot(dir, r.root); err != nil {
		r.t.Fatal(err)
	}
	c, err := NewTUF(TUFConfig{MetadataDir: dir, MetadataURL: r.srv.URL + "/metadata"})
	if err != nil {
		r.t.Fatal(err)
	}
	return c, dir
}

// confDelegate delegates paths from md to role with a new key, and returns that key.
func confDelegate(t *testing.T, md *metadata.Metadata[metadata.TargetsType], role string, paths ...string) ed25519.PrivateKey {
	t.Helper()
	priv, key := confKey(t)
	id, err := key.ID()
	if err != nil {
		t.Fatal(err)
	}
	if md.Signed.Delegations == nil {
		md.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	}
	md.Signed.Delegations.Keys[id] = key
	md.Signed.Delegations.Roles = append(md.Signed.Delegations.Roles,
		metadata.DelegatedRole{Name: role, KeyIDs: []string{id}, Threshold: 1, Paths: paths})
	return priv
}

func confTarget(p string) *metadata.TargetFiles {
	sum := sha256.Sum256([]byte(p))
	return &metadata.TargetFiles{Path: p, Length: int64(len(p)), Hashes: metadata.Hashes{"sha256": sum[:]}}
}

// TestSnapshotListingRootKeepsTheRoot pins that a snapshot whose meta lists root.json
// (sigstore's real repository does) is not taken to name a delegated role: Refresh
// parsed root.json as targets metadata, failed, and deleted the trusted root, so the
// next Refresh (or start) of the device failed. Found by tuf-conformance,
// test_static_repository[sigstore-root-signing].
func TestSnapshotListingRootKeepsTheRoot(t *testing.T) {
	ctx := context.Background()
	r := newConfRepo(t)
	targets := metadata.Targets(confExpiry())
	targets.Signed.Targets["a.txt"] = confTarget("a.txt")
	r.publish(targets, "root.json")
	c, dir := r.client()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, RootFile)); err != nil || string(b) != string(r.root) {
		t.Errorf("after Refresh, root.json is not the trusted root (read error: %v)", err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("second Refresh = %v", err)
	}
	if _, err := c.Target(ctx, "a.txt"); err != nil {
		t.Errorf("Target(a.txt) = %v", err)
	}
}

// TestDelegatedRoleVerifiedAgainstItsDelegator pins that a delegated role is verified
// against the delegator on the path of each lookup, not trusted because an earlier
// lookup loaded a role of that name through another delegator. The diamond: targets
// delegates team-a/* to parent-a and team-b/* to parent-b; both delegate to a role named
// release, with different keys; release is signed only by parent-a's key for it and
// lists team-a/x and team-b/x. go-tuf cached release from the team-a/x lookup and
// returned team-b/x through parent-b, whose key for release never signed it. Found by
// tuf-conformance, test_cached_role_is_verified_against_current_delegator.
func TestDelegatedRoleVerifiedAgainstItsDelegator(t *testing.T) {
	ctx := context.Background()
	r := newConfRepo(t)
	targets := metadata.Targets(confExpiry())
	keyA := confDelegate(t, targets, "parent-a", "team-a/*")
	keyB := confDelegate(t, targets, "parent-b", "team-b/*")
	parentA, parentB := metadata.Targets(confExpiry()), metadata.Targets(confExpiry())
	releaseA := confDelegate(t, parentA, "release", "team-a/*")
	confDelegate(t, parentB, "release", "team-b/*") // its key never signs release
	release := metadata.Targets(confExpiry())
	release.Signed.Targets["team-a/x"] = confTarget("team-a/x")
	release.Signed.Targets["team-b/x"] = confTarget("team-b/x")
	confPut(r, "parent-a", parentA, keyA)
	confPut(r, "parent-b", parentB, keyB)
	confPut(r, "release", release, releaseA)
	r.publish(targets, "parent-a.json", "parent-b.json", "release.json")

	c, _ := r.client()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	if _, err := c.Target(ctx, "team-a/x"); err != nil {
		t.Fatalf("Target(team-a/x), release signed by parent-a's key for it = %v", err)
	}
	tf, err := c.Target(ctx, "team-b/x")
	if err == nil {
		t.Fatalf("Target(team-b/x) = %s; want an error: parent-b's key for release never signed it", tf.Path)
	}
	if !errors.Is(err, &metadata.ErrUnsignedMetadata{}) {
		t.Errorf("Target(team-b/x) = %v; want go-tuf's ErrUnsignedMetadata", err)
	}
	if _, err := c.Target(ctx, "team-a/x"); err != nil {
		t.Errorf("Target(team-a/x) again = %v", err)
	}
}

// A delegated role that only one role delegates to is verified once per refresh, not
// at every lookup: a lookup re-parsed and re-verified the whole role, about 1.5 s for
// a role of 10,000 targets. Here the role's local file and the server's copy are gone
// after the first lookup, so a second lookup that loaded it again would fail.
func TestDelegatedRolesKeptBetweenLookups(t *testing.T) {
	ctx := context.Background()
	r := newConfRepo(t)
	targets := metadata.Targets(confExpiry())
	modelsKey := confDelegate(t, targets, "models", "models/*")
	runtimesKey := confDelegate(t, targets, "runtimes", "runtimes/*")
	models, runtimes := metadata.Targets(confExpiry()), metadata.Targets(confExpiry())
	models.Signed.Targets["models/a"] = confTarget("models/a")
	models.Signed.Targets["models/b"] = confTarget("models/b")
	runtimes.Signed.Targets["runtimes/x"] = confTarget("runtimes/x")
	confPut(r, "models", models, modelsKey)
	confPut(r, "runtimes", runtimes, runtimesKey)
	r.publish(targets, "models.json", "runtimes.json")

	c, dir := r.client()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh = %v", err)
	}
	if _, err := c.Target(ctx, "models/a"); err != nil {
		t.Fatalf("Target(models/a) = %v", err)
	}
	if err := os.Remove(filepath.Join(dir, "models.json")); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	delete(r.file, "1.models.json")
	r.mu.Unlock()
	for _, p := range []string{"models/b", "runtimes/x", "models/a"} {
		if tf, err := c.Target(ctx, p); err != nil || tf.Path != p {
			t.Errorf("Target(%s) after models.json is gone = %v, %v; want the entry the refresh's models role lists", p, tf, err)
		}
	}
	if _, err := c.Target(ctx, "models/c"); !errors.Is(err, ErrNotListed) {
		t.Errorf("Target(models/c) = %v; want ErrNotListed", err)
	}
	// The next refresh starts again from the files: the role is gone, and so is the target.
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("second Refresh = %v", err)
	}
	if _, err := c.Target(ctx, "models/a"); err == nil {
		t.Errorf("Target(models/a) after a refresh, models.json gone from disk and server = nil error")
	}
}
