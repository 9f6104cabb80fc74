package nginxtest

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// documentedConfig is the nginx configuration docs/OPERATORS.md gives for replicas
// ("Running several replicas"): its first indented block that defines the device API's
// upstream group, unindented.
func documentedConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../docs/OPERATORS.md")
	if err != nil {
		t.Fatal(err)
	}
	var block []string
	for _, para := range strings.Split(string(b), "\n\n") {
		if strings.HasPrefix(para, "    upstream edgeward {") {
			block = strings.Split(para, "\n")
			break
		}
	}
	if block == nil {
		t.Fatal("docs/OPERATORS.md: no nginx block starting with upstream edgeward")
	}
	for i, l := range block {
		block[i] = strings.TrimPrefix(l, "    ")
	}
	return strings.Join(block, "\n")
}

// TestDocumentedNginxConfig runs the nginx configuration of docs/OPERATORS.md, as
// written there, in front of three replicas whose database is away: the device API's
// 503s reach the device with their Retry-After, and nonces and metadata, which need no
// database, are still answered by the replicas. With one upstream group and http_503
// passed on, the first check-ins marked every replica failed, and nginx answered its
// own 502 to everything for fail_timeout (found from outside, 2 Dec).
func TestDocumentedNginxConfig(t *testing.T) {
	if testing.Short() {
		t.Skip("starts nginx")
	}
	var dbAway atomic.Bool
	var asked [3]atomic.Int32
	var hung [3]atomic.Bool // accepts and reads requests, never answers (a stopped process)
	release := make(chan struct{})
	replicas := make([]*httptest.Server, 3)
	for i := range replicas {
		replicas[i] = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked[i].Add(1)
			if hung[i].Load() {
				select {
				case <-release:
				case <-r.Context().Done():
				}
				return
			}
			needsDB := r.URL.Path != "/v1/devices/nonce" && !strings.HasPrefix(r.URL.Path, "/metadata/")
			if needsDB && dbAway.Load() {
				w.Header().Set("Retry-After", "5")
				http.Error(w, "the fleet database is unavailable", http.StatusServiceUnavailable)
				return
			}
			fmt.Fprintf(w, "replica %d: %s", i, r.URL.Path)
		}))
		defer replicas[i].Close()
	}
	defer close(release) // first: the replicas' Close waits for their handlers
	conf := documentedConfig(t)
	for i, addr := range []string{"10.0.0.11:8440", "10.0.0.12:8440", "10.0.0.13:8440"} {
		if !strings.Contains(conf, addr) {
			t.Fatalf("the documented configuration names no replica %s:\n%s", addr, conf)
		}
		conf = strings.ReplaceAll(conf, addr, strings.TrimPrefix(replicas[i].URL, "http://"))
	}
	// The read timeout as documented, shortened so that the test does not wait 30 s
	// for each stalled request.
	const readTimeout = 2 * time.Second
	if n := strings.Count(conf, "proxy_read_timeout 30s;"); n != 2 {
		t.Fatalf("the documented configuration sets proxy_read_timeout 30s %d times; the test shortens 2", n)
	}
	conf = strings.ReplaceAll(conf, "proxy_read_timeout 30s;", fmt.Sprintf("proxy_read_timeout %ds;", int(readTimeout.Seconds())))
	ng := Start(t, func(port int) string {
		return strings.Replace(conf, "listen 443 ssl;", fmt.Sprintf("listen 127.0.0.1:%d;", port), 1)
	})
	do := func(method, path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, ng.URL+path, strings.NewReader("{}"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After")
	}
	// A replica that accepts connections and never answers (stopped, wedged): the
	// first device request nginx gives it waits the read timeout and is passed on,
	// and the replica is then skipped for fail_timeout. Before 3 Dec (max_fails=0 on
	// the device group) every third check-in waited the whole timeout, for as long as
	// the replica stayed stopped.
	hung[1].Store(true)
	stalled := 0
	for range 12 {
		start := time.Now()
		if code, _ := do("POST", "/v1/devices/checkin"); code != 200 {
			t.Errorf("check-in with a replica stopped = %d; want 200 from another", code)
		}
		if time.Since(start) >= readTimeout {
			stalled++
		}
	}
	if stalled > 2 {
		t.Errorf("%d of 12 check-ins waited the read timeout on the stopped replica; want at most 2 (one per fail_timeout)", stalled)
	}
	hung[1].Store(false)
	dbAway.Store(true)
	for range 4 {
		if code, after := do("POST", "/v1/devices/checkin"); code != 503 || after != "5" {
			t.Errorf("check-in with the database away = %d, Retry-After %q; want the replicas' 503 with Retry-After 5", code, after)
		}
	}
	for _, c := range []struct{ method, path string }{{"POST", "/v1/rollouts/r/pause"}, {"GET", "/ui/"}, {"POST", "/v1/attest/enroll"}} {
		if code, after := do(c.method, c.path); code != 503 || after != "5" {
			t.Errorf("%s %s with the database away = %d, Retry-After %q; want the replica's 503", c.method, c.path, code, after)
		}
	}
	for range 6 {
		// The check-ins' 503s marked the replicas failed for the device API: nginx
		// answers a nonce itself, 503 with Retry-After, until fail_timeout passes.
		if code, after := do("POST", "/v1/devices/nonce"); code != 200 && (code != 503 || after == "") {
			t.Errorf("nonce with the database away = %d, Retry-After %q; want 200 or 503 with Retry-After", code, after)
		}
		if code, _ := do("GET", "/metadata/timestamp.json"); code != 200 {
			t.Errorf("metadata with the database away = %d; want 200 (metadata needs no database)", code)
		}
	}
	// The database back, a replica down: its connections are refused, and every request
	// goes to the others, once fail_timeout (5 s) has passed since the outage marked
	// them failed for the device API.
	dbAway.Store(false)
	replicas[0].Close()
	time.Sleep(6 * time.Second)
	before := asked[1].Load() + asked[2].Load()
	for _, c := range []struct{ method, path string }{{"POST", "/v1/devices/checkin"}, {"POST", "/v1/devices/nonce"}, {"GET", "/metadata/timestamp.json"}, {"POST", "/v1/rollouts/r/pause"}} {
		for range 3 {
			if code, _ := do(c.method, c.path); code != 200 {
				t.Errorf("%s %s with a replica down = %d; want 200 from another", c.method, c.path, code)
			}
		}
	}
	if got := asked[1].Load() + asked[2].Load() - before; got != 12 {
		t.Errorf("the two replicas up answered %d of 12 requests", got)
	}
	// A replica down and the database away at once: the device API's answer is a 503
	// with Retry-After whichever replica nginx tries last. Before 2 Dec, when the last
	// was the one down, nginx answered its own 502 without Retry-After (found from
	// outside: 878 of 2,529 check-ins in a 20 s outage with one of three replicas
	// killed).
	dbAway.Store(true)
	for _, path := range []string{"/v1/devices/checkin", "/v1/attest/enroll"} {
		for range 6 {
			if code, after := do("POST", path); code != 503 || after == "" {
				t.Errorf("%s with a replica down and the database away = %d, Retry-After %q; want 503 with Retry-After", path, code, after)
			}
		}
	}
}
