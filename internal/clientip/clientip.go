// Package clientip finds the address a request came from behind reverse proxies the
// operator trusts. Behind nginx every connection's peer is nginx, so any bound per
// source (the dashboard's sign-in limiter, the pending enrollment challenges per
// source, the aggregation of refused device requests) would see one client. A trusted
// proxy says who its client was in X-Forwarded-For; anyone else can write that header
// too, so it is read only when the peer is a trusted proxy, and then only as far as
// trusted proxies wrote it: the client is the rightmost address that is not a trusted
// proxy (each proxy appends the address of its own peer, so everything left of that
// was written by the client and proves nothing).
//
// The decision (Proxies.Client) is pure; Proxies.Handler applies it to requests.
package clientip

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// MaxHops bounds how many X-Forwarded-For entries are examined, right to left. A chain
// of trusted proxies longer than this is a misconfiguration or an attack; the address
// reached there is used.
const MaxHops = 16

// Proxies are the peers whose X-Forwarded-For is honoured. The zero value trusts
// nobody: every request's source is its TCP peer. A Proxies is not modified after use
// and is safe for concurrent use.
type Proxies struct {
	prefixes []netip.Prefix
}

// New returns the proxies in prefixes (IPv4-mapped IPv6 prefixes are taken as IPv4).
func New(prefixes []netip.Prefix) Proxies {
	var p Proxies
	for _, pf := range prefixes {
		a := pf.Addr()
		if a.Is4In6() && pf.Bits() >= 96 {
			pf = netip.PrefixFrom(a.Unmap(), pf.Bits()-96)
		}
		p.prefixes = append(p.prefixes, pf.Masked())
	}
	return p
}

// ParsePrefix parses a trusted proxy: a CIDR prefix ("10.0.0.0/8", "fd00::/8") or one
// address ("10.0.0.5", a /32 or /128).
func ParsePrefix(s string) (netip.Prefix, error) {
	s = strings.TrimSpace(s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("trusted proxy %q: want a CIDR prefix (10.0.0.0/8) or an address: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("trusted proxy %q: want a CIDR prefix (10.0.0.0/8) or an address: %w", s, err)
	}
	if a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("trusted proxy %q: an address with a zone cannot be a prefix", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Prefixes returns the trusted prefixes.
func (p Proxies) Prefixes() []netip.Prefix { return append([]netip.Prefix(nil), p.prefixes...) }

// Trusted reports whether a is a trusted proxy.
func (p Proxies) Trusted(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	for _, pf := range p.prefixes {
		if pf.Contains(a) {
			return true
		}
	}
	return false
}

// Client returns the address a request came from, given its TCP peer and its
// X-Forwarded-For header values in order. If the peer is not a trusted proxy, the
// peer (the header is ignored, whatever it says). Otherwise the entries are read right
// to left, skipping trusted proxies: the first address that is not one is the client.
// An entry that is not an address stops the walk, as does running out of entries or
// MaxHops: the last trusted address reached is then the client (it is the furthest
// hop anyone trusted vouched for).
func (p Proxies) Client(peer netip.Addr, xff []string) netip.Addr {
	peer = peer.Unmap().WithZone("")
	if !p.Trusted(peer) {
		return peer
	}
	client := peer
	hops := 0
	for i := len(xff) - 1; i >= 0; i-- {
		entries := strings.Split(xff[i], ",")
		for j := len(entries) - 1; j >= 0; j-- {
			if hops == MaxHops {
				return client
			}
			hops++
			a, ok := parseEntry(entries[j])
			if !ok {
				return client
			}
			client = a
			if !p.Trusted(a) {
				return a
			}
		}
	}
	return client
}

// parseEntry parses one X-Forwarded-For entry: an address, possibly with a port
// ("192.0.2.1:4711", "[2001:db8::1]:4711"), as some proxies write it.
func parseEntry(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return a.Unmap(), true
	}
	if ap, err := netip.ParseAddrPort(s); err == nil && ap.Addr().Zone() == "" {
		return ap.Addr().Unmap(), true
	}
	return netip.Addr{}, false
}

// Handler serves h with each request's RemoteAddr set to its client (Client; port 0
// when it came from X-Forwarded-For), so that everything downstream that keys on the
// source sees the client rather than the proxy. With no trusted proxies it returns h
// unchanged. A RemoteAddr that is not an address is left alone.
func (p Proxies) Handler(h http.Handler) http.Handler {
	if len(p.prefixes) == 0 {
		return h
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := netip.ParseAddrPort(r.RemoteAddr)
		if err != nil {
			h.ServeHTTP(w, r)
			return
		}
		client := p.Client(peer.Addr(), r.Header.Values("X-Forwarded-For"))
		if client != peer.Addr().Unmap().WithZone("") {
			r = r.WithContext(r.Context()) // a shallow copy: the caller's request is not changed
			r.RemoteAddr = net.JoinHostPort(client.String(), "0")
		}
		h.ServeHTTP(w, r)
	})
}
