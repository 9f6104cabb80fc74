// Package quickhttp answers the simplest requests of plain HTTP/1.1 keep-alive
// connections itself and hands every other request, with the rest of its connection, to
// net/http.
//
// It exists for one hot path: TUF clients revalidating timestamp.json, thousands of
// times a second from a fleet. net/http spends about twice nginx's CPU on such a request
// (a Request, a Header map, a response writer, a background read per request); this
// package reads the request into a reused buffer, lets a Responder append a prepared
// response, and writes it with one system call.
//
// The invariant that keeps it safe: a request is answered here only when it matches a
// strict subset of HTTP/1.1 that net/http would read the same way, byte for byte the
// same framing (Parse's fuzz test checks this against http.ReadRequest). Anything else
// (another method, a body, a header this package does not know to be harmless, an
// obsolete line folding, a bare LF, a request too long for the buffer) goes to net/http
// unread, so net/http's answer, refusals included, is what the client gets.
package quickhttp

import (
	"bytes"
)

// Request is a request the listener may answer: GET, origin-form target, HTTP/1.1, no
// body, one Host header, the connection kept alive.
type Request struct {
	// Path is the request target as sent, starting with '/'. It is not decoded or
	// checked beyond that: the Responder must accept only the targets it knows.
	Path []byte
	// IfNoneMatch is the If-None-Match header's value (at most one such header), nil
	// when there is none.
	IfNoneMatch []byte
}

// Parse reads one request from the start of b. It returns the request and the number of
// bytes it takes (request line, header fields and the empty line that ends them) when b
// starts with a whole request this package answers; n == 0 and more == true when b is a
// prefix of one that may yet become one; n == 0 and more == false when it is not one
// (net/http must read it). Parse keeps no reference to b beyond r's slices.
func Parse(b []byte) (r Request, n int, more bool) {
	// Request line: exactly "GET " target " HTTP/1.1\r\n".
	line, rest, ok := cutLine(b)
	if !ok {
		return Request{}, 0, prefixOfRequestLine(b)
	}
	target, ok := bytes.CutPrefix(line, []byte("GET "))
	if !ok {
		return Request{}, 0, false
	}
	target, ok = bytes.CutSuffix(target, []byte(" HTTP/1.1"))
	if !ok || len(target) == 0 || target[0] != '/' {
		return Request{}, 0, false
	}
	for _, c := range target {
		if !isPathChar(c) {
			return Request{}, 0, false
		}
	}
	r.Path = target
	hosts, inms := 0, 0
	for {
		line, rest, ok = cutLine(rest)
		if !ok {
			// An incomplete header field: more may come, unless what is there is
			// already refused.
			if len(rest) > 0 && !fieldPrefixOK(rest) {
				return Request{}, 0, false
			}
			return Request{}, 0, true
		}
		if len(line) == 0 {
			break
		}
		name, value, ok := field(line)
		if !ok {
			return Request{}, 0, false
		}
		switch knownField(name) {
		case fieldHost:
			hosts++
			if hosts > 1 || !validHost(value) {
				return Request{}, 0, false
			}
		case fieldIfNoneMatch:
			if inms++; inms > 1 {
				return Request{}, 0, false
			}
			r.IfNoneMatch = value
		case fieldConnection:
			if !equalFold(value, "keep-alive") {
				return Request{}, 0, false
			}
		case fieldHarmless:
		default:
			return Request{}, 0, false
		}
	}
	if hosts != 1 {
		return Request{}, 0, false
	}
	return r, len(b) - len(rest), false
}

// cutLine cuts b at its first CRLF. ok is false when there is no LF yet; a LF without
// its CR is refused by making the line contain a CR-less LF, which field and the
// request line's checks reject (line keeps the LF).
func cutLine(b []byte) (line, rest []byte, ok bool) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, b, false
	}
	if i == 0 || b[i-1] != '\r' {
		// A bare LF: returned as a line that no check accepts.
		return b[:i+1], b[i+1:], true
	}
	return b[:i-1], b[i+1:], true
}

// prefixOfRequestLine reports whether b (no LF in it) can still begin an answerable
// request line, so that a slow client is read on rather than handed over early.
func prefixOfRequestLine(b []byte) bool {
	const get = "GET /"
	if len(b) <= len(get) {
		return bytes.HasPrefix([]byte(get), b)
	}
	if !bytes.HasPrefix(b, []byte(get)) {
		return false
	}
	// The target, then " HTTP/1.1\r" being written.
	rest := b[len(get):]
	i := bytes.IndexByte(rest, ' ')
	if i < 0 {
		i = len(rest)
	}
	for _, c := range rest[:i] {
		if !isPathChar(c) {
			return false
		}
	}
	tail := rest[i:]
	const proto = " HTTP/1.1\r"
	return len(tail) <= len(proto) && bytes.HasPrefix([]byte(proto), tail)
}

// fieldPrefixOK reports whether b (an incomplete line) may still become an accepted
// header field or the empty line.
func fieldPrefixOK(b []byte) bool {
	if b[0] == ' ' || b[0] == '\t' {
		return false // obsolete line folding
	}
	for i, c := range b {
		if c == '\r' {
			return i == len(b)-1
		}
		if c < ' ' && c != '\t' || c == 0x7f {
			return false
		}
	}
	return true
}

// field splits a header line into its name and its value without surrounding
// whitespace. It refuses a name that is not a token (or is followed by whitespace, which
// RFC 9112 forbids), and a value with control characters or bytes beyond ASCII.
func field(line []byte) (name, value []byte, ok bool) {
	i := bytes.IndexByte(line, ':')
	if i <= 0 {
		return nil, nil, false
	}
	name = line[:i]
	for _, c := range name {
		if !isTokenChar(c) {
			return nil, nil, false
		}
	}
	value = line[i+1:]
	for _, c := range value {
		if c < ' ' && c != '\t' || c >= 0x7f {
			return nil, nil, false
		}
	}
	return name, bytes.Trim(value, " \t"), true
}

// isPathChar reports whether c may appear in a target answered here: an absolute path
// of RFC 3986 pchars without percent-encoding (no query, no fragment).
func isPathChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("-._~!$&'()*+,;=:@/"), c) >= 0
}

func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), c) >= 0
}

// validHost accepts a host the way net/http would accept it and more narrowly: a
// non-empty reg-name, IPv4 or bracketed IPv6 literal with an optional port.
func validHost(v []byte) bool {
	if len(v) == 0 || len(v) > 255 {
		return false
	}
	for _, c := range v {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '.', c == '-', c == '_', c == ':', c == '[', c == ']':
		default:
			return false
		}
	}
	return true
}

const (
	fieldOther = iota
	fieldHost
	fieldIfNoneMatch
	fieldConnection
	fieldHarmless
)

// harmlessFields are request header fields that change nothing in how a metadata GET
// is read or answered here (a proxy's forwarding fields included: the client's address
// matters to no answer of this package).
var harmlessFields = []string{
	"user-agent", "accept", "accept-encoding", "accept-language", "cache-control", "pragma",
	"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-real-ip", "forwarded", "via",
	"x-request-id", "traceparent", "tracestate", "referer", "origin", "dnt",
}

// knownField classifies a header field name, case-insensitively.
func knownField(name []byte) int {
	switch {
	case equalFold(name, "host"):
		return fieldHost
	case equalFold(name, "if-none-match"):
		return fieldIfNoneMatch
	case equalFold(name, "connection"):
		return fieldConnection
	}
	for _, h := range harmlessFields {
		if equalFold(name, h) {
			return fieldHarmless
		}
	}
	return fieldOther
}

// equalFold compares ASCII b with lower-case s, ignoring case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
