package reposerver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
)

// This file is the hot path of TUF clients: GET /metadata/NAME, mostly timestamp.json
// revalidated with If-None-Match. Per request it does one map lookup and writes headers
// computed when the file was read; while the server runs (Serve) a directory watcher
// tells it when to look at the file again, otherwise it checks the file with one stat(2).

// validMetaName reports whether name is a metadata file's name: an optional version (1
// to 10 digits, no leading zero) and a dot, a role name (a lower-case letter, then at
// most 63 lower-case letters, digits, '_' or '-'), then ".json". It is the regular
// expression ^(?:[1-9][0-9]{0,9}\.)?[a-z][a-z0-9_-]{0,63}\.json$ (the tests check that),
// without its cost on every request for a file not cached (the next root version, asked
// for at every refresh).
func validMetaName(name string) bool {
	rest, ok := strings.CutSuffix(name, ".json")
	if !ok {
		return false
	}
	if v, role, ok := strings.Cut(rest, "."); ok {
		if len(v) > 10 || v == "" || v[0] == '0' {
			return false
		}
		for i := 0; i < len(v); i++ {
			if v[i] < '0' || v[i] > '9' {
				return false
			}
		}
		rest = role
	}
	if rest == "" || len(rest) > 64 || rest[0] < 'a' || rest[0] > 'z' {
		return false
	}
	for i := 1; i < len(rest); i++ {
		if c := rest[i]; (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// metadataRequest returns the file a request for GET or HEAD /metadata/NAME names, when
// NAME is a valid metadata file name as it is (no escapes): the request the mux would
// route to serveMetadata with that name. Anything else goes through the mux.
func (s *Server) metadataRequest(r *http.Request) (string, bool) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return "", false
	}
	name, ok := strings.CutPrefix(r.URL.Path, "/metadata/")
	if !ok || r.URL.RawPath != "" {
		return "", false
	}
	if s.meta.has(name) {
		return name, true // only valid names are ever cached
	}
	return name, validMetaName(name)
}

// serve is the server's handler: metadata and target requests directly, everything
// else through the mux.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if name, ok := s.metadataRequest(r); ok {
		s.serveMetadataFile(w, r, name)
		return
	}
	if p, ok := targetRequest(r); ok {
		s.serveTargetCounted(w, r, p)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// serveMetadata is the mux's handler for GET /metadata/{file}.
func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if !validMetaName(name) {
		writeError(w, http.StatusNotFound, "no such metadata file")
		s.metaCount.inc(http.StatusNotFound)
		return
	}
	s.serveMetadataFile(w, r, name)
}

// serveMetadataFile serves one metadata file (name is valid). Versioned files never
// change and are cached by clients forever; the others (timestamp.json) are revalidated
// with their ETag. A plain GET or one with only If-None-Match is answered from the
// headers prepared when the file was read; Range and the other conditional requests go
// through http.ServeContent.
func (s *Server) serveMetadataFile(w http.ResponseWriter, r *http.Request, name string) {
	f, err := s.meta.get(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			// Every TUF refresh asks for the next root version first, and gets this.
			h := w.Header()
			h["Content-Type"], h["Cache-Control"] = jsonType, noStore
			delete(h, "Etag")
			w.WriteHeader(http.StatusNotFound)
			w.Write(metaNotFound)
			s.metaCount.inc(http.StatusNotFound)
			return
		}
		s.log.Error("read metadata", "file", name, "err", err)
		writeError(w, http.StatusInternalServerError, "cannot read metadata")
		s.metaCount.inc(http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h["Etag"] = f.etagH
	h["Cache-Control"] = f.cacheH
	rh := r.Header
	if rh["Range"] != nil || rh["If-Match"] != nil || rh["If-Unmodified-Since"] != nil || rh["If-Modified-Since"] != nil || rh["If-Range"] != nil {
		h["Content-Type"] = jsonType
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		http.ServeContent(sw, r, "", f.mod, bytes.NewReader(f.data))
		s.metaCount.inc(sw.code)
		return
	}
	if inm := rh["If-None-Match"]; inm != nil && etagListMatch(inm, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		s.metaCount.inc(http.StatusNotModified)
		return
	}
	h["Content-Type"] = jsonType
	h["Last-Modified"] = f.modH
	h["Accept-Ranges"] = bytesRanges
	h["Content-Length"] = f.lengthH
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		w.Write(f.data)
	}
	s.metaCount.inc(http.StatusOK)
}

// Header values shared by every response: never modified in place (Header.Set and Add
// replace or copy a full slice).
var (
	jsonType    = []string{"application/json"}
	bytesRanges = []string{"bytes"}
	noStore     = []string{"no-store"}
	// metaNotFound is writeError's body for a metadata file that does not exist.
	metaNotFound = []byte(`{"error":"no such metadata file"}` + "\n")
)

// etagListMatch reports whether an If-None-Match header (its values, each a list) names
// etag, compared weakly as RFC 9110 says for If-None-Match, or is "*".
func etagListMatch(values []string, etag string) bool {
	for _, v := range values {
		for v != "" {
			var t string
			t, v, _ = strings.Cut(v, ",")
			t = strings.TrimSpace(t)
			if t == "*" || strings.TrimPrefix(t, "W/") == etag {
				return true
			}
		}
	}
	return false
}

// metaCacheControl is the Cache-Control of a metadata file: versioned files
// (N.role.json) never change; the others are revalidated.
func metaCacheControl(name string) string {
	if name == "timestamp.json" || !strings.Contains(strings.TrimSuffix(name, ".json"), ".") {
		return "no-cache"
	}
	return "public, max-age=31536000, immutable"
}

// metaCache keeps the metadata files served, by name, with their ETag and response
// headers. A file replaced by rename is served at once, whoever wrote it (this server's
// publish or refresh, a CLI ceremony, another replica), in one of two ways:
//
//   - unwatched (the server is not serving, or no watcher could be made): each entry is
//     checked against the file at every request (inode, size, mtime, with one stat(2));
//   - watched (watch runs): an entry checked in the current generation is served without
//     a system call. The generation moves on at every event of the directory's watcher
//     (inotify: a rename into it, a write, a removal, a lost event), when this server
//     changes the repository (changed, called as it releases the repository lock, before
//     any client can have seen the change), and once every recheck interval, for writers
//     a watcher does not see (another machine writing a shared network file system).
//     The next request of each file then checks it with one stat(2) as above.
//
// Bounded: it is emptied when it would hold more than maxEntries files or maxCacheBytes
// of content (any client may ask for every old version of a role, each up to the
// repository's role size limit). Safe for concurrent
// use; readers take no lock.
type metaCache struct {
	dir      string
	maxBytes int        // maxCacheBytes; tests set less
	mu       sync.Mutex // serialises writers
	entries  atomic.Pointer[map[string]*metaFile]
	watched  atomic.Bool
	gen      atomic.Uint64
	stats    atomic.Int64 // stat(2) calls, for tests
	// missing holds names found not to exist (the next root version, which every TUF
	// refresh asks for), checked as entries are. At most maxMissing, never emptied, so
	// requests for random names cannot make it churn: beyond it they are checked with
	// stat(2) each time.
	missing atomic.Pointer[map[string]*metaMiss]
}

type metaMiss struct {
	checked atomic.Uint64 // the generation in which the name was last seen missing
}

const maxMissing = 64

type metaFile struct {
	path string
	ino  uint64
	size int64
	mod  time.Time
	data []byte
	etag string
	// Header values, ready to assign.
	etagH, cacheH, modH, lengthH []string
	// quick200 and quick304 are quickMetadata's response heads up to the Date value.
	quick200, quick304 []byte
	// checked is the generation in which the file was last seen to be this entry.
	checked atomic.Uint64
}

const maxEntries = 1024

// maxCacheBytes bounds the content the cache holds: the current metadata of a large
// repository and many of its recent versions fit.
const maxCacheBytes = 64 << 20

// metaRecheck is how often a watched cache checks its files anyway.
const metaRecheck = time.Second

func newMetaCache(dir string) *metaCache {
	c := &metaCache{dir: dir, maxBytes: maxCacheBytes}
	c.entries.Store(&map[string]*metaFile{})
	c.missing.Store(&map[string]*metaMiss{})
	return c
}

func (c *metaCache) has(name string) bool {
	_, ok := (*c.entries.Load())[name]
	return ok
}

// changed makes every entry be checked against its file at its next request.
func (c *metaCache) changed() { c.gen.Add(1) }

// get returns the current content of the metadata file name (a valid name).
func (c *metaCache) get(name string) (*metaFile, error) {
	e := (*c.entries.Load())[name]
	gen := c.gen.Load() // before the stat: a change after it moves the generation on
	if c.watched.Load() {
		if e != nil && e.checked.Load() == gen {
			return e, nil
		}
		if m := (*c.missing.Load())[name]; e == nil && m != nil && m.checked.Load() == gen {
			return nil, fs.ErrNotExist
		}
	}
	path := ""
	if e != nil {
		path = e.path
	} else {
		path = filepath.Join(c.dir, name)
	}
	c.stats.Add(1)
	fi, err := os.Stat(path)
	if err != nil {
		if e == nil && errors.Is(err, fs.ErrNotExist) {
			c.noteMissing(name, gen)
		}
		return nil, err
	}
	ino := inode(fi)
	if e != nil && e.ino == ino && e.size == fi.Size() && e.mod.Equal(fi.ModTime()) {
		e.checked.Store(gen)
		return e, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	// The entry describes the file as stat saw it, so a rename between the stat and the
	// read shows as a different inode at the next check.
	e = &metaFile{path: path, ino: ino, size: fi.Size(), mod: fi.ModTime(), data: data, etag: etag,
		etagH: []string{etag}, cacheH: []string{metaCacheControl(name)},
		modH: []string{fi.ModTime().UTC().Format(http.TimeFormat)}, lengthH: []string{strconv.Itoa(len(data))}}
	e.quickHeads()
	if int64(len(data)) != fi.Size() {
		// Written in place while being read: serve what was read, and look again next
		// time.
		e.checked.Store(gen - 1)
	} else {
		e.checked.Store(gen)
	}
	c.mu.Lock()
	old := *c.entries.Load()
	next := make(map[string]*metaFile, len(old)+1)
	if len(old) < maxEntries {
		size := len(data)
		for k, v := range old {
			if k != name {
				size += len(v.data)
			}
		}
		if size <= c.maxBytes {
			for k, v := range old {
				next[k] = v
			}
		}
	}
	next[name] = e
	c.entries.Store(&next)
	c.mu.Unlock()
	return e, nil
}

// noteMissing records that name did not exist in generation gen.
func (c *metaCache) noteMissing(name string, gen uint64) {
	if m := (*c.missing.Load())[name]; m != nil {
		m.checked.Store(gen)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := *c.missing.Load()
	if len(old) >= maxMissing {
		return
	}
	next := make(map[string]*metaMiss, len(old)+1)
	for k, v := range old {
		next[k] = v
	}
	m := &metaMiss{}
	m.checked.Store(gen)
	next[name] = m
	c.missing.Store(&next)
}

// watch watches the cache's directory until ctx ends, serving entries without a stat
// meanwhile (see metaCache). It returns at once when no watcher can be made (inotify's
// limits reached), and the cache stays unwatched. ready, when not nil, is closed once
// the cache is watched or watch has given up.
func (c *metaCache) watch(ctx context.Context, log *slog.Logger, ready chan<- struct{}) {
	w, err := fsnotify.NewWatcher()
	if err == nil {
		if err = w.Add(c.dir); err != nil {
			w.Close()
		}
	}
	if err != nil {
		log.Warn("metadata directory not watched: every request checks its file", "dir", c.dir, "err", err)
		if ready != nil {
			close(ready)
		}
		return
	}
	defer w.Close()
	c.changed() // whatever happened before the watch began
	c.watched.Store(true)
	defer c.watched.Store(false)
	if ready != nil {
		close(ready)
	}
	t := time.NewTicker(metaRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-w.Events:
			if !ok {
				return
			}
			c.changed()
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			c.changed() // an overflow: events were lost
			log.Warn("metadata directory watcher", "err", err)
		case <-t.C:
			c.changed()
		}
	}
}

func inode(fi os.FileInfo) uint64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return uint64(st.Ino)
	}
	return 0
}

// codeCounter counts one route's requests by status code, each (route, code) counter
// resolved once rather than per request.
type codeCounter struct {
	vec    *prometheus.CounterVec
	route  string
	mu     sync.Mutex
	byCode atomic.Pointer[map[int]prometheus.Counter]
}

func newCodeCounter(vec *prometheus.CounterVec, route string) *codeCounter {
	c := &codeCounter{vec: vec, route: route}
	c.byCode.Store(&map[int]prometheus.Counter{})
	return c
}

func (c *codeCounter) inc(code int) {
	if ctr, ok := (*c.byCode.Load())[code]; ok {
		ctr.Inc()
		return
	}
	c.mu.Lock()
	old := *c.byCode.Load()
	ctr, ok := old[code]
	if !ok {
		ctr = c.vec.WithLabelValues(c.route, strconv.Itoa(code))
		next := make(map[int]prometheus.Counter, len(old)+1)
		for k, v := range old {
			next[k] = v
		}
		next[code] = ctr
		c.byCode.Store(&next)
	}
	c.mu.Unlock()
	ctr.Inc()
}
