package clientip

import (
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
)

func mustProxies(t *testing.T, ss ...string) Proxies {
	t.Helper()
	var ps []netip.Prefix
	for _, s := range ss {
		p, err := ParsePrefix(s)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return New(ps)
}

func TestClient(t *testing.T) {
	nginx := mustProxies(t, "10.0.0.5", "192.168.0.0/16", "fd00::/8")
	many := make([]string, MaxHops+4)
	for i := range many {
		many[i] = "192.168.1.1"
	}
	tests := []struct {
		name string
		p    Proxies
		peer string
		xff  []string
		want string
	}{
		{"no proxies: the peer", Proxies{}, "203.0.113.7", nil, "203.0.113.7"},
		{"no proxies: a forged header is ignored", Proxies{}, "203.0.113.7", []string{"198.51.100.1"}, "203.0.113.7"},
		{"untrusted peer: a forged header is ignored", nginx, "203.0.113.7", []string{"198.51.100.1"}, "203.0.113.7"},
		{"untrusted peer claiming a trusted proxy", nginx, "203.0.113.7", []string{"10.0.0.5"}, "203.0.113.7"},
		{"untrusted peer in the mapped form", nginx, "::ffff:203.0.113.7", []string{"198.51.100.1"}, "203.0.113.7"},
		{"trusted proxy, no header: the proxy", nginx, "10.0.0.5", nil, "10.0.0.5"},
		{"trusted proxy: its client", nginx, "10.0.0.5", []string{"198.51.100.1"}, "198.51.100.1"},
		{"trusted proxy in the mapped form", nginx, "::ffff:10.0.0.5", []string{"198.51.100.1"}, "198.51.100.1"},
		{"client forged entries: the rightmost untrusted wins", nginx, "10.0.0.5", []string{"1.2.3.4, 5.6.7.8, 198.51.100.1"}, "198.51.100.1"},
		{"client forged a trusted address on the left", nginx, "10.0.0.5", []string{"10.0.0.5, 198.51.100.1"}, "198.51.100.1"},
		{"two trusted hops", nginx, "10.0.0.5", []string{"198.51.100.1, 192.168.3.4"}, "198.51.100.1"},
		{"two header lines, in order", nginx, "10.0.0.5", []string{"1.2.3.4", "198.51.100.1, 192.168.3.4"}, "198.51.100.1"},
		{"spaces and ports", nginx, "10.0.0.5", []string{" 198.51.100.1:4711 ,192.168.3.4 "}, "198.51.100.1"},
		{"IPv6 client with a port", nginx, "fd00::1", []string{"[2001:db8::7]:443"}, "2001:db8::7"},
		{"IPv6 client", nginx, "fd00::1", []string{"2001:db8::7"}, "2001:db8::7"},
		{"garbage right of the client: the last trusted hop", nginx, "10.0.0.5", []string{"198.51.100.1, not-an-ip"}, "10.0.0.5"},
		{"garbage after a trusted hop", nginx, "10.0.0.5", []string{"198.51.100.1, garbage, 192.168.3.4"}, "192.168.3.4"},
		{"empty entry", nginx, "10.0.0.5", []string{""}, "10.0.0.5"},
		{"a zone is not an address", nginx, "10.0.0.5", []string{"fe80::1%eth0"}, "10.0.0.5"},
		{"all trusted: the leftmost", nginx, "10.0.0.5", []string{"192.168.9.9, 192.168.3.4"}, "192.168.9.9"},
		{"too many trusted hops: stops at MaxHops", nginx, "10.0.0.5", []string{"6.6.6.6, " + strings.Join(many, ", ")}, "192.168.1.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.p.Client(netip.MustParseAddr(tt.peer), tt.xff)
			if got.String() != tt.want {
				t.Errorf("Client(%s, %q) = %s; want %s", tt.peer, tt.xff, got, tt.want)
			}
		})
	}
}

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"10.0.0.5", "10.0.0.5/32", ""},
		{" 10.0.0.0/8 ", "10.0.0.0/8", ""},
		{"10.1.2.3/8", "10.0.0.0/8", ""},
		{"::ffff:10.0.0.5", "10.0.0.5/32", ""},
		{"fd00::/8", "fd00::/8", ""},
		{"::1", "::1/128", ""},
		{"nginx.internal", "", "want a CIDR prefix"},
		{"10.0.0.0/33", "", "want a CIDR prefix"},
		{"fe80::1%eth0", "", "zone"},
		{"", "", "want a CIDR prefix"},
	}
	for _, tt := range tests {
		got, err := ParsePrefix(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParsePrefix(%q) = %v, %v; want an error with %q", tt.in, got, err, tt.err)
			}
			continue
		}
		if err != nil || got.String() != tt.want {
			t.Errorf("ParsePrefix(%q) = %v, %v; want %s", tt.in, got, err, tt.want)
		}
	}
}

func TestMappedPrefix(t *testing.T) {
	p := New([]netip.Prefix{netip.MustParsePrefix("::ffff:10.0.0.0/104")})
	if !p.Trusted(netip.MustParseAddr("10.1.2.3")) {
		t.Errorf("New(::ffff:10.0.0.0/104).Trusted(10.1.2.3) = false; want true")
	}
}

func TestHandler(t *testing.T) {
	var got string
	h := mustProxies(t, "127.0.0.1").Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { got = r.RemoteAddr }))
	tests := []struct {
		remote string
		xff    []string
		want   string
	}{
		{"127.0.0.1:5555", []string{"198.51.100.1"}, "198.51.100.1:0"},
		{"127.0.0.1:5555", nil, "127.0.0.1:5555"},
		{"203.0.113.7:5555", []string{"198.51.100.1"}, "203.0.113.7:5555"},
		{"[2001:db8::1]:5555", []string{"198.51.100.1"}, "[2001:db8::1]:5555"},
		{"[::ffff:127.0.0.1]:5555", []string{"2001:db8::7"}, "[2001:db8::7]:0"},
		{"pipe", []string{"198.51.100.1"}, "pipe"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		r.RemoteAddr = tt.remote
		for _, v := range tt.xff {
			r.Header.Add("X-Forwarded-For", v)
		}
		h.ServeHTTP(httptest.NewRecorder(), r)
		if got != tt.want {
			t.Errorf("RemoteAddr %s with X-Forwarded-For %q: handler saw %s; want %s", tt.remote, tt.xff, got, tt.want)
		}
		if r.RemoteAddr != tt.remote {
			t.Errorf("the caller's request was changed: RemoteAddr %s; want %s", r.RemoteAddr, tt.remote)
		}
	}
	// Nobody trusted: the handler itself, unwrapped.
	inner := http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})
	if h := (Proxies{}).Handler(inner); h == nil {
		t.Fatal("Proxies{}.Handler = nil")
	}
}
