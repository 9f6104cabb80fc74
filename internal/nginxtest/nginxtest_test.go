package nginxtest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRoundRobinAndFailover: nginx round-robins two backends; with one closed, every
// request is passed on to the other (proxy_next_upstream error), and the access log
// names the upstreams tried.
func TestRoundRobinAndFailover(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nginx")
	}
	backend := func(name string) *httptest.Server {
		return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, name) }))
	}
	a, b := backend("a"), backend("b")
	defer b.Close()
	ng := Start(t, func(port int) string {
		return fmt.Sprintf(`upstream app { server %s; server %s; }
server {
    listen 127.0.0.1:%d;
    location / { proxy_pass http://app; proxy_next_upstream error timeout; }
}`, strings.TrimPrefix(a.URL, "http://"), strings.TrimPrefix(b.URL, "http://"), port)
	})
	get := func() string {
		t.Helper()
		resp, err := http.Get(ng.URL + "/x")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 {
			t.Fatalf("GET /x: %s %s", resp.Status, body)
		}
		return string(body)
	}
	seen := map[string]int{}
	for range 4 {
		seen[get()]++
	}
	if seen["a"] != 2 || seen["b"] != 2 {
		t.Errorf("round robin over a and b answered %v; want 2 each", seen)
	}
	a.Close()
	for range 4 {
		if got := get(); got != "b" {
			t.Errorf("with a closed, answered by %q; want b", got)
		}
	}
	// nginx writes a request's log line after it sent the answer: the last line may
	// still be on its way when the client has its response.
	var es []Entry
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if es, err = ng.Entries(); err != nil {
			t.Fatal(err)
		}
		if len(es) >= 8 || time.Now().After(deadline) {
			break
		}
	}
	if len(es) != 8 {
		t.Fatalf("%d access log entries; want 8", len(es))
	}
	retried := 0
	for _, e := range es {
		if e.Status != 200 || e.Method != "GET" || e.Path != "/x" || len(e.Upstreams) == 0 {
			t.Errorf("entry %+v; want a GET /x answered 200 by an upstream", e)
		}
		if len(e.Upstreams) == 2 {
			retried++
			if e.UpstreamStatus[len(e.UpstreamStatus)-1] != "200" {
				t.Errorf("retried entry %+v: the last upstream did not answer 200", e)
			}
		}
	}
	if retried == 0 {
		t.Errorf("no request was passed on from the closed upstream: %+v", es)
	}
	if err := ng.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(ng.URL + "/x"); err == nil {
		t.Error("nginx still answers after Stop")
	}
}

func TestParseEntry(t *testing.T) {
	for _, tc := range []struct {
		line string
		want Entry
	}{
		{`200 "GET /metadata/timestamp.json HTTP/1.1" 127.0.0.1:4001 200 MISS 0.003`,
			Entry{Status: 200, Method: "GET", Path: "/metadata/timestamp.json", Upstreams: []string{"127.0.0.1:4001"}, UpstreamStatus: []string{"200"}, Cache: "MISS"}},
		{`200 "POST /v1/devices/checkin HTTP/1.1" 127.0.0.1:4001, 127.0.0.1:4002 502, 200 - 0.150`,
			Entry{Status: 200, Method: "POST", Path: "/v1/devices/checkin", Upstreams: []string{"127.0.0.1:4001", "127.0.0.1:4002"}, UpstreamStatus: []string{"502", "200"}, Cache: "-"}},
		{`200 "GET /targets/x HTTP/1.1" - - HIT 0.000`,
			Entry{Status: 200, Method: "GET", Path: "/targets/x", Cache: "HIT"}},
	} {
		got, err := ParseEntry(tc.line)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("ParseEntry(%q) = %+v, %v; want %+v", tc.line, got, err, tc.want)
		}
	}
	if _, err := ParseEntry("garbage"); err == nil {
		t.Error("ParseEntry(garbage) succeeded")
	}
}
