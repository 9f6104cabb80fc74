package reposerver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/edgeward/edgeward/repository"
)

// TestQuickMetadataAnswersAsNetHTTP sends the same bytes to the server through net/http
// alone and through QuickListener, and wants the same bytes back but for the Date:
// answered here or handed to net/http, a client cannot tell, hostile requests included.
// It runs with the metadata directory unwatched (every request checks its file) and
// watched (as edgeward server serves).
func TestQuickMetadataAnswersAsNetHTTP(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	s := f.srv
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h := s.Restrict(Exposure{}, "", "")
	listen := func(quick bool) string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		if quick {
			ln = s.QuickListener(ln)
		}
		done := make(chan struct{})
		go func() { s.ServeListenerWith(ctx, ln, h); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		return addr
	}
	plain, quick := listen(false), listen(true)

	resp, err := http.Get("http://" + plain + "/metadata/timestamp.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	etag := resp.Header.Get("Etag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	const ts = "GET /metadata/timestamp.json HTTP/1.1\r\nHost: repo\r\n"
	cases := []struct{ name, req string }{
		{"GET", ts + "\r\n"},
		{"GET as Go's client sends it", ts + "User-Agent: Go-http-client/1.1\r\nAccept-Encoding: gzip\r\n\r\n"},
		{"If-None-Match", ts + "If-None-Match: " + etag + "\r\n\r\n"},
		{"If-None-Match weak", ts + "If-None-Match: W/" + etag + "\r\n\r\n"},
		{"If-None-Match list", ts + "If-None-Match: \"other\", " + etag + "\r\n\r\n"},
		{"If-None-Match star", ts + "If-None-Match: *\r\n\r\n"},
		{"If-None-Match stale", ts + "If-None-Match: \"0123\"\r\n\r\n"},
		{"If-None-Match empty", ts + "If-None-Match:\r\n\r\n"},
		{"versioned root", "GET /metadata/1.root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"next root (missing)", "GET /metadata/2.root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"next root again", "GET /metadata/2.root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"invalid name", "GET /metadata/Root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"traversal", "GET /metadata/../root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"escaped name", "GET /metadata/timestamp%2ejson HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"query", "GET /metadata/timestamp.json?x=1 HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"HEAD", "HEAD /metadata/timestamp.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"Range", ts + "Range: bytes=0-9\r\n\r\n"},
		{"If-Modified-Since", ts + "If-Modified-Since: Sat, 01 Jan 2000 00:00:00 GMT\r\n\r\n"},
		{"pipelined", ts + "\r\n" + ts + "If-None-Match: " + etag + "\r\n\r\n" + "GET /metadata/2.root.json HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"pipelined, then another route, then metadata", ts + "\r\nGET /healthz HTTP/1.1\r\nHost: repo\r\n\r\n" + ts + "\r\n"},
		{"not found elsewhere", "GET /nope HTTP/1.1\r\nHost: repo\r\n\r\n"},
		{"HTTP/1.0", "GET /metadata/timestamp.json HTTP/1.0\r\n\r\n"},
		{"Connection: close", ts + "Connection: close\r\n\r\n"},
		{"no Host", "GET /metadata/timestamp.json HTTP/1.1\r\n\r\n"},
		{"two Hosts", ts + "Host: other\r\n\r\n"},
		{"bare LF", "GET /metadata/timestamp.json HTTP/1.1\nHost: repo\n\n"},
		{"obsolete folding", ts + "User-Agent: a\r\n b\r\n\r\n"},
		{"space before the colon", "GET /metadata/timestamp.json HTTP/1.1\r\nHost : repo\r\n\r\n"},
		{"invalid header name", ts + "Us(er: a\r\n\r\n"},
		{"NUL in a value", ts + "User-Agent: a\x00b\r\n\r\n"},
		{"body on a GET", ts + "Content-Length: 4\r\n\r\nbody"},
		{"smuggling by Content-Length", ts + "Content-Length: 45\r\n\r\nGET /metadata/1.root.json HTTP/1.1\r\nHost: r\r\n\r\n"},
		{"smuggling by chunks", ts + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /metadata/1.root.json HTTP/1.1\r\nHost: r\r\n\r\n"},
		{"CL and TE", ts + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{"header over the buffer", ts + "User-Agent: " + strings.Repeat("u", 6000) + "\r\n\r\n"},
		{"header over net/http's limit", ts + "User-Agent: " + strings.Repeat("u", 1<<20+4096) + "\r\n\r\n"},
		{"garbage", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not TLS\r\n\r\n"},
		{"HTTP/2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
	}
	// Each case ends with a request that closes the connection (net/http's on both
	// sides), so that both are read to their end.
	const closing = "GET /metadata/timestamp.json HTTP/1.1\r\nHost: repo\r\nConnection: close\r\n\r\n"
	date := regexp.MustCompile(`(?m)^Date: [^\r]*\r$`)
	exchange := func(addr, req string) string {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		go io.WriteString(c, req+closing) // the server may answer before reading it all
		b, err := io.ReadAll(c)
		if err != nil && !strings.Contains(err.Error(), "reset") {
			t.Fatalf("%s: %v", addr, err)
		}
		return date.ReplaceAllString(string(b), "Date: (now)\r")
	}
	compare := func(t *testing.T) {
		for _, tc := range cases {
			want, got := exchange(plain, tc.req), exchange(quick, tc.req)
			if got != want {
				t.Errorf("%s:\nnet/http answered\n%q\nquick listener\n%q", tc.name, want, got)
			}
		}
	}
	t.Run("unwatched", compare)
	ready := make(chan struct{})
	go s.meta.watch(ctx, slog.New(slog.DiscardHandler), ready)
	<-ready
	if !s.meta.watched.Load() {
		t.Fatal("not watched")
	}
	t.Run("watched", compare)

	// Answered here, counted as net/http's are.
	ok, nm, nf := testutil.ToFloat64(s.requests.WithLabelValues("metadata", "200")),
		testutil.ToFloat64(s.requests.WithLabelValues("metadata", "304")), testutil.ToFloat64(s.requests.WithLabelValues("metadata", "404"))
	exchange(quick, ts+"\r\n"+ts+"If-None-Match: "+etag+"\r\n\r\n"+"GET /metadata/2.root.json HTTP/1.1\r\nHost: repo\r\n\r\n")
	if d := testutil.ToFloat64(s.requests.WithLabelValues("metadata", "200")) - ok; d != 2 { // the closing request too
		t.Errorf("200s counted: %v, want 2", d)
	}
	if d := testutil.ToFloat64(s.requests.WithLabelValues("metadata", "304")) - nm; d != 1 {
		t.Errorf("304s counted: %v, want 1", d)
	}
	if d := testutil.ToFloat64(s.requests.WithLabelValues("metadata", "404")) - nf; d != 1 {
		t.Errorf("404s counted: %v, want 1", d)
	}
}
