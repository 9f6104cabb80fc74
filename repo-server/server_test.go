package reposerver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repository"
)

func TestServerRefreshesExpiringTimestamp(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	c := f.newClient()
	c.mustRefresh()

	// 20 hours later the one-day timestamp has less than half its life left.
	f.clock.Add(20 * time.Hour)
	late := f.newClient() // a client living 10 hours after that
	f.clock.Add(10 * time.Hour)
	if _, err := late.refresh(); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("refresh with an expired timestamp = %v; want an expiry error", err)
	}
	f.clock.Add(-10 * time.Hour)
	f.srv.RefreshOnce(context.Background())
	f.clock.Add(10 * time.Hour)
	up := c.mustRefresh()
	if v := up.GetTrustedMetadataSet().Timestamp.Signed.Version; v != 2 {
		t.Fatalf("timestamp version after refresh = %d; want 2", v)
	}
	// Six days later the snapshot needs re-signing too.
	f.clock.Add(6 * 24 * time.Hour)
	f.srv.RefreshOnce(context.Background())
	up = c.mustRefresh()
	if v := up.GetTrustedMetadataSet().Snapshot.Signed.Version; v != 2 {
		t.Fatalf("snapshot version after refresh = %d; want 2", v)
	}
	// A refresh with nothing due changes nothing.
	renewed, err := f.repo.Refresh(context.Background())
	if err != nil || len(renewed) != 0 {
		t.Fatalf("Refresh with nothing due = %v, %v; want nothing renewed", renewed, err)
	}
}

func TestServerHTTP(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	content := bytes.Repeat([]byte("0123456789"), 100)
	res, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", content, nil)
	if err != nil {
		t.Fatal(err)
	}
	get := func(path string, hdr ...string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest("GET", f.http.URL+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return resp
	}
	ts := get("/metadata/timestamp.json")
	etag := ts.Header.Get("ETag")
	if ts.StatusCode != 200 || etag == "" || ts.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("timestamp: %d etag %q cache %q", ts.StatusCode, etag, ts.Header.Get("Cache-Control"))
	}
	if r := get("/metadata/timestamp.json", "If-None-Match", etag); r.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match current etag = %d; want 304", r.StatusCode)
	}
	f.srv.RefreshOnce(context.Background()) // nothing due: same file
	f.clock.Add(20 * time.Hour)
	f.srv.RefreshOnce(context.Background()) // re-signed: new etag
	if r := get("/metadata/timestamp.json", "If-None-Match", etag); r.StatusCode != 200 || r.Header.Get("ETag") == etag {
		t.Fatalf("If-None-Match after re-signing = %d (etag %q); want 200 with a new etag", r.StatusCode, r.Header.Get("ETag"))
	}
	if r := get("/metadata/1.root.json"); r.StatusCode != 200 || !strings.Contains(r.Header.Get("Cache-Control"), "immutable") {
		t.Fatalf("1.root.json: %d %q", r.StatusCode, r.Header.Get("Cache-Control"))
	}

	url := "/targets/" + repository.ConsistentTargetPath(res.Path, res.SHA256)
	r := get(url, "Range", "bytes=10-19")
	body, _ := io.ReadAll(r.Body)
	if r.StatusCode != http.StatusPartialContent || string(body) != "0123456789" {
		t.Fatalf("Range 10-19 = %d %q; want 206 and the bytes", r.StatusCode, body)
	}
	r = get(url)
	body, _ = io.ReadAll(r.Body)
	if r.StatusCode != 200 || !bytes.Equal(body, content) {
		t.Fatalf("target = %d, %d bytes", r.StatusCode, len(body))
	}

	for _, bad := range []string{
		"/metadata/../edgeward-repo.json", "/metadata/..%2Fedgeward-repo.json", "/metadata/root", "/metadata/1.root.json.tmp",
		"/targets/models/iris/1.0.0.onnx", "/targets/models/iris/" + strings.Repeat("0", 64) + ".1.0.0.onnx",
		"/targets/../blobs/sha256/" + res.SHA256, "/metadata/999.root.json",
	} {
		if r := get(bad); r.StatusCode != http.StatusNotFound && r.StatusCode != http.StatusBadRequest && r.StatusCode != http.StatusMovedPermanently {
			t.Errorf("GET %s = %d; want 404", bad, r.StatusCode)
		}
	}
	if r := get("/healthz"); r.StatusCode != 200 {
		t.Fatalf("healthz = %d", r.StatusCode)
	}
	r = get("/metrics")
	body, _ = io.ReadAll(r.Body)
	for _, want := range []string{`edgeward_tuf_metadata_version{role="models"} 2`, `edgeward_repo_http_requests_total{code="206",route="targets"} 1`, `edgeward_tuf_refresh_total{result="renewed"} 1`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Expired online metadata makes the server unhealthy.
	f.clock.Add(48 * time.Hour)
	if r := get("/healthz"); r.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("healthz with expired timestamp = %d; want 503", r.StatusCode)
	}
}

// TestCacheHeaders: what a mirror or CDN in front of the server may cache (OPERATORS.md,
// "A CDN or static mirror"): consistent-snapshot metadata and content-addressed targets
// forever; timestamp.json and unversioned names only after revalidating; errors never.
func TestCacheHeaders(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	res, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("model bytes"), nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	const immutable, revalidate, never = "public, max-age=31536000, immutable", "no-cache", "no-store"
	tests := []struct {
		path  string
		code  int
		cache string
	}{
		{"/metadata/timestamp.json", 200, revalidate},
		{"/metadata/1.root.json", 200, immutable},
		{fmt.Sprintf("/metadata/%d.snapshot.json", st.Snapshot.Signed.Version), 200, immutable},
		{fmt.Sprintf("/metadata/%d.targets.json", st.Targets["targets"].Signed.Version), 200, immutable},
		{fmt.Sprintf("/metadata/%d.models.json", res.Version), 200, immutable},
		{"/targets/" + repository.ConsistentTargetPath(res.Path, res.SHA256), 200, immutable},
		{"/metadata/2.root.json", 404, never}, // the next root, asked for at every refresh
		{"/metadata/999.models.json", 404, never},
		{"/targets/models/iris/" + strings.Repeat("0", 64) + ".1.0.0.onnx", 404, never},
		{"/targets/models/iris/1.0.0.onnx", 404, never},
	}
	for _, tt := range tests {
		resp, err := http.Get(f.http.URL + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.code || resp.Header.Get("Cache-Control") != tt.cache {
			t.Errorf("GET %s = %d, Cache-Control %q; want %d, %q", tt.path, resp.StatusCode, resp.Header.Get("Cache-Control"), tt.code, tt.cache)
		}
	}
	// Unversioned names of versioned roles (what a client without consistent snapshots
	// would ask for) change with every version: revalidate.
	entries, _ := os.ReadDir(f.repo.MetadataDir())
	for _, e := range entries {
		name := e.Name()
		if strings.Contains(strings.TrimSuffix(name, ".json"), ".") || !strings.HasSuffix(name, ".json") {
			continue
		}
		resp, err := http.Get(f.http.URL + "/metadata/" + name)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode == 200 && resp.Header.Get("Cache-Control") != revalidate {
			t.Errorf("GET /metadata/%s: Cache-Control %q; want %q", name, resp.Header.Get("Cache-Control"), revalidate)
		}
	}
}

func TestEventsRecorded(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	if _, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, db, err := OpenAuditAt(ctx, f.repo, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ev, err := l.Records(ctx, audit.Query{})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range ev {
		kinds = append(kinds, e.Kind+" "+e.Subject)
	}
	if got := strings.Join(kinds, ","); got != "repo.init "+f.repo.Dir()+",repo.publish models/iris/1.0.0.onnx" {
		t.Fatalf("audit records = %s", got)
	}
	var buf bytes.Buffer
	if err := l.Export(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	if _, err := audit.Verify(&buf, audit.VerifyOptions{LogKey: l.Verifier()}); err != nil {
		t.Fatalf("verify the repository's audit export: %v", err)
	}
}

// TestServerRenewsDelegatedRoles: a server holding the delegated keys (--sign-delegated)
// renews models and runtimes past half their lifetime, beside the timestamp; one that
// does not hold them leaves them to their holders. The targets role is never renewed
// here (its key is not the server's).
func TestServerRenewsDelegatedRoles(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, repository.KeyEd25519)
	version := func(role string) int64 {
		t.Helper()
		st, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Targets[role].Signed.Version
	}
	models, targets := version(repository.RoleModels), version("targets")
	life := f.repo.Expiry().RoleLife(repository.RoleModels)
	f.clock.Add(life/2 + time.Hour)
	f.srv.RefreshOnce(ctx)
	if v := version(repository.RoleModels); v != models {
		t.Fatalf("models version %d after a refresh without the delegated keys; want %d", v, models)
	}
	kr := f.keyring()
	kr.Roles = repository.DelegatedAndOnlineRoles()
	f.srv.cfg.Renew = kr
	f.srv.RefreshOnce(ctx)
	if v := version(repository.RoleModels); v != models+1 {
		t.Errorf("models version %d after a refresh with the delegated keys; want %d", v, models+1)
	}
	if v := version("targets"); v != targets {
		t.Errorf("targets version %d; want %d (not the server's to renew)", v, targets)
	}
	c := f.newClient()
	c.mustRefresh()
}
