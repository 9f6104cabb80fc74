package reposerver

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/repository"
)

// TestMetadataAnswersAsServeContent: every request for a metadata file gets the status,
// validators and body http.ServeContent would give for the same bytes and ETag, whether
// it takes the prepared path (plain GET, HEAD, If-None-Match) or not (Range and the other
// conditionals), through the server's handler, Restrict, or the mux (an escaped name).
func TestMetadataAnswersAsServeContent(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	file := filepath.Join(f.repo.MetadataDir(), "timestamp.json")
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	fi, _ := os.Stat(file)
	etag := f.srv.meta.mustGet(t, "timestamp.json").etag
	ref := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("ETag", etag)
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeContent(w, r, "", fi.ModTime(), bytes.NewReader(data))
	})
	future := fi.ModTime().Add(time.Hour).UTC().Format(http.TimeFormat)
	past := fi.ModTime().Add(-time.Hour).UTC().Format(http.TimeFormat)
	handlers := map[string]http.Handler{"Handler": f.srv.Handler(), "Restrict": f.srv.Restrict(Exposure{}, "")}
	for _, tc := range []struct {
		name, method string
		hdr          []string
		want         int
	}{
		{"GET", "GET", nil, 200},
		{"HEAD", "HEAD", nil, 200},
		{"If-None-Match", "GET", []string{"If-None-Match", etag}, 304},
		{"If-None-Match weak in a list", "GET", []string{"If-None-Match", `"x", W/` + etag}, 304},
		{"If-None-Match *", "GET", []string{"If-None-Match", "*"}, 304},
		{"If-None-Match other", "GET", []string{"If-None-Match", `"0123"`}, 200},
		{"HEAD If-None-Match", "HEAD", []string{"If-None-Match", etag}, 304},
		{"Range", "GET", []string{"Range", "bytes=0-9"}, 206},
		{"Range not satisfiable", "GET", []string{"Range", "bytes=999999-"}, 416},
		{"If-Modified-Since later", "GET", []string{"If-Modified-Since", future}, 304},
		{"If-Modified-Since earlier", "GET", []string{"If-Modified-Since", past}, 200},
		{"If-Match other", "GET", []string{"If-Match", `"0123"`}, 412},
		{"If-Match", "GET", []string{"If-Match", etag}, 200},
	} {
		for hname, h := range handlers {
			for _, path := range []string{"/metadata/timestamp.json", "/metadata/%74imestamp.json"} {
				req := httptest.NewRequest(tc.method, path, nil)
				for i := 0; i+1 < len(tc.hdr); i += 2 {
					req.Header.Set(tc.hdr[i], tc.hdr[i+1])
				}
				got, want := httptest.NewRecorder(), httptest.NewRecorder()
				h.ServeHTTP(got, req)
				ref.ServeHTTP(want, req)
				where := tc.name + " through " + hname + " " + path
				if got.Code != tc.want || want.Code != tc.want {
					t.Errorf("%s: status %d (ServeContent %d); want %d", where, got.Code, want.Code, tc.want)
					continue
				}
				if !bytes.Equal(got.Body.Bytes(), want.Body.Bytes()) {
					t.Errorf("%s: body %q; ServeContent's %q", where, got.Body.Bytes(), want.Body.Bytes())
				}
				for _, k := range []string{"Content-Type", "Content-Length", "ETag", "Last-Modified", "Cache-Control", "Accept-Ranges", "Content-Range"} {
					if g, w := got.Header().Get(k), want.Header().Get(k); g != w {
						t.Errorf("%s: %s %q; ServeContent's %q", where, k, g, w)
					}
				}
			}
		}
	}
}

func (c *metaCache) mustGet(t *testing.T, name string) *metaFile {
	t.Helper()
	e, err := c.get(name)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// TestMetadataCacheFollowsTheDirectory: the cached file is replaced as soon as another
// writer (a CLI ceremony, another replica) renames a new one over it or removes it;
// invalid names never reach the disk; metrics count each answer.
func TestMetadataCacheFollowsTheDirectory(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	h := f.srv.Handler()
	get := func(name string, hdr ...string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/metadata/"+name, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	first := get("timestamp.json")
	etag := first.Header().Get("ETag")
	file := filepath.Join(f.repo.MetadataDir(), "timestamp.json")
	old, _ := os.ReadFile(file)
	for i, next := range [][]byte{[]byte(`{"next":1}`), []byte(`{"next":2}`), old} {
		if err := durable.WriteFile(file, next, 0o644); err != nil {
			t.Fatal(err)
		}
		r := get("timestamp.json", "If-None-Match", etag)
		wantCode := 200
		if i == 2 {
			wantCode = 304 // back to the first content: its ETag again
		}
		if r.Code != wantCode || (wantCode == 200 && r.Body.String() != string(next)) {
			t.Fatalf("after writer %d: %d %q; want %d with the new file", i, r.Code, r.Body.String(), wantCode)
		}
	}
	if err := os.Rename(file, file+".away"); err != nil {
		t.Fatal(err)
	}
	if r := get("timestamp.json"); r.Code != 404 {
		t.Errorf("after removal: %d; want 404", r.Code)
	}
	os.Rename(file+".away", file)
	for _, bad := range []string{"TIMESTAMP.json", "0.root.json", "x", "root", ".json", "1.root.json.tmp", "a/b.json"} {
		if r := get(bad); r.Code != 404 {
			t.Errorf("GET /metadata/%s = %d; want 404", bad, r.Code)
		}
		if f.srv.meta.has(bad) {
			t.Errorf("%q was cached", bad)
		}
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	body, _ := io.ReadAll(rec.Body)
	for _, want := range []string{`edgeward_repo_http_requests_total{code="200",route="metadata"} 3`, `edgeward_repo_http_requests_total{code="304",route="metadata"} 1`, `edgeward_repo_http_requests_total{code="404",route="metadata"} 7`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q:\n%s", want, body)
		}
	}
}

// BenchmarkMetadata is the server's own work per metadata request (no network): a GET
// of timestamp.json and its revalidation, through Restrict as `edgeward server` serves.
//
//	go test -run '^$' -bench Metadata -benchmem ./repo-server
func BenchmarkMetadata(b *testing.B) {
	f := newFixture(b, repository.KeyEd25519)
	h := f.srv.Restrict(Exposure{}, "")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metadata/timestamp.json", nil))
	etag := rec.Header().Get("ETag")
	for _, bc := range []struct{ name, inm string }{{"GET", ""}, {"If-None-Match", etag}} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/metadata/timestamp.json", nil)
			if bc.inm != "" {
				req.Header.Set("If-None-Match", bc.inm)
			}
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
			}
		})
	}
}

// discardWriter is the cheapest http.ResponseWriter: what a benchmark measures is the
// handler.
type discardWriter struct {
	h    http.Header
	code int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) WriteHeader(code int)        { w.code = code }
func (w *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
