package operatorapi

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// ErrPlainHTTP is returned when an operator credential would cross the network in clear:
// a token sent over http:// to a host that is not this machine.
var ErrPlainHTTP = errors.New("refusing to send an operator token over plain HTTP to a host other than this machine")

// CheckTransport says whether a token may be sent to server: over https always, over
// http only to a loopback address (127.0.0.0/8, ::1, localhost). Every Client request
// and every redirect it follows is checked.
func CheckTransport(server string) error {
	u, err := url.Parse(server)
	if err != nil {
		return fmt.Errorf("server URL %q: %w", server, err)
	}
	switch strings.ToLower(u.Scheme) {
	case "https":
		return nil
	case "http":
		if isLoopbackHost(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%w (%s): use the server's https:// address (edgeward server --tls-listen; trust its certificate with $EDGEWARD_SERVER_CA)", ErrPlainHTTP, u.Host)
	}
	return fmt.Errorf("server URL %q: want https:// (or http:// to this machine)", server)
}

func isLoopbackHost(h string) bool {
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

// RefuseInsecureRedirects is an http.Client CheckRedirect that follows at most 10
// redirects and none that CheckTransport refuses (an https server redirecting to
// http:// would otherwise receive the token in clear).
func RefuseInsecureRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	return CheckTransport(req.URL.String())
}
