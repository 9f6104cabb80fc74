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
	"sync/atomic"
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

// bothServers serves the same handler through net/http alone and through a Listener
// with the same timeouts, and returns their addresses.
func bothServers(t *testing.T, cfg Config) (plain, quick string) {
	t.Helper()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintf(w, "net/http %s", r.URL.Path) })
	for _, q := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		if q {
			ln = Listen(ln, answerQ, cfg)
			quick = addr
		} else {
			plain = addr
		}
		hs := &http.Server{Handler: h, ReadHeaderTimeout: cfg.HeaderTimeout, IdleTimeout: cfg.IdleTimeout}
		done := make(chan struct{})
		go func() { hs.Serve(ln); close(done) }()
		t.Cleanup(func() { hs.Close(); <-done })
	}
	return plain, quick
}

// TestSilentConnectionHeldAsByNetHTTP: a connection that sends nothing is closed after
// HeaderTimeout from its accept, as net/http closes it, not after IdleTimeout.
func TestSilentConnectionHeldAsByNetHTTP(t *testing.T) {
	plain, quick := bothServers(t, Config{HeaderTimeout: 300 * time.Millisecond, IdleTimeout: 5 * time.Second})
	held := func(addr string) time.Duration {
		c := dial(t, addr)
		start := time.Now()
		expectClosed(t, c, 10*time.Second)
		return time.Since(start)
	}
	dp, dq := held(plain), held(quick)
	if dq > dp+time.Second {
		t.Fatalf("a silent connection is held %v; net/http holds it %v", dq, dp)
	}
}

// TestPipelinedRequestHasItsOwnHeaderTimeout: a request whose first bytes came with the
// end of the previous one gets a whole HeaderTimeout of its own.
func TestPipelinedRequestHasItsOwnHeaderTimeout(t *testing.T) {
	plain, quick := bothServers(t, Config{HeaderTimeout: 400 * time.Millisecond, IdleTimeout: 5 * time.Second})
	for _, addr := range []string{plain, quick} {
		c := dial(t, addr)
		io.WriteString(c, "GET /q1 HTTP/1.1\r\n")
		time.Sleep(300 * time.Millisecond)
		io.WriteString(c, "Host: a\r\n\r\nGET /q2 HTTP/1.1\r\n")
		time.Sleep(300 * time.Millisecond) // 600 ms after /q1 began, 300 ms into /q2
		io.WriteString(c, "Host: a\r\n\r\n")
		got := readBodies(t, c, 2)
		if !strings.HasSuffix(got[1], "/q2") && !strings.HasSuffix(got[1], "/q2 ") {
			t.Fatalf("%s: %q", addr, got)
		}
	}
}

// TestShortIdleTimeoutKeepsActiveConnections: with an IdleTimeout shorter than the
// re-arming period, a connection that keeps asking is not cut off.
func TestShortIdleTimeoutKeepsActiveConnections(t *testing.T) {
	_, addr := serveBoth(t, Config{HeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond}, nil)
	c := dial(t, addr)
	for range 10 { // one request every 100 ms for a second
		io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\n\r\n")
		readBodies(t, c, 1)
		time.Sleep(100 * time.Millisecond)
	}
}

// smallSendBuffers gives every accepted connection a small send buffer, so that a large
// response waits on its reader rather than on the kernel's buffering.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(16 << 10)
	}
	return c, err
}

// TestSlowReaderGetsTheWholeBody: a client that reads a large response slowly but
// steadily, taking several IdleTimeouts in all, gets all of it; the write deadline
// bounds each chunk, not the whole body.
func TestSlowReaderGetsTheWholeBody(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const size = 1 << 20
	huge := []byte(strings.Repeat("h", size))
	l := Listen(smallSendBuffers{inner}, func(dst []byte, r *Request, date []byte) ([]byte, []byte, bool) {
		return fmt.Appendf(dst, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\nDate: %s\r\n\r\n", size, date), huge, true
	}, Config{IdleTimeout: 300 * time.Millisecond})
	defer l.Close()
	c := dial(t, inner.Addr().String())
	c.(*net.TCPConn).SetReadBuffer(16 << 10)
	io.WriteString(c, "GET /huge HTTP/1.1\r\nHost: a\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4<<10), nil)
	if err != nil {
		t.Fatal(err)
	}
	var n int
	buf := make([]byte, 16<<10)
	start := time.Now()
	for {
		m, err := resp.Body.Read(buf)
		n += m
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d bytes in %v: %v", n, time.Since(start), err)
		}
		time.Sleep(10 * time.Millisecond) // at most 1.6 MB/s: the body takes twice IdleTimeout or more
	}
	if n != size {
		t.Fatalf("read %d bytes, want %d", n, size)
	}
	t.Logf("%d bytes in %v with IdleTimeout 300ms", n, time.Since(start))
}

// failingListener fails every Accept once fail is set; it records its Close.
type failingListener struct {
	net.Listener
	fail, closed atomic.Bool
}

func (f *failingListener) Accept() (net.Conn, error) {
	c, err := f.Listener.Accept()
	if f.fail.Load() {
		if c != nil {
			c.Close()
		}
		return nil, errors.New("permanent accept failure")
	}
	return c, err
}

func (f *failingListener) Close() error { f.closed.Store(true); return f.Listener.Close() }

// TestCloseAfterAcceptError: after the inner listener fails for good, Serve returns its
// error, and the Close it makes still closes the inner listener and ends the
// connections served here.
func TestCloseAfterAcceptError(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &failingListener{Listener: inner}
	l := Listen(fl, answerQ, Config{})
	hs := &http.Server{Handler: http.NotFoundHandler()}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()
	c := dial(t, inner.Addr().String())
	io.WriteString(c, "GET /q1 HTTP/1.1\r\nHost: a\r\n\r\n")
	readBodies(t, c, 1)
	fl.fail.Store(true)
	dial(t, inner.Addr().String()) // its accept fails
	if err := <-served; err == nil || !strings.Contains(err.Error(), "permanent accept failure") {
		t.Fatalf("Serve = %v; want the accept error", err)
	}
	if !fl.closed.Load() {
		t.Error("the inner listener was not closed")
	}
	expectClosed(t, c, 5*time.Second)
}

// TestHandedOverHeaderKeepsItsDeadline: a header longer than the buffer, trickled, is
// handed to net/http part way; its HeaderTimeout still runs from its first byte, as with
// net/http alone, rather than starting again at the hand-over.
func TestHandedOverHeaderKeepsItsDeadline(t *testing.T) {
	const timeout = 2 * time.Second
	plain, quick := bothServers(t, Config{HeaderTimeout: timeout, IdleTimeout: 5 * time.Second})
	held := func(addr string) time.Duration {
		c := dial(t, addr)
		start := time.Now()
		io.WriteString(c, "GET /q HTTP/1.1\r\nHost: a\r\nX-Long: ")
		done := make(chan struct{})
		go func() {
			defer close(done)
			// 4,400 bytes over 1.6 s (past the buffer before the timeout), then one a
			// tick: the header never ends.
			for i := 0; i < 200; i++ {
				n := 1
				if i < 16 {
					n = 275
				}
				if _, err := io.WriteString(c, strings.Repeat("x", n)); err != nil {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
		}()
		expectClosed(t, c, 15*time.Second)
		d := time.Since(start)
		c.Close()
		<-done
		return d
	}
	dp, dq := held(plain), held(quick)
	// Handed over at about 1.6 s, the old code held it until about 3.6 s.
	if dq > timeout+800*time.Millisecond || dq > dp+800*time.Millisecond {
		t.Fatalf("a trickled long header is held %v through the hand-over; net/http alone holds it %v (HeaderTimeout %v)", dq, dp, timeout)
	}
}
