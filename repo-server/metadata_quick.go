package reposerver

import (
	"bytes"
	"errors"
	"io/fs"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/edgeward/edgeward/internal/quickhttp"
)

// The plain listener's metadata GETs are answered by quickhttp, without net/http's
// per-request machinery: what a fleet revalidating timestamp.json costs the server is
// then close to what nginx's costs (docs/BENCHMARKS.md, section 3). Everything else
// reaching that listener, and everything on the TLS listener, goes through net/http.

const (
	// readHeaderTimeout and idleTimeout are every listener's, net/http's or quickhttp's.
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
)

// QuickListener serves ln's GET /metadata/NAME requests itself and hands every other
// request, with the rest of its connection, to whatever Serve's ln it is given to. ln must
// be a plain TCP listener (not TLS): the answers are those of serveMetadataFile, byte for
// byte but for the Date (TestQuickMetadataAnswersAsNetHTTP).
func (s *Server) QuickListener(ln net.Listener) net.Listener {
	return quickhttp.Listen(ln, s.quickMetadata, quickhttp.Config{
		HeaderTimeout: readHeaderTimeout, IdleTimeout: idleTimeout,
		AcceptError: func(err error) { s.log.Warn("accept", "err", err) },
	})
}

// quickMetadata is QuickListener's responder: a metadata file, its 304 or its 404, as
// serveMetadataFile answers them; anything it does not answer (not a metadata file's
// name, a read error) is net/http's.
func (s *Server) quickMetadata(dst []byte, r *quickhttp.Request, date []byte) (head, body []byte, ok bool) {
	p, ok := bytes.CutPrefix(r.Path, []byte("/metadata/"))
	if !ok {
		return nil, nil, false
	}
	f, missing := s.meta.fresh(p)
	if f == nil && !missing {
		name := string(p)
		if !s.meta.has(name) && !validMetaName(name) {
			return nil, nil, false
		}
		var err error
		if f, err = s.meta.get(name); err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				return nil, nil, false // net/http logs it and answers 500
			}
			missing = true
		}
	}
	if missing {
		dst = append(dst, "HTTP/1.1 404 Not Found\r\nCache-Control: no-store\r\nContent-Type: application/json\r\nDate: "...)
		dst = append(dst, date...)
		dst = append(dst, "\r\nContent-Length: "...)
		dst = strconv.AppendInt(dst, int64(len(metaNotFound)), 10)
		dst = append(dst, "\r\n\r\n"...)
		s.metaCount.inc(http.StatusNotFound)
		return dst, metaNotFound, true
	}
	code, head := http.StatusOK, f.quick200
	if r.IfNoneMatch != nil && etagMatch(r.IfNoneMatch, f.etag) {
		code, head = http.StatusNotModified, f.quick304
	}
	dst = append(dst, head...)
	dst = append(dst, date...)
	dst = append(dst, "\r\n\r\n"...)
	s.metaCount.inc(code)
	if code == http.StatusNotModified {
		return dst, nil, true
	}
	return dst, f.data, true
}

// quickHeads prepares f's response heads for quickMetadata, up to the Date value: the
// fields as net/http writes them for serveMetadataFile (the handler's sorted by name,
// then Date).
func (f *metaFile) quickHeads() {
	f.quick200 = []byte("HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nCache-Control: " + f.cacheH[0] +
		"\r\nContent-Length: " + f.lengthH[0] + "\r\nContent-Type: application/json\r\nEtag: " + f.etag +
		"\r\nLast-Modified: " + f.modH[0] + "\r\nDate: ")
	f.quick304 = []byte("HTTP/1.1 304 Not Modified\r\nCache-Control: " + f.cacheH[0] + "\r\nEtag: " + f.etag + "\r\nDate: ")
}

// etagMatch is etagListMatch for one header value.
func etagMatch(v []byte, etag string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		t = bytes.TrimSpace(t)
		if string(t) == "*" || string(bytes.TrimPrefix(t, []byte("W/"))) == etag {
			return true
		}
	}
	return false
}

// fresh returns name's entry when the cache is watched and the entry was checked in
// the current generation (served without a system call), or missing true when name was
// seen missing in it; otherwise nil and false (get must look). It does not allocate.
func (c *metaCache) fresh(name []byte) (f *metaFile, missing bool) {
	if !c.watched.Load() {
		return nil, false
	}
	gen := c.gen.Load()
	if e := (*c.entries.Load())[string(name)]; e != nil {
		if e.checked.Load() == gen {
			return e, false
		}
		return nil, false
	}
	if m := (*c.missing.Load())[string(name)]; m != nil && m.checked.Load() == gen {
		return nil, true
	}
	return nil, false
}
