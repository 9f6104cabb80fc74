package ui

import (
	"net"
	"net/http"
)

// source is the address a request came from (the peer, not a header a client sets).
func source(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
