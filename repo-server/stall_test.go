package reposerver

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// smallSendBuffers gives each accepted connection a small send buffer, so that a large
// answer waits on its reader rather than on the kernel's buffering.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		c.(*net.TCPConn).SetWriteBuffer(32 << 10)
	}
	return c, err
}

// TestTargetDownloadStall: a target download whose client stops taking bytes is cut off
// after StallTimeout (before, it held its goroutine, socket and open blob for as long
// as the client wished); one whose client reads slowly but steadily gets the whole
// target though it takes several StallTimeouts.
func TestTargetDownloadStall(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	content := make([]byte, 4<<20)
	rnd := rand.New(rand.NewPCG(3, 4))
	for i := range content {
		content[i] = byte(rnd.Uint32())
	}
	res, err := f.publish(artifact.KindModel, "big", "1.0.0", ".onnx", content, nil)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.cfg.StallTimeout = 400 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { f.srv.ServeListenerWith(ctx, smallSendBuffers{inner}, f.srv.Handler()); close(done) }()
	defer func() { cancel(); <-done }()
	get := func() (net.Conn, *http.Response) {
		c, err := net.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.(*net.TCPConn).SetReadBuffer(32 << 10)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET /targets/%s HTTP/1.1\r\nHost: repo\r\n\r\n", repository.ConsistentTargetPath(res.Path, res.SHA256))
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4<<10), nil)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET target: %v, %v", resp, err)
		}
		return c, resp
	}

	t.Run("stops reading", func(t *testing.T) {
		_, resp := get()
		if _, err := io.ReadFull(resp.Body, make([]byte, 64<<10)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second) // 5 StallTimeouts without reading
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && 64<<10+n == int64(len(content)) {
			t.Fatal("a client that stopped reading for 5 stall timeouts still got the whole target")
		}
	})
	t.Run("slow and steady", func(t *testing.T) {
		_, resp := get()
		buf := make([]byte, 256<<10)
		var n int
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
			time.Sleep(10 * time.Millisecond) // slow: the 4 MiB take more than 2 StallTimeouts
		}
		if n != len(content) {
			t.Fatalf("read %d bytes of %d", n, len(content))
		}
		t.Logf("%d bytes in %v with StallTimeout 400ms", n, time.Since(start))
	})
}

// lockedBuffer is a bytes.Buffer safe for concurrent use (a logger's output).
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// TestAuditExportStall: an audit export whose client stops reading is cut off after
// StallTimeout, and the export's query ends (the handler returns, logging why). Before,
// it waited on the client for as long as the client wished, holding its read
// transaction: with sqlite the WAL could not be checkpointed and grew without bound.
func TestAuditExportStall(t *testing.T) {
	o := newOpFixture(t)
	ctx, cancel := context.WithCancel(context.Background())
	pad := strings.Repeat("x", 4<<10)
	for i := range 200 { // about 1 MiB of export: far more than the sockets buffer
		if err := o.srv.AuditEvent(ctx, "test", "test.bulk", strconv.Itoa(i), map[string]any{"pad": pad}); err != nil {
			t.Fatal(err)
		}
	}
	var logs lockedBuffer
	o.srv.log = slog.New(slog.NewTextHandler(&logs, nil))
	o.srv.cfg.StallTimeout = 300 * time.Millisecond
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { o.srv.ServeListenerWith(ctx, smallSendBuffers{inner}, o.srv.Handler()); close(done) }()
	defer func() { cancel(); <-done }()

	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.(*net.TCPConn).SetReadBuffer(32 << 10)
	c.SetDeadline(time.Now().Add(30 * time.Second))
	fmt.Fprintf(c, "GET /v1/audit/export HTTP/1.1\r\nHost: repo\r\nAuthorization: Bearer %s\r\n\r\n", o.tok[fleet.RoleSecurityAdmin])
	resp, err := http.ReadResponse(bufio.NewReaderSize(c, 4<<10), nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /v1/audit/export: %v, %v", resp, err)
	}
	if _, err := io.ReadFull(resp.Body, make([]byte, 16<<10)); err != nil {
		t.Fatal(err)
	}
	// Stop reading: the export must end on its own within a few stall timeouts.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "audit export") {
		if time.Now().After(deadline) {
			t.Fatalf("the audit export still runs 10 s after its client stopped reading (StallTimeout %v); log:\n%s", o.srv.cfg.StallTimeout, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	rest, _ := io.ReadAll(resp.Body)
	if bytes.Contains(rest, []byte(`"checkpoint"`)) {
		t.Error("a client that stopped reading past the stall timeout still got the whole export")
	}
}
