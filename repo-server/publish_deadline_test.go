package reposerver

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repository"
)

// TestPublishUploadDeadlines: a publication's body is bounded like every other until
// the request is authenticated and checked, then by BodyTimeout per read:
//   - a refused publish whose body never comes is answered within BodyTimeout (net/http
//     drains an unread body before answering; without a deadline that held the
//     connection, and what the server set aside for it, for ever);
//   - an authenticated upload that stalls ends after BodyTimeout;
//   - one that keeps coming, however slowly, is published though it takes several
//     BodyTimeouts in all.
func TestPublishUploadDeadlines(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tok := f.publisher()
	f.srv.cfg.BodyTimeout = 300 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { f.srv.ServeListenerWith(ctx, ln, f.srv.Handler()); close(done) }()
	defer func() { cancel(); <-done }()

	const size = 1000
	head := func(version, auth string) string {
		h := fmt.Sprintf("POST /v1/publish?kind=model&name=iris&version=%s&ext=.onnx HTTP/1.1\r\nHost: repo\r\nContent-Length: %d\r\n", version, size)
		if auth != "" {
			h += "Authorization: Bearer " + auth + "\r\n"
		}
		return h + "\r\n"
	}
	dial := func() (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(5 * time.Second))
		return c, bufio.NewReader(c)
	}

	t.Run("refused, body never sent", func(t *testing.T) {
		c, br := dial()
		io.WriteString(c, head("1.0.0", ""))
		start := time.Now()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("no answer %v after a refused publish whose body never came: %v", time.Since(start), err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("status %d; want 401", resp.StatusCode)
		}
	})
	t.Run("authenticated, stalls", func(t *testing.T) {
		c, br := dial()
		io.WriteString(c, head("1.0.1", tok)+strings.Repeat("m", 10))
		start := time.Now()
		resp, err := http.ReadResponse(br, nil)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 400 {
				t.Fatalf("a stalled upload got %d", resp.StatusCode)
			}
		}
		// Answered with an error, or the connection closed: either way, not held.
		if d := time.Since(start); d > 3*time.Second {
			t.Fatalf("a stalled upload was held %v", d)
		}
	})
	t.Run("authenticated, slow and steady", func(t *testing.T) {
		c, br := dial()
		c.SetDeadline(time.Now().Add(20 * time.Second))
		io.WriteString(c, head("1.0.2", tok))
		start := time.Now()
		for sent := 0; sent < size; sent += 100 { // 100 bytes every 100 ms: a second in all
			time.Sleep(100 * time.Millisecond)
			if _, err := io.WriteString(c, strings.Repeat("s", 100)); err != nil {
				t.Fatalf("after %d bytes, %v: %v", sent, time.Since(start), err)
			}
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("slow upload: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusCreated {
			t.Fatalf("slow upload of %v: %d %s; want 201", time.Since(start), resp.StatusCode, b)
		}
	})
}
