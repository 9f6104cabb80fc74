package reposerver

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// This file is the hot path of TUF clients: GET /metadata/NAME, mostly timestamp.json
// revalidated with If-None-Match. Per request it does one map lookup, one stat(2) of
// the file, and writes headers computed when the file was read.

var metaNameRE = regexp.MustCompile(`^(?:[1-9][0-9]{0,9}\.)?[a-z][a-z0-9_-]{0,63}\.json$`)

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
	return name, metaNameRE.MatchString(name)
}

// serve is the server's handler: metadata requests directly, everything else through
// the mux.
func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	if name, ok := s.metadataRequest(r); ok {
		s.serveMetadataFile(w, r, name)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// serveMetadata is the mux's handler for GET /metadata/{file}.
func (s *Server) serveMetadata(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("file")
	if !metaNameRE.MatchString(name) {
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
		code, msg := http.StatusNotFound, "no such metadata file"
		if !errors.Is(err, os.ErrNotExist) {
			s.log.Error("read metadata", "file", name, "err", err)
			code, msg = http.StatusInternalServerError, "cannot read metadata"
		}
		writeError(w, code, msg)
		s.metaCount.inc(code)
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
// headers. Each entry is checked against the file at every request (inode, size, mtime,
// with one stat(2)), so a file replaced by rename is read again at once, whoever wrote it
// (this server's publish or refresh, a CLI ceremony, another replica). Bounded: it is
// emptied when it holds more than maxEntries files. Safe for concurrent use; readers
// take no lock.
type metaCache struct {
	dir     string
	mu      sync.Mutex // serialises writers
	entries atomic.Pointer[map[string]*metaFile]
}

type metaFile struct {
	path string
	ino  uint64
	size int64
	mod  time.Time
	data []byte
	etag string
	// Header values, ready to assign.
	etagH, cacheH, modH, lengthH []string
}

const maxEntries = 1024

func newMetaCache(dir string) *metaCache {
	c := &metaCache{dir: dir}
	c.entries.Store(&map[string]*metaFile{})
	return c
}

func (c *metaCache) has(name string) bool {
	_, ok := (*c.entries.Load())[name]
	return ok
}

// get returns the current content of the metadata file name (a valid name).
func (c *metaCache) get(name string) (*metaFile, error) {
	e := (*c.entries.Load())[name]
	path := ""
	if e != nil {
		path = e.path
	} else {
		path = filepath.Join(c.dir, name)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	ino := inode(fi)
	if e != nil && e.ino == ino && e.size == fi.Size() && e.mod.Equal(fi.ModTime()) {
		return e, nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(data)
	etag := `"` + hex.EncodeToString(sum[:16]) + `"`
	e = &metaFile{path: path, ino: ino, size: int64(len(data)), mod: fi.ModTime(), data: data, etag: etag,
		etagH: []string{etag}, cacheH: []string{metaCacheControl(name)},
		modH: []string{fi.ModTime().UTC().Format(http.TimeFormat)}, lengthH: []string{strconv.Itoa(len(data))}}
	c.mu.Lock()
	old := *c.entries.Load()
	next := make(map[string]*metaFile, len(old)+1)
	if len(old) < maxEntries {
		for k, v := range old {
			next[k] = v
		}
	}
	next[name] = e
	c.entries.Store(&next)
	c.mu.Unlock()
	return e, nil
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
