package runtime

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
	"time"
)

// trickle returns its data a few bytes at a time, then err (io.EOF: the body's end).
type trickle struct {
	data []byte
	rnd  *rand.Rand
	err  error
}

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.data) == 0 {
		return 0, t.err
	}
	n := min(len(p), len(t.data), 1+t.rnd.IntN(5000))
	copy(p, t.data[:n])
	t.data = t.data[n:]
	return n, nil
}

// TestReadBodyKnownLength: a body of known length arrives whole whatever its size and
// however it is cut, a short one is an error, and one that is announced large but does
// not come costs its first 4 KiB, not its announced length.
func TestReadBodyKnownLength(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 1000, firstRead, firstRead + 1, 64 << 10, 1 << 20, 3<<20 + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		req := httptest.NewRequest("POST", "/", &trickle{data: bytes.Clone(data), rnd: rnd, err: io.EOF})
		req.ContentLength = int64(n)
		got, err := readBody(httptest.NewRecorder(), req, 16<<20, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read %d, %v", n, len(got), err)
		}
		// Into the caller's buffer when it is large enough.
		buf := make([]byte, n)
		req = httptest.NewRequest("POST", "/", &trickle{data: bytes.Clone(data), rnd: rnd, err: io.EOF})
		req.ContentLength = int64(n)
		if got, err := readBody(httptest.NewRecorder(), req, 16<<20, buf); err != nil || !bytes.Equal(got, data) || &got[0] != &buf[0] {
			t.Fatalf("%d bytes into a buffer: %v", n, err)
		}
	}

	short := httptest.NewRequest("POST", "/", &trickle{data: make([]byte, 100), rnd: rnd, err: io.EOF})
	short.ContentLength = 200
	if _, err := readBody(httptest.NewRecorder(), short, 16<<20, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a body shorter than its length: %v; want unexpected EOF", err)
	}

	stalled := errors.New("i/o timeout")
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	for range 4 {
		req := httptest.NewRequest("POST", "/", &trickle{data: make([]byte, 10), rnd: rnd, err: stalled})
		req.ContentLength = 16 << 20
		if _, err := readBody(httptest.NewRecorder(), req, 16<<20, nil); !errors.Is(err, stalled) {
			t.Fatalf("stalled body: %v", err)
		}
	}
	goruntime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 256<<10 {
		t.Errorf("4 bodies announced at 16 MiB that sent 10 bytes allocated %d bytes; want about 4 × 4 KiB", got)
	}
}

// TestReadBodyWithinBudget: the memory a body is read into is taken from the budget
// before it is allocated, as the body grows; a body is refused with errNoRoom once it
// would pass the bound; and whatever the error (no room, too large, short, stalled),
// nothing stays taken. Known and unknown (chunked) lengths alike.
func TestReadBodyWithinBudget(t *testing.T) {
	rnd := rand.New(rand.NewPCG(3, 4))
	body := func(n int, err error, known bool) *http.Request {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		req := httptest.NewRequest("POST", "/", &trickle{data: data, rnd: rnd, err: err})
		req.ContentLength = -1
		if known {
			req.ContentLength = int64(n)
		}
		return req
	}
	const limit = 4 << 20
	for _, known := range []bool{true, false} {
		b := &byteBudget{max: 3 << 20}
		// Fits: held covers the buffer, and stays taken until given back.
		got, held, err := readBodyWithin(httptest.NewRecorder(), body(1<<20+5, io.EOF, known), limit, nil, b)
		if err != nil || len(got) != 1<<20+5 || held < int64(len(got)) || held > 2*int64(len(got))+4096 || b.used.Load() != held {
			t.Fatalf("known=%v: read %d, held %d, used %d, %v", known, len(got), held, b.used.Load(), err)
		}
		// A second body that would pass the bound is refused; the first stays held.
		if _, _, err := readBodyWithin(httptest.NewRecorder(), body(2<<20, io.EOF, known), limit, nil, b); !errors.Is(err, errNoRoom) || !isBusy(err) {
			t.Fatalf("known=%v: body past the bound: %v; want errNoRoom", known, err)
		}
		if b.used.Load() != held || b.refused.Load() != 1 {
			t.Fatalf("known=%v: after a refusal used %d (want %d), refused %d", known, b.used.Load(), held, b.refused.Load())
		}
		b.give(held)
		// Errors leave nothing taken.
		stalled := errors.New("i/o timeout")
		short := func() *http.Request { // sends less than it announces, then stalls
			req := body(100<<10, stalled, known)
			if known {
				req.ContentLength++
			}
			return req
		}
		for name, req := range map[string]*http.Request{
			"stalled":   short(),
			"too large": body(limit+1, io.EOF, known),
		} {
			if _, _, err := readBodyWithin(httptest.NewRecorder(), req, limit, nil, &byteBudget{max: 64 << 20}); err == nil {
				t.Fatalf("known=%v %s: no error", known, name)
			}
		}
		for name, req := range map[string]*http.Request{
			"stalled":   short(),
			"too large": body(limit+1, io.EOF, known),
			"no room":   body(3<<20+1, io.EOF, known),
		} {
			if _, _, err := readBodyWithin(httptest.NewRecorder(), req, limit, nil, b); err == nil || b.used.Load() != 0 {
				t.Fatalf("known=%v %s: err %v, %d bytes still taken", known, name, err, b.used.Load())
			}
		}
	}
	// A body announced large that sends little takes firstRead, whether it is read into
	// a new buffer or into a pooled one of 64 KiB (the scratch of an earlier request).
	for _, buf := range [][]byte{nil, make([]byte, 0, 64<<10)} {
		b := &byteBudget{max: 64 << 20}
		stalled := errors.New("i/o timeout")
		req := httptest.NewRequest("POST", "/", &trickle{data: make([]byte, 10), rnd: rnd, err: stalled})
		req.ContentLength = 16 << 20
		done := make(chan struct{})
		reached := make(chan struct{})
		req.Body = io.NopCloser(&blockingReader{r: req.Body, at: 10, release: done, reached: reached})
		go func() {
			<-reached
			if got := b.used.Load(); got != firstRead {
				t.Errorf("buffer of %d: a 16 MiB body that sent 10 bytes holds %d bytes of the budget; want %d", cap(buf), got, firstRead)
			}
			close(done)
		}()
		readBodyWithin(httptest.NewRecorder(), req, 16<<20, buf, b)
		if b.used.Load() != 0 {
			t.Fatalf("after the stalled body: %d bytes taken", b.used.Load())
		}
	}
}

// blockingReader passes reads through until at bytes were read, then signals reached and
// waits for release before the next read.
type blockingReader struct {
	r       io.Reader
	at, n   int
	reached chan struct{}
	release chan struct{}
}

func (b *blockingReader) Read(p []byte) (int, error) {
	if b.n >= b.at && b.reached != nil {
		close(b.reached)
		b.reached = nil
		<-b.release
	}
	n, err := b.r.Read(p[:min(len(p), max(b.at-b.n, 1))])
	b.n += n
	return n, err
}

// TestIdleUploadsHoldLittle: 100 connections that announce a 1 MiB body and send none
// hold 4 KiB of the bound each (400 KiB of 1 MiB), so a real request is still served;
// when the first read took 64 KiB, 1,030 such connections held the default 64 MiB bound
// and every request was refused. Once they go, nothing stays taken.
func TestIdleUploadsHoldLittle(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadIris(t, r, "1.0.0")
	srv := httptest.NewServer(r.Handler())
	t.Cleanup(srv.Close)
	const idle = 100
	var conns []net.Conn
	t.Cleanup(func() { // before srv.Close, which waits for them
		for _, c := range conns {
			c.Close()
		}
	})
	for range idle {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		fmt.Fprintf(c, "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", 1<<20)
	}
	waitFor(t, "every idle upload read", func() bool { return r.bodies.used.Load() == idle*firstRead })
	resp, err := http.Post(srv.URL+"/v2/models/iris/infer", "application/json", strings.NewReader(irisRow))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("a request beside %d idle uploads: %d %s", idle, resp.StatusCode, got)
	}
	for _, c := range conns {
		c.Close()
	}
	waitFor(t, "the idle uploads' bytes given back", func() bool { return r.bodies.used.Load() == 0 })
}

// TestBodyReadFailuresAreCountedForWhatTheyAre: an upload whose connection ends before
// its announced length is counted as 499 (the client went away), not as a 400 nobody
// reads; one that stalls past the server's read timeout is a 408.
func TestBodyReadFailuresAreCountedForWhatTheyAre(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	srv := httptest.NewUnstartedServer(r.Handler())
	srv.Config.ReadTimeout = 500 * time.Millisecond
	srv.Start()
	t.Cleanup(srv.Close)
	partial := func(closeIt bool) string {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\":")
		if closeIt {
			c.(*net.TCPConn).CloseWrite()
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		status, _ := bufio.NewReader(c).ReadString('\n')
		return status
	}
	partial(true)
	if got := partial(false); !strings.Contains(got, " 408 ") {
		t.Errorf("a stalled upload was answered %q; want 408", got)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{`edgeward_runtime_requests_total{code="499",model="iris",version="1.0.0"} 1`, `edgeward_runtime_requests_total{code="408",model="iris",version="1.0.0"} 1`} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if strings.Contains(rec.Body.String(), `code="400"`) {
		t.Error("a failed upload was counted as 400")
	}
}
