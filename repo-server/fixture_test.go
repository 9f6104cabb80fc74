package reposerver

import (
	"bytes"
	"context"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/edgeward/edgeward/repository"
)

const testPass = "correct horse battery staple"

// fakeClock is a settable clock shared by the repository and the TUF client; after
// useReal it is the real clock.
type fakeClock struct {
	mu   sync.Mutex
	t    time.Time
	real bool
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.real {
		return time.Now()
	}
	return c.t
}
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }
func (c *fakeClock) useReal()            { c.mu.Lock(); c.real = true; c.mu.Unlock() }

type fixture struct {
	t      testing.TB
	repo   *repository.Repo
	srv    *Server
	http   *httptest.Server
	clock  *fakeClock
	keys   map[string][]string // role → key files from Init
	root1  []byte              // the root a client pins
	offDir string
	db     string // the server's database (DBLocation): "" is sqlite in the repository
}

func newFixture(t testing.TB, kt repository.KeyType) *fixture {
	t.Helper()
	return newFixtureOn(t, kt, testDB(t))
}

// testDB is the server database the fixtures give a test: sqlite in the repository
// directory (""), or with EDGEWARD_TEST_POSTGRES=1 a fresh PostgreSQL database of the
// test binary's cluster, so that every test of the package runs on the second backend:
//
//	EDGEWARD_TEST_POSTGRES=1 go test ./repo-server
func testDB(t testing.TB) string {
	if os.Getenv("EDGEWARD_TEST_POSTGRES") == "1" {
		return pg.Database(t)
	}
	return ""
}

// newFixtureOn is newFixture with the server's database at db (DBLocation: a
// PostgreSQL URL, or "" for sqlite in the repository directory).
func newFixtureOn(t testing.TB, kt repository.KeyType, db string) *fixture {
	t.Helper()
	clock := &fakeClock{t: time.Now().UTC().Truncate(time.Second)}
	dir := t.TempDir()
	res, err := repository.Init(context.Background(), repository.Config{Dir: dir, Now: clock.Now, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir, DB: db, Now: clock.Now}}, repository.InitOptions{
		KeyType: kt, Passphrase: []byte(testPass),
	})
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	srv, err := NewServer(ServerConfig{Repo: res.Repo, DB: db})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	root1, err := os.ReadFile(filepath.Join(res.Repo.MetadataDir(), "1.root.json"))
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{t: t, repo: res.Repo, srv: srv, http: hs, clock: clock, keys: res.KeyFiles, root1: root1, offDir: res.Repo.OfflineKeyDir(), db: db}
}

func (f *fixture) keyring(files ...string) *repository.KeyRing {
	return &repository.KeyRing{Files: files, Passphrase: func() ([]byte, error) { return []byte(testPass), nil }}
}

func (f *fixture) publish(kind artifact.Kind, name, version, ext string, content []byte, mod func(*repository.PublishRequest)) (*repository.PublishResult, error) {
	req := repository.PublishRequest{
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

// errReader fails every read with err.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
