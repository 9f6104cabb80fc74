package reposerver

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
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
	handlers := map[string]http.Handler{"Handler": f.srv.Handler(), "Restrict": f.srv.Restrict(Exposure{}, "", "")}
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

// FuzzMetaName: validMetaName is the regular expression it documents.
func FuzzMetaName(f *testing.F) {
	re := regexp.MustCompile(`^(?:[1-9][0-9]{0,9}\.)?[a-z][a-z0-9_-]{0,63}\.json$`)
	for _, s := range []string{"timestamp.json", "1.root.json", "1234567890.models.json", "12345678901.root.json", "0.root.json",
		"01.root.json", "1..json", ".json", "1.json", "a.json", "a-_9.json", "A.json", "root", "1.root.json.tmp", "1.a.b.json",
		"a/b.json", "1.root.JSON", "x" + strings.Repeat("a", 63) + ".json", "x" + strings.Repeat("a", 64) + ".json", "é.json", "1.é.json"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validMetaName(s), re.MatchString(s); got != want {
			t.Errorf("validMetaName(%q) = %v; the expression says %v", s, got, want)
		}
	})
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
	if r := get("timestamp.json"); r.Code != 404 || r.Body.String() != `{"error":"no such metadata file"}`+"\n" ||
		r.Header().Get("Content-Type") != "application/json" || r.Header().Get("Cache-Control") != "no-store" || r.Header().Get("ETag") != "" {
		t.Errorf("after removal: %d %q %v; want writeError's 404, never cached", r.Code, r.Body.String(), r.Header())
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

// TestMetadataWatched: while the server serves (its directory watcher runs), a cached
// file is served without a system call; a file another process renames into place is
// served as soon as the watcher sees it; a change this server makes is served at its
// next answer, before any watcher event.
func TestMetadataWatched(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	c := f.srv.meta
	h := f.srv.Restrict(Exposure{}, "", "")
	getName := func(name, inm string) *httptest.ResponseRecorder {
		req := httptest.NewRequest("GET", "/metadata/"+name, nil)
		if inm != "" {
			req.Header.Set("If-None-Match", inm)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	get := func(inm string) *httptest.ResponseRecorder { return getName("timestamp.json", inm) }
	eventually := func(what string, ok func() bool) {
		t.Helper()
		start := time.Now()
		for !ok() {
			if time.Since(start) > 3*metaRecheck {
				t.Fatalf("%s: not served after %v", what, time.Since(start))
			}
			time.Sleep(time.Millisecond)
		}
		t.Logf("%s: served %v after", what, time.Since(start))
	}
	file := filepath.Join(f.repo.MetadataDir(), "timestamp.json")
	onDisk := func() string {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ready, done := make(chan struct{}), make(chan struct{})
	go func() { c.watch(ctx, slog.New(slog.DiscardHandler), ready); close(done) }()
	<-ready
	if !c.watched.Load() {
		t.Fatal("the metadata directory is not watched (inotify limits?)")
	}
	first := get("")
	etag := first.Header().Get("ETag")
	stats := c.stats.Load()
	for range 200 {
		if r := get(""); r.Code != 200 || r.Body.String() != first.Body.String() {
			t.Fatalf("GET: %d", r.Code)
		}
		if r := get(etag); r.Code != 304 {
			t.Fatalf("If-None-Match: %d", r.Code)
		}
	}
	// A recheck tick may fall inside the loop.
	if n := c.stats.Load() - stats; n > 2 {
		t.Errorf("400 requests of a watched, unchanged file made %d stat calls", n)
	}

	// Another process (a CLI publish) renames a new timestamp.json into place.
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("one"), nil); err != nil {
		t.Fatal(err)
	}
	want := onDisk()
	eventually("timestamp.json published by another process", func() bool {
		r := get(etag)
		return r.Code == 200 && r.Body.String() == want
	})

	// The next root version, asked for at every refresh: 404 without a stat while
	// nothing changes, served once a rotation renames it into place.
	stats = c.stats.Load()
	for range 100 {
		if r := getName("2.root.json", ""); r.Code != 404 || r.Header().Get("Cache-Control") != "no-store" {
			t.Fatalf("next root: %d %v", r.Code, r.Header())
		}
	}
	if n := c.stats.Load() - stats; n > 3 {
		t.Errorf("100 requests of a watched missing file made %d stat calls", n)
	}
	if err := durable.WriteFile(filepath.Join(f.repo.MetadataDir(), "2.root.json"), []byte(`{"two":2}`), 0o644); err != nil {
		t.Fatal(err)
	}
	eventually("2.root.json renamed into place", func() bool {
		r := getName("2.root.json", "")
		return r.Code == 200 && r.Body.String() == `{"two":2}`
	})
	if err := os.Remove(filepath.Join(f.repo.MetadataDir(), "2.root.json")); err != nil { // not a root the repository can load
		t.Fatal(err)
	}
	eventually("2.root.json removed", func() bool { return getName("2.root.json", "").Code == 404 })
	// Requests for random names do not grow what is remembered missing past its bound.
	for i := range 2 * maxMissing {
		if r := getName(fmt.Sprintf("%d.nothing.json", i+1), ""); r.Code != 404 {
			t.Fatalf("%d.nothing.json: %d", i+1, r.Code)
		}
	}
	if n := len(*c.missing.Load()); n > maxMissing {
		t.Errorf("%d names remembered missing; at most %d", n, maxMissing)
	}

	// Without the watcher's events, only this server's own changes are seen before a
	// recheck: the cache looks at no file meanwhile.
	cancel()
	<-done
	if c.watched.Load() {
		t.Fatal("still watched after the watcher stopped")
	}
	c.watched.Store(true) // as if watched, with no events and no ticks
	served := get("").Body.String()
	if _, err := f.publish(artifact.KindModel, "m", "1.0.1", ".onnx", []byte("two"), nil); err != nil {
		t.Fatal(err)
	}
	if r := get(""); r.Body.String() != served || onDisk() == served {
		t.Fatalf("a watched entry was checked against its file without an event (or the publish changed nothing)")
	}
	_, err := f.srv.cfg.Repo.Publish(context.Background(), repository.PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.2", Format: "onnx"}, Ext: ".onnx",
		Content: strings.NewReader("three")}, f.keyring())
	if err != nil {
		t.Fatal(err)
	}
	if r, want := get(""), onDisk(); r.Code != 200 || r.Body.String() != want || r.Body.String() == served {
		t.Fatalf("after this server's publish: %d %q; want the new file %q", r.Code, r.Body.String(), want)
	}
}

// BenchmarkMetadata is the server's own work per metadata request (no network): a GET
// of timestamp.json, its revalidation and the next root version's 404 (the first
// request of every TUF refresh), through Restrict as `edgeward server` serves. Watched
// is how a serving server answers (its directory watcher runs); Unwatched checks the
// file with stat(2) at every request.
//
//	go test -run '^$' -bench Metadata -benchmem ./repo-server
func BenchmarkMetadata(b *testing.B) {
	b.Run("Watched", func(b *testing.B) { benchmarkMetadata(b, true) })
	b.Run("Unwatched", func(b *testing.B) { benchmarkMetadata(b, false) })
}

func benchmarkMetadata(b *testing.B, watched bool) {
	f := newFixture(b, repository.KeyEd25519)
	if watched {
		ready := make(chan struct{})
		go f.srv.meta.watch(b.Context(), slog.New(slog.DiscardHandler), ready)
		<-ready
		if !f.srv.meta.watched.Load() {
			b.Fatal("not watched")
		}
	}
	h := f.srv.Restrict(Exposure{}, "", "")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metadata/timestamp.json", nil))
	etag := rec.Header().Get("ETag")
	for _, bc := range []struct{ name, path, inm string }{{"GET", "timestamp.json", ""}, {"If-None-Match", "timestamp.json", etag}, {"NextRoot404", "2.root.json", ""}} {
		b.Run(bc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/metadata/"+bc.path, nil)
			if bc.inm != "" {
				req.Header.Set("If-None-Match", bc.inm)
			}
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			cpu0, n := cpuTime(b), 0
			for b.Loop() {
				clear(w.h)
				h.ServeHTTP(w, req)
				n++
			}
			b.ReportMetric(float64((cpuTime(b)-cpu0).Nanoseconds())/float64(max(n, 1)), "cpu-ns/op")
		})
	}
}

// cpuTime is the process's user + system CPU time: on a loaded machine wall time
// measures the queue for a core, CPU time still measures the work.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

// TestMetadataCacheBoundedInBytes: the cache is emptied before it would hold more than
// its byte budget, so clients asking for every old version of a large role cannot make
// it hold them all; within the budget, files stay cached together.
func TestMetadataCacheBoundedInBytes(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"1.targets.json", "2.targets.json", "3.targets.json"} {
		if err := os.WriteFile(filepath.Join(dir, name), bytes.Repeat([]byte("x"), 60), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	c := newMetaCache(dir)
	c.maxBytes = 130 // two files, not three
	for _, name := range []string{"1.targets.json", "2.targets.json"} {
		c.mustGet(t, name)
	}
	if !c.has("1.targets.json") || !c.has("2.targets.json") {
		t.Fatal("two files within the budget are not both cached")
	}
	c.mustGet(t, "3.targets.json")
	held := 0
	for _, e := range *c.entries.Load() {
		held += len(e.data)
	}
	if held > c.maxBytes || !c.has("3.targets.json") {
		t.Fatalf("after a third file the cache holds %d bytes (budget %d), the third cached %v", held, c.maxBytes, c.has("3.targets.json"))
	}
}
