package quickhttp

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	const ts = "GET /metadata/timestamp.json HTTP/1.1\r\n"
	tests := []struct {
		name, in  string
		path, inm string // when answered
		answered  bool
		more      bool // when not answered
	}{
		{name: "wrk", in: ts + "Host: 127.0.0.1:8080\r\n\r\n", answered: true, path: "/metadata/timestamp.json"},
		{name: "go client", in: ts + "Host: repo.example\r\nUser-Agent: Go-http-client/1.1\r\nIf-None-Match: \"ab\"\r\nAccept-Encoding: gzip\r\n\r\n",
			answered: true, path: "/metadata/timestamp.json", inm: `"ab"`},
		{name: "header names in any case, value trimmed", in: ts + "hOST: a\r\nif-none-match: \t W/\"x\", \"y\" \r\nConnection: Keep-Alive\r\n\r\n",
			answered: true, path: "/metadata/timestamp.json", inm: `W/"x", "y"`},
		{name: "IPv6 host", in: ts + "Host: [::1]:80\r\n\r\n", answered: true, path: "/metadata/timestamp.json"},

		{name: "empty", in: "", more: true},
		{name: "method being written", in: "GE", more: true},
		{name: "target being written", in: "GET /metadata/time", more: true},
		{name: "proto being written", in: "GET /metadata/timestamp.json HTTP/1.", more: true},
		{name: "header being written", in: ts + "Host: a\r\nUser-Ag", more: true},
		{name: "CR of the end", in: ts + "Host: a\r\n\r", more: true},

		{name: "HEAD", in: "HEAD /metadata/timestamp.json HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "POST", in: "POST /metadata/timestamp.json HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"},
		{name: "lower-case method", in: "get /metadata/timestamp.json HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "method prefix refused early", in: "PUT /"},
		{name: "HTTP/1.0", in: "GET /metadata/timestamp.json HTTP/1.0\r\nHost: a\r\n\r\n"},
		{name: "HTTP/1.0 being written", in: "GET /x HTTP/1.0"},
		{name: "HTTP/2 preface", in: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
		{name: "absolute form", in: "GET http://a/metadata/timestamp.json HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "query", in: "GET /metadata/timestamp.json?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "percent-encoding", in: "GET /metadata/%74imestamp.json HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "two spaces", in: "GET  /metadata/timestamp.json HTTP/1.1\r\nHost: a\r\n\r\n"},
		{name: "no Host", in: ts + "\r\n"},
		{name: "two Hosts", in: ts + "Host: a\r\nHost: b\r\n\r\n"},
		{name: "empty Host", in: ts + "Host:\r\n\r\n"},
		{name: "Host with a slash", in: ts + "Host: a/b\r\n\r\n"},
		{name: "two If-None-Match", in: ts + "Host: a\r\nIf-None-Match: \"a\"\r\nIf-None-Match: \"b\"\r\n\r\n"},
		{name: "an empty If-None-Match, then another", in: ts + "Host: a\r\nIf-None-Match:  \r\nIf-None-Match: \"b\"\r\n\r\n"},
		{name: "Connection: close", in: ts + "Host: a\r\nConnection: close\r\n\r\n"},
		{name: "Connection: upgrade", in: ts + "Host: a\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"},
		{name: "Content-Length", in: ts + "Host: a\r\nContent-Length: 5\r\n\r\nhello"},
		{name: "Transfer-Encoding", in: ts + "Host: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
		{name: "Range", in: ts + "Host: a\r\nRange: bytes=0-1\r\n\r\n"},
		{name: "If-Modified-Since", in: ts + "Host: a\r\nIf-Modified-Since: Mon, 30 Nov 2026 10:00:00 GMT\r\n\r\n"},
		{name: "Expect", in: ts + "Host: a\r\nExpect: 100-continue\r\n\r\n"},
		{name: "unknown header", in: ts + "Host: a\r\nX-Whatever: 1\r\n\r\n"},
		{name: "space before colon", in: ts + "Host : a\r\n\r\n"},
		{name: "obsolete folding", in: ts + "Host: a\r\nUser-Agent: x\r\n y\r\n\r\n"},
		{name: "folding refused while incomplete", in: ts + "Host: a\r\n y"},
		{name: "bare LF ends the request", in: "GET /metadata/timestamp.json HTTP/1.1\nHost: a\n\n"},
		{name: "bare LF in the header", in: ts + "Host: a\n\r\n"},
		{name: "bare CR in a value", in: ts + "Host: a\r\nUser-Agent: x\ry\r\n\r\n"},
		{name: "NUL in a value", in: ts + "Host: a\r\nUser-Agent: x\x00\r\n\r\n"},
		{name: "non-ASCII value", in: ts + "Host: a\r\nUser-Agent: \xc3\xa9\r\n\r\n"},
		{name: "leading empty line", in: "\r\n" + ts + "Host: a\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, n, more := Parse([]byte(tt.in))
			if !tt.answered {
				if n != 0 || more != tt.more {
					t.Fatalf("Parse(%q) = n %d more %v, want n 0 more %v", tt.in, n, more, tt.more)
				}
				return
			}
			if n != len(tt.in) || more {
				t.Fatalf("Parse(%q) = n %d more %v, want n %d", tt.in, n, more, len(tt.in))
			}
			if string(r.Path) != tt.path || string(r.IfNoneMatch) != tt.inm || (tt.inm == "") != (r.IfNoneMatch == nil) {
				t.Fatalf("Parse(%q) = path %q inm %q, want %q %q", tt.in, r.Path, r.IfNoneMatch, tt.path, tt.inm)
			}
			checkAsNetHTTP(t, []byte(tt.in), r, n)
		})
	}
}

// TestParsePipelined: n ends the first request exactly, so the second starts there.
func TestParsePipelined(t *testing.T) {
	one := "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
	two := "GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
	r, n, _ := Parse([]byte(one + two))
	if n != len(one) || string(r.Path) != "/a" {
		t.Fatalf("first: n %d path %q", n, r.Path)
	}
	r, n, _ = Parse([]byte(two))
	if n != len(two) || string(r.Path) != "/b" {
		t.Fatalf("second: n %d path %q", n, r.Path)
	}
}

// checkAsNetHTTP checks that net/http reads the request Parse answered the same way:
// a GET of the same target over HTTP/1.1, kept alive, without a body, ending where
// Parse says it ends (the framing both agree on, so nothing can be smuggled between
// them).
func checkAsNetHTTP(t *testing.T, in []byte, r Request, n int) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(in))
	req, err := http.ReadRequest(br)
	if err != nil {
		t.Fatalf("Parse answered %q, net/http refuses it: %v", in[:n], err)
	}
	if req.Method != http.MethodGet || req.RequestURI != string(r.Path) || req.URL.Path != string(r.Path) || !req.ProtoAtLeast(1, 1) ||
		req.Close || req.ContentLength != 0 || len(req.TransferEncoding) != 0 || req.Host == "" {
		t.Fatalf("Parse answered %q, net/http reads %s %q (path %q) proto %s close %v length %d TE %v host %q",
			in[:n], req.Method, req.RequestURI, req.URL.Path, req.Proto, req.Close, req.ContentLength, req.TransferEncoding, req.Host)
	}
	if got := strings.Join(req.Header.Values("If-None-Match"), ","); got != string(r.IfNoneMatch) {
		t.Fatalf("Parse answered %q with If-None-Match %q, net/http reads %q", in[:n], r.IfNoneMatch, got)
	}
	for _, h := range []string{"Range", "If-Match", "If-Modified-Since", "If-Unmodified-Since", "If-Range", "Expect", "Upgrade"} {
		if req.Header[h] != nil {
			t.Fatalf("Parse answered %q, which has %s", in[:n], h)
		}
	}
	if consumed := len(in) - br.Buffered(); consumed != n {
		t.Fatalf("Parse says the request of %q is %d bytes, net/http read %d", in, n, consumed)
	}
}

// FuzzParse: whatever Parse answers, net/http reads alike (checkAsNetHTTP); a prefix of
// an answered request is never refused before its end, and never answered.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"GET /metadata/timestamp.json HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
		"GET /metadata/1.root.json HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\nConnection: keep-alive\r\nUser-Agent: y\r\n\r\nGET / HTTP/1.1\r\n",
		"GET /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
		"GET /a HTTP/1.1\nHost: a\n\n",
		"GET /a HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		r, n, more := Parse(in)
		if n < 0 || n > len(in) || n > 0 && more {
			t.Fatalf("Parse(%q) = n %d more %v", in, n, more)
		}
		if n == 0 {
			return
		}
		checkAsNetHTTP(t, in, r, n)
		for i := range n {
			if _, m, more := Parse(in[:i]); m != 0 || !more {
				t.Fatalf("Parse(%q), a prefix of an answered request, = n %d more %v", in[:i], m, more)
			}
		}
	})
}
