package reposerver

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repository"
)

// TestConnectionBounds: the whole server (Run) with --max-conns 6 and
// --max-conns-per-source 3, on its plain and TLS listeners together. A source holding
// three connections that send nothing (on the plain listener) gets no fourth (on the
// TLS one); another source is still served, metadata (quickhttp) and net/http alike;
// connections that send nothing fill the total, and then every source is refused until
// they close; the refusals are counted by bound. Before, every connection was accepted
// until the file descriptors ran out (19,990 idle connections, found from outside).
func TestConnectionBounds(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole server with an embedded step-ca")
	}
	_, plainAddr, tlsA, stop := startServer(t, Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0", MaxConns: 6, MaxConnsPerSource: 3})
	defer func() {
		if err := stop(); err != nil {
			t.Errorf("Run after cancel = %v", err)
		}
	}()
	plain, tlsAddr := plainAddr.String(), tlsA.String()

	// idle opens a connection from source that sends nothing, and says whether the
	// server kept it (true: not closed within wait) or closed it unserved. The server
	// accepts in the order the connections were made, so one not refused at once is
	// kept however late it is accepted, and one over a bound is refused whenever it is:
	// a refusal is waited for long, however loaded the machine.
	idle := func(source, addr string, wait time.Duration) (net.Conn, bool) {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}}
		c, err := d.Dial("tcp", addr)
		if err != nil {
			return nil, false // reset before the dial returned
		}
		t.Cleanup(func() { c.Close() })
		c.SetReadDeadline(time.Now().Add(wait))
		_, err = c.Read(make([]byte, 1))
		var ne net.Error
		return c, errors.As(err, &ne) && ne.Timeout()
	}
	const short, long = 300 * time.Millisecond, 8 * time.Second
	// get fetches path on the plain listener from source, on a connection of its own
	// (Connection: close), and returns once the server has closed it: the server gives
	// a connection's place back before it closes it (connlimit.Conn.Close), so the next
	// connection finds it free. (An http.Client returns at the end of the body, which
	// the server sends before it closes: a connection of the test's next step could
	// come before the close and be refused.)
	get := func(source, path string) (int, string, error) {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 10 * time.Second}
		c, err := d.Dial("tcp", plain)
		if err != nil {
			return 0, "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", path, plain); err != nil {
			return 0, "", err
		}
		raw, err := io.ReadAll(c) // up to the server's close
		if err != nil {
			return 0, "", err
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), nil)
		if err != nil {
			return 0, "", err
		}
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// holds waits until the server holds n connections besides the one that asks it
	// (edgeward_connections_open, asked from a source of its own), however loaded the
	// machine. A connection not closed within short may not have been accepted yet, and
	// the plain and TLS listeners accept apart: the TLS listener could take a later
	// connection of a source before the plain one took an earlier one.
	holds := func(n int) {
		t.Helper()
		want := fmt.Sprintf("edgeward_connections_open %d\n", n+1)
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			code, body, err := get("127.0.0.5", "/metrics")
			if err == nil && code == http.StatusOK && strings.Contains(body, want) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the server does not hold %d connections within 20 s: /metrics = %d, %v, open: %q", n, code, err, metricLine(body, "edgeward_connections_open"))
			}
		}
	}

	var held []net.Conn
	for i := range 3 {
		c, kept := idle("127.0.0.1", plain, short)
		if !kept {
			t.Fatalf("idle connection %d of 127.0.0.1 refused under its bound of 3", i)
		}
		held = append(held, c)
	}
	holds(3)
	if _, kept := idle("127.0.0.1", tlsAddr, long); kept {
		t.Fatal("a fourth connection of 127.0.0.1 (on the TLS listener) was kept; want it refused: the source's bound is the listeners' together")
	}
	for _, path := range []string{"/metadata/timestamp.json", "/healthz"} {
		if code, _, err := get("127.0.0.2", path); err != nil || code != http.StatusOK {
			t.Fatalf("GET %s from another source while 127.0.0.1 is at its bound = %d, %v; want 200", path, code, err)
		}
	}
	for i := range 3 {
		c, ok := idle("127.0.0.3", plain, short)
		if !ok {
			t.Fatalf("idle connection %d of 127.0.0.3 refused beside 127.0.0.1's 3; want 3 kept (the total bound of 6)", i)
		}
		held = append(held, c)
	}
	if _, ok := idle("127.0.0.3", plain, long); ok {
		t.Fatal("a seventh idle connection was kept; want it refused (the total bound of 6)")
	}
	if code, _, err := get("127.0.0.4", "/healthz"); err == nil {
		t.Fatalf("GET from a new source at the total bound = %d; want the connection refused", code)
	}
	for _, c := range held {
		c.Close()
	}
	var body string
	deadline := time.Now().Add(10 * time.Second)
	for {
		code, b, err := get("127.0.0.4", "/metrics")
		if err == nil && code == http.StatusOK {
			body = b
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics after the idle connections closed = %d, %v", code, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, want := range []string{`edgeward_connections_refused_total{bound="source"} 1`, `edgeward_connections_refused_total{bound="total"}`, "edgeward_connections_open "} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// TestRefusalSummariesRecordedAtShutdown: the refusal windows still open when the
// server stops are summarised in the audit log before it closes (before, the flush ran
// in a goroutine nothing waited for, with an ended context: of 4 shutdowns after a
// flood, 3 lost the summary, found from outside).
func TestRefusalSummariesRecordedAtShutdown(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole server")
	}
	dir, addr, _, stop := startServer(t, Config{Listen: "127.0.0.1:0", PlainDevices: true})
	for i := range 20 {
		resp, err := http.Post("http://"+addr.String()+"/v1/devices/checkin", "application/json", strings.NewReader(`{"device_id":"dev-1","nonce":"AAAA"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("refused check-in %d: %s; want 401", i, resp.Status)
		}
	}
	if err := stop(); err != nil {
		t.Fatalf("Run after cancel = %v", err)
	}
	repo, err := repository.Open(repository.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	l, db, err := OpenAudit(context.Background(), repo)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sums, err := l.Records(context.Background(), audit.Query{Kind: "attestation.rejected.summary"})
	var sum struct{ Refused int }
	if err != nil || len(sums) != 1 || json.Unmarshal(sums[0].Data, &sum) != nil || sum.Refused != 19 {
		t.Fatalf("summaries after the shutdown = %+v, %v; want one counting the 19 refusals after the first", sums, err)
	}
}

// metricLine is the line of /metrics body that starts with name ("" for none).
func metricLine(body, name string) string {
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, name) {
			return l
		}
	}
	return ""
}
