// Package tuftest builds TUF repositories with go-tuf's metadata API and serves them over
// HTTP, for tests of the agent. It is not linked into the agent.
package tuftest

import (
	"crypto"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/edgeward/edgeward/internal/artifact"
)

// Repo is a TUF repository built with go-tuf's metadata API and served over HTTP:
// /metadata/<version>.<role>.json, /metadata/timestamp.json and, with consistent
// snapshots, /targets/<dir>/<hash>.<name> for every listed hash.
type Repo struct {
	t         testing.TB
	keys      map[string]ed25519.PrivateKey
	root      *metadata.Metadata[metadata.RootType]
	targets   *metadata.Metadata[metadata.TargetsType]
	snapshot  *metadata.Metadata[metadata.SnapshotType]
	timestamp *metadata.Metadata[metadata.TimestampType]
	mu        sync.Mutex
	files     map[string][]byte
	hits      map[string]int
	streams   map[string]int64
	// delegated roles (Edgeward's models and runtimes), in delegation order
	delegated []*delegation
	srv       *httptest.Server
	// rootSigners are the extra keys signing the next root (the old root's, on rotation).
	rootSigners []ed25519.PrivateKey
	// NameHashes makes Publish name each targets role in the snapshot, and the snapshot
	// in the timestamp, by length and SHA-256 besides the version, as Edgeward's
	// repository does; false: by version only.
	NameHashes bool
}

// metaFile is how the snapshot or timestamp names a file of version with content b.
func (r *Repo) metaFile(version int64, b []byte) *metadata.MetaFiles {
	mf := metadata.MetaFile(version)
	if r.NameHashes {
		sum := sha256.Sum256(b)
		mf.Length, mf.Hashes = int64(len(b)), metadata.Hashes{"sha256": sum[:]}
	}
	return mf
}

// New serves a new repository over plain HTTP.
func New(t testing.TB) *Repo { t.Helper(); return newRepo(t, false) }

// NewTLS serves a new repository over HTTPS with httptest's self-signed certificate
// (Certificate), which no system root trusts.
func NewTLS(t testing.TB) *Repo { t.Helper(); return newRepo(t, true) }

// Certificate is the HTTPS server's certificate (nil over plain HTTP): a client
// trusts the repository by adding it to its roots.
func (r *Repo) Certificate() *x509.Certificate { return r.srv.Certificate() }

func newRepo(t testing.TB, tls bool) *Repo {
	t.Helper()
	exp := time.Now().Add(365 * 24 * time.Hour)
	r := &Repo{t: t, keys: map[string]ed25519.PrivateKey{}, files: map[string][]byte{}, hits: map[string]int{}, streams: map[string]int64{},
		root: metadata.Root(exp), targets: metadata.Targets(exp), snapshot: metadata.Snapshot(exp), timestamp: metadata.Timestamp(exp)}
	r.root.Signed.ConsistentSnapshot = true
	for _, role := range []string{"root", "targets", "snapshot", "timestamp"} {
		r.setKey(role)
	}
	if tls {
		r.srv = httptest.NewTLSServer(http.HandlerFunc(r.serve))
	} else {
		r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	}
	t.Cleanup(r.srv.Close)
	r.publishRoot()
	r.Publish()
	return r
}

func (r *Repo) setKey(role string) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		r.t.Fatal(err)
	}
	if old, ok := r.keys[role]; ok {
		k, _ := metadata.KeyFromPublicKey(old.Public())
		id, _ := k.ID()
		if err := r.root.Signed.RevokeKey(id, role); err != nil {
			r.t.Fatal(err)
		}
	}
	r.keys[role] = priv
	k, err := metadata.KeyFromPublicKey(priv.Public())
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.root.Signed.AddKey(k, role); err != nil {
		r.t.Fatal(err)
	}
}

func signer(t testing.TB, k ed25519.PrivateKey) signature.Signer {
	s, err := signature.LoadSigner(k, crypto.Hash(0))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (r *Repo) serve(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	b, ok := r.files[req.URL.Path]
	size, stream := r.streams[req.URL.Path]
	r.hits[req.URL.Path]++
	r.mu.Unlock()
	if stream {
		http.ServeContent(w, req, "", time.Time{}, &Pattern{Size: size})
		return
	}
	if !ok {
		http.NotFound(w, req)
		return
	}
	http.ServeContent(w, req, "", time.Time{}, strings.NewReader(string(b)))
}

// Put serves b at the URL path p (e.g. to tamper with a target).
func (r *Repo) Put(p string, b []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.files[p] = b
}

// Hits counts the requests for URL paths starting with prefix.
func (r *Repo) Hits(prefix string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for p, c := range r.hits {
		if strings.HasPrefix(p, prefix) {
			n += c
		}
	}
	return n
}

// MetadataURL is the metadata base URL.
func (r *Repo) MetadataURL() string { return r.srv.URL + "/metadata" }

// TargetsURL is the targets base URL.
func (r *Repo) TargetsURL() string { return r.srv.URL + "/targets" }

// publishRoot signs the current root (with the extra rotation signers) as its version.
func (r *Repo) publishRoot() {
	r.root.Signatures = nil
	for _, k := range append([]ed25519.PrivateKey{r.keys["root"]}, r.rootSigners...) {
		if _, err := r.root.Sign(signer(r.t, k)); err != nil {
			r.t.Fatal(err)
		}
	}
	r.rootSigners = nil
	b, err := r.root.ToBytes(false)
	if err != nil {
		r.t.Fatal(err)
	}
	r.Put(fmt.Sprintf("/metadata/%d.root.json", r.root.Signed.Version), b)
}

// RootBytes returns the published root of that version.
func (r *Repo) RootBytes(version int64) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.files[fmt.Sprintf("/metadata/%d.root.json", version)]
}

// RotateRoot replaces the root key: the new root is signed by the old and the new key.
func (r *Repo) RotateRoot() {
	r.rootSigners = []ed25519.PrivateKey{r.keys["root"]}
	r.setKey("root")
	r.root.Signed.Version++
	r.publishRoot()
}

type delegation struct {
	name  string
	paths []string
	key   ed25519.PrivateKey
	md    *metadata.Metadata[metadata.TargetsType]
}

// Delegate delegates paths (shell patterns, e.g. "models/*") from targets to a new role
// with its own key; later targets matching them are listed by that role. Call Publish.
func (r *Repo) Delegate(role string, paths ...string) {
	_, priv, err := ed25519.GenerateKey(nil)
	if err != nil {
		r.t.Fatal(err)
	}
	k, _ := metadata.KeyFromPublicKey(priv.Public())
	id, _ := k.ID()
	if r.targets.Signed.Delegations == nil {
		r.targets.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	}
	r.targets.Signed.Delegations.Keys[id] = k
	r.targets.Signed.Delegations.Roles = append(r.targets.Signed.Delegations.Roles, metadata.DelegatedRole{
		Name: role, KeyIDs: []string{id}, Threshold: 1, Terminating: true, Paths: paths})
	r.delegated = append(r.delegated, &delegation{name: role, paths: paths, key: priv,
		md: metadata.Targets(time.Now().Add(365 * 24 * time.Hour))})
}

// roleFor returns the delegated metadata listing targetPath, or targets.
func (r *Repo) roleFor(targetPath string) *metadata.Metadata[metadata.TargetsType] {
	for _, d := range r.delegated {
		for _, p := range d.paths {
			if ok, _ := path.Match(p, targetPath); ok {
				return d.md
			}
		}
	}
	return r.targets
}

// AddTarget lists data at targetPath (sha256 and sha512) with custom metadata and serves it.
func (r *Repo) AddTarget(targetPath string, data []byte, custom any) {
	s256, s512 := sha256.Sum256(data), sha512.Sum512(data)
	tf := &metadata.TargetFiles{Length: int64(len(data)), Hashes: metadata.Hashes{"sha256": s256[:], "sha512": s512[:]}, Path: targetPath}
	if custom != nil {
		b, _ := json.Marshal(custom)
		raw := json.RawMessage(b)
		tf.Custom = &raw
	}
	r.roleFor(targetPath).Signed.Targets[targetPath] = tf
	dir, base := path.Split(targetPath)
	for _, h := range [][]byte{s256[:], s512[:]} {
		r.Put("/targets/"+dir+hex.EncodeToString(h)+"."+base, data)
	}
}

// publish signs new versions of targets, snapshot and timestamp.
func (r *Repo) Publish() {
	r.targets.Signed.Version++
	r.snapshot.Signed.Version++
	r.timestamp.Signed.Version++
	r.targets.Signatures, r.snapshot.Signatures, r.timestamp.Signatures = nil, nil, nil
	r.targets.Sign(signer(r.t, r.keys["targets"]))
	tb, _ := r.targets.ToBytes(false)
	r.Put(fmt.Sprintf("/metadata/%d.targets.json", r.targets.Signed.Version), tb)
	r.snapshot.Signed.Meta["targets.json"] = r.metaFile(r.targets.Signed.Version, tb)
	for _, d := range r.delegated {
		d.md.Signed.Version++
		d.md.Signatures = nil
		if _, err := d.md.Sign(signer(r.t, d.key)); err != nil {
			r.t.Fatal(err)
		}
		b, _ := d.md.ToBytes(false)
		r.Put(fmt.Sprintf("/metadata/%d.%s.json", d.md.Signed.Version, d.name), b)
		r.snapshot.Signed.Meta[d.name+".json"] = r.metaFile(d.md.Signed.Version, b)
	}
	r.snapshot.Sign(signer(r.t, r.keys["snapshot"]))
	sb, _ := r.snapshot.ToBytes(false)
	r.Put(fmt.Sprintf("/metadata/%d.snapshot.json", r.snapshot.Signed.Version), sb)
	r.timestamp.Signed.Meta["snapshot.json"] = r.metaFile(r.snapshot.Signed.Version, sb)
	r.timestamp.Sign(signer(r.t, r.keys["timestamp"]))
	ts, _ := r.timestamp.ToBytes(false)
	r.Put("/metadata/timestamp.json", ts)
}

// AddModel publishes a model version of size bytes (deterministic pseudo-random content;
// 0 means 8 KiB) and returns its target path and content.
func (r *Repo) AddModel(name, version string, size int) (string, []byte) {
	p := artifact.TargetPath(artifact.KindModel, name, version, ".onnx")
	if size == 0 {
		size = 8 << 10
	}
	data := make([]byte, size)
	var seed [32]byte
	copy(seed[:], p)
	rand.NewChaCha8(seed).Read(data)
	r.AddTarget(p, data, artifact.Meta{Kind: artifact.KindModel, Name: name, Version: version, Format: "onnx"})
	r.Publish()
	return p, data
}

// Pattern is a seekable generated content of Size bytes (each 8-byte word is its own
// offset, little-endian), so large targets cost no memory to serve.
type Pattern struct {
	Size int64
	off  int64
}

// Read implements io.Reader.
func (p *Pattern) Read(b []byte) (int, error) {
	if p.off >= p.Size {
		return 0, io.EOF
	}
	if rem := p.Size - p.off; int64(len(b)) > rem {
		b = b[:rem]
	}
	for i := range b {
		o := p.off + int64(i)
		b[i] = byte(uint64(o&^7) >> (8 * (o & 7)))
	}
	p.off += int64(len(b))
	return len(b), nil
}

// Seek implements io.Seeker.
func (p *Pattern) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekCurrent:
		offset += p.off
	case io.SeekEnd:
		offset += p.Size
	}
	if offset < 0 {
		return 0, errors.New("negative offset")
	}
	p.off = offset
	return offset, nil
}

// AddPattern lists a model version of size generated bytes (sha256 only) and serves it
// without holding it in memory. It returns the target path.
func (r *Repo) AddPattern(name, version string, size int64) string {
	p := artifact.TargetPath(artifact.KindModel, name, version, ".onnx")
	h := sha256.New()
	if _, err := io.CopyBuffer(h, &Pattern{Size: size}, make([]byte, 1<<20)); err != nil {
		r.t.Fatal(err)
	}
	sum := h.Sum(nil)
	b, _ := json.Marshal(artifact.Meta{Kind: artifact.KindModel, Name: name, Version: version, Format: "onnx"})
	raw := json.RawMessage(b)
	r.roleFor(p).Signed.Targets[p] = &metadata.TargetFiles{Length: size, Hashes: metadata.Hashes{"sha256": sum}, Path: p, Custom: &raw}
	dir, base := path.Split(p)
	r.mu.Lock()
	r.streams["/targets/"+dir+hex.EncodeToString(sum)+"."+base] = size
	r.mu.Unlock()
	r.Publish()
	return p
}

// WriteBundle writes the repository as an offline bundle into dir: metadata/ and
// targets/ as served (generated Pattern targets excluded), then desired.json last.
func (r *Repo) WriteBundle(dir string, desired map[string]string) {
	r.mu.Lock()
	files := maps.Clone(r.files)
	r.mu.Unlock()
	for p, b := range files {
		dst := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			r.t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			r.t.Fatal(err)
		}
	}
	b, _ := json.Marshal(desired)
	if err := os.WriteFile(filepath.Join(dir, "desired.json"), b, 0o644); err != nil {
		r.t.Fatal(err)
	}
}
