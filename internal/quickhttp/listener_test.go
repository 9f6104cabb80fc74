package quickhttp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// answerQ answers GET /q* with the path as body and leaves everything else to net/http.
func answerQ(dst []byte, r *Request, date []byte) ([]byte, []byte, bool) {
	if !strings.HasPrefix(string(r.Path), "/q") {
		return nil, nil, false
	}
	body := []byte("quick " + string(r.Path))
	if string(r.Path) == "/q/big" {
		body = []byte(strings.Repeat("b", 3*flushAt))
	}
	dst = fmt.Appendf(dst, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nDate: %s\r\n\r\n", len(body), date)
	return dst, body, true
}

// serveBoth listens on loopback with answerQ in front of a net/http server that answers
// "net/http METHOD PATH BODY".
func serveBoth(t *testing.T, cfg Config, h http.Handler) (*Listener, string) {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(inner, answerQ, cfg)
	if h == nil {
		h = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b, _ := io.ReadAll(r.Body)
			fmt.Fprintf(w, "net/http %s %s %s", r.Method, r.URL.Path, b)
		})
	}
	hs := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { hs.Serve(l); close(done) }()
	t.Cleanup(func() { hs.Close(); <-done })
	return l, inner.Addr().String()
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// readBodies reads n responses from c and returns their bodies.
func readBodies(t *testing.T, c net.Conn, n int) []string {
	t.Helper()
	br := bufio.NewReader(c)
	var got []string
	for range n {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("after %q: %v", got, err)
		}
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		if resp.Header.Get("Date") == "" {
			t.Errorf("response %q has no Date", b)
		}
		got = append(got, string(b))
	}
	return got
}

// TestHandOverKeepsOrderAndBytes: pipelined requests are answered in order, those this
// package answers and those net/http answers after the hand-over, with the bytes read
// before it (a body included) given to net/http.
func TestHandOverKeepsOrderAndBytes(t *testing.T) {
	_, addr := serveBoth(t, Config{}, nil)
	c := dial(t, addr)
	req := "GET /q1 HTTP/1.1\r\nHost: a\r\n\r\n" +
		"GET /q2 HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\n" +
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello" +
		"GET /q3 HTTP/1.1\r\nHost: a\r\n\r\n" // net/http's now: the connection was handed over
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	got := readBodies(t, c, 4)
	want := []string{"quick /q1", "quick /q2", "net/http POST /p hello", "net/http GET /q3 "}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestResponderDeclines: a request the responder declines is net/http's, and so is the
// rest of its connection.
func TestResponderDeclines(t *testing.T) {
	_, addr := serveBoth(t, Config{}, nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\n\r\nGET /other HTTP/1.1\r\nHost: a\r\n\r\nGET /q HTTP/1.1\r\nHost: a\r\n\r\n")
	got := readBodies(t, c, 3)
	if want := "quick /q|net/http GET /other |net/http GET /q "; strings.Join(got, "|") != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

// TestLongRequestHandedOver: a request longer than the buffer is read by net/http, in
// full, with its own limits.
func TestLongRequestHandedOver(t *testing.T) {
	_, addr := serveBoth(t, Config{}, nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\nUser-Agent: "+strings.Repeat("u", 2*bufSize)+"\r\n\r\nGET /q HTTP/1.1\r\nHost: a\r\n\r\n")
	if got := readBodies(t, c, 2); strings.Join(got, "|") != "net/http GET /q |net/http GET /q " {
		t.Fatalf("got %q", got)
	}
}

// TestSlowClientAnswered: a request arriving a few bytes at a time is answered here.
func TestSlowClientAnswered(t *testing.T) {
	_, addr := serveBoth(t, Config{}, nil)
	c := dial(t, addr)
	req := "GET /q/slow HTTP/1.1\r\nHost: a\r\nUser-Agent: x\r\n\r\n"
	for i := 0; i < len(req); i += 3 {
		io.WriteString(c, req[i:min(i+3, len(req))])
		time.Sleep(time.Millisecond)
	}
	if got := readBodies(t, c, 1); got[0] != "quick /q/slow" {
		t.Fatalf("got %q", got)
	}
}

// TestLargeBodyAndBurst: a body larger than the gathering buffer goes out whole, after
// the responses gathered before it.
func TestLargeBodyAndBurst(t *testing.T) {
	_, addr := serveBoth(t, Config{}, nil)
	c := dial(t, addr)
	io.WriteString(c, "GET /q1 HTTP/1.1\r\nHost: a\r\n\r\nGET /q/big HTTP/1.1\r\nHost: a\r\n\r\nGET /q2 HTTP/1.1\r\nHost: a\r\n\r\n")
	got := readBodies(t, c, 3)
	if got[0] != "quick /q1" || got[1] != strings.Repeat("b", 3*flushAt) || got[2] != "quick /q2" {
		t.Fatalf("got %d responses of %d, %d, %d bytes", len(got), len(got[0]), len(got[1]), len(got[2]))
	}
}

// expectClosed waits for the server to close c without sending anything.
func expectClosed(t *testing.T, c net.Conn, within time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(within))
	n, err := c.Read(make([]byte, 1))
	if n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read %d bytes, %v: want the connection closed (EOF)", n, err)
	}
}

// TestTimeouts: an idle connection is closed after IdleTimeout; a request whose header
// does not come whole within HeaderTimeout of its first bytes is closed without an
// answer, as net/http does.
func TestTimeouts(t *testing.T) {
	_, addr := serveBoth(t, Config{IdleTimeout: 300 * time.Millisecond, HeaderTimeout: 200 * time.Millisecond}, nil)
	t.Run("idle after a request", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\n\r\n")
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.ReadAll(resp.Body)
		start := time.Now()
		expectClosed(t, c, 5*time.Second)
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Fatalf("closed after %v, before the idle timeout", d)
		}
	})
	t.Run("header never ends", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\nUser-")
		start := time.Now()
		expectClosed(t, c, 5*time.Second)
		if d := time.Since(start); d < 100*time.Millisecond {
			t.Fatalf("closed after %v, before the header timeout", d)
		}
	})
	t.Run("trickle does not extend the header timeout", func(t *testing.T) {
		c := dial(t, addr)
		io.WriteString(c, "GET /q HTTP/1.1\r\n")
		start := time.Now()
		done := make(chan struct{})
		go func() {
			defer close(done)
			for range 50 { // 50 × 20 ms: far beyond the 200 ms timeout
				if _, err := io.WriteString(c, "X"); err != nil {
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
		}()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(make([]byte, 1))
		if n != 0 || err == nil {
			t.Fatalf("read %d bytes, %v: want the connection closed", n, err)
		}
		if d := time.Since(start); d > 900*time.Millisecond {
			t.Fatalf("closed after %v: a trickle kept the header open", d)
		}
		<-done
	})
}

// TestCloseClosesServedConnections: Close ends the connections still served here; Accept
// then fails with net.ErrClosed.
func TestCloseClosesServedConnections(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(inner, answerQ, Config{})
	c := dial(t, inner.Addr().String())
	io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\n\r\n")
	readBodies(t, c, 1)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	expectClosed(t, c, 5*time.Second)
	if _, err := l.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if _, err := net.Dial("tcp", inner.Addr().String()); err == nil {
		t.Fatal("the inner listener still accepts")
	}
}

// TestHandedConnection: a handed connection reads the pending bytes first, then the
// socket, and keeps a *net.TCPConn's ReadFrom (sendfile) and CloseWrite.
func TestHandedConnection(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := Listen(inner, answerQ, Config{})
	defer l.Close()
	c := dial(t, inner.Addr().String())
	io.WriteString(c, "PUT /x HTTP/1.1\r\n")
	hc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	io.WriteString(c, "rest")
	got := make([]byte, 64)
	n, _ := io.ReadAtLeast(hc, got, len("PUT /x HTTP/1.1\r\nrest"))
	if string(got[:n]) != "PUT /x HTTP/1.1\r\nrest" {
		t.Fatalf("handed connection reads %q", got[:n])
	}
	if _, ok := hc.(io.ReaderFrom); !ok {
		t.Fatal("handed connection has no ReadFrom")
	}
	file := filepath.Join(t.TempDir(), "f")
	os.WriteFile(file, []byte("file contents"), 0o600)
	fh, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	if _, err := hc.(io.ReaderFrom).ReadFrom(fh); err != nil {
		t.Fatal(err)
	}
	if err := hc.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "file contents" {
		t.Fatalf("client read %q, %v", b, err)
	}
}
