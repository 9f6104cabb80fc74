package reposerver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// TestDeviceAPIAcceptsWhatTheStoreKeeps: the device API's check of a device ID is the
// fleet store's, on edge cases of both old checks (the API used to accept '@' and up
// to 256 characters, which the store refused).
func TestDeviceAPIAcceptsWhatTheStoreKeeps(t *testing.T) {
	for _, id := range []string{"a@b", strings.Repeat("a", 129), strings.Repeat("a", 256), "urn:ek:sha256:aYek/1JU+P74=", strings.Repeat("a", 128), "-a", "a_b"} {
		if got, want := isDeviceID(id), fleet.IsDeviceID(id); got != want {
			t.Errorf("isDeviceID(%q) = %v; the store says %v", id, got, want)
		}
	}
	if isDeviceID("a@b") || isDeviceID(strings.Repeat("a", 129)) {
		t.Error("the device API accepts IDs the store refuses")
	}
}

// TestReadBody: a body is read whole whether its length is given or not, within the
// limit, and one over the limit is an *http.MaxBytesError; an honest Content-Length
// costs no reallocation.
func TestReadBody(t *testing.T) {
	const max = 4096
	for _, tc := range []struct {
		size     int
		length   bool // Content-Length given
		tooLarge bool
	}{{0, true, false}, {1952, true, false}, {1952, false, false}, {max, true, false}, {max, false, false}, {max + 1, true, true}, {max + 1, false, true}, {3 * max, false, true}} {
		body := strings.Repeat("x", tc.size)
		r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(body)))
		r.ContentLength = -1
		if tc.length {
			r.ContentLength = int64(tc.size)
		}
		got, err := readBody(httptest.NewRecorder(), r, max)
		var mbe *http.MaxBytesError
		switch {
		case tc.tooLarge && !errors.As(err, &mbe):
			t.Errorf("readBody(%d bytes, length %v) = %d bytes, %v; want an *http.MaxBytesError", tc.size, tc.length, len(got), err)
		case !tc.tooLarge && (err != nil || string(got) != body):
			t.Errorf("readBody(%d bytes, length %v) = %d bytes, %v; want the body", tc.size, tc.length, len(got), err)
		case !tc.tooLarge && tc.length && tc.size > 0 && cap(got) != tc.size+1:
			t.Errorf("readBody(%d bytes, length given) grew its buffer to %d", tc.size, cap(got))
		}
	}
}

// TestReadBodyDoesNotTrustTheLength: a Content-Length is a claim made before the sender
// is authenticated. A request claiming 8 MiB that sends 2 bytes costs about the
// preallocation cap, not 8 MiB; a body that really is larger than the cap is still read
// whole.
func TestReadBodyDoesNotTrustTheLength(t *testing.T) {
	const max = 8 << 20
	r := httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader("{}")))
	r.ContentLength = max
	got, err := readBody(httptest.NewRecorder(), r, max)
	if err != nil || string(got) != "{}" {
		t.Fatalf("readBody = %q, %v", got, err)
	}
	if cap(got) > readBodyPrealloc+1 {
		t.Errorf("a body claiming %d bytes got a %d-byte buffer before any arrived", max, cap(got))
	}
	big := strings.Repeat("y", 3*readBodyPrealloc)
	r = httptest.NewRequest(http.MethodPost, "/", io.NopCloser(strings.NewReader(big)))
	r.ContentLength = int64(len(big))
	if got, err := readBody(httptest.NewRecorder(), r, max); err != nil || string(got) != big {
		t.Fatalf("readBody(%d honest bytes) = %d bytes, %v", len(big), len(got), err)
	}
}

// TestSlowBodyIsCutOff: a client that sends a request's headers and then trickles its
// body (or stops) loses the connection after BodyTimeout; it used to hold it for as long
// as it liked, whatever the server had set aside for it.
func TestSlowBodyIsCutOff(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	srv, err := NewServer(ServerConfig{Repo: f.repo, DB: f.db, BodyTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.ServeListener(ctx, ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /v1/devices/nonce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"device_id\":")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	start := time.Now()
	_, err = io.Copy(io.Discard, c) // whatever the answer, then the end of the connection
	if err != nil {
		t.Fatalf("connection with a stalled body still open after %v: %v", time.Since(start), err)
	}
}

// TestBodyDeadlineLiftedOnceRead: the body deadline ends with the body. A handler that
// works longer than BodyTimeout after reading its body keeps its context (net/http reads
// the connection in the background once the body is done, and a deadline passing there
// would cancel the request; net/http lifts it first, and this test keeps it so).
func TestBodyDeadlineLiftedOnceRead(t *testing.T) {
	srv := &Server{cfg: ServerConfig{BodyTimeout: 100 * time.Millisecond}}
	hs := httptest.NewServer(srv.bodyDeadline(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.ReadAll(r.Body)
		time.Sleep(400 * time.Millisecond)
		if err := r.Context().Err(); err != nil {
			io.WriteString(w, "cancelled: "+err.Error())
			return
		}
		io.WriteString(w, "ok")
	})))
	defer hs.Close()
	resp, err := http.Post(hs.URL+"/v1/anything", "application/json", strings.NewReader(`{"a":1}`))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Fatalf("handler after its body = %q; want ok (its context intact)", b)
	}
}

// TestLeaseHolderKnowsItLostTheLease: a lease lock's Held says whether the take under
// way still holds the lease; once another holder has it (this one stalled past its
// time), Held fails with fleet.ErrLeaseLost, so a repository change does not become
// visible (repository.Config.Held). The renewal used to discard what it got back.
func TestLeaseHolderKnowsItLostTheLease(t *testing.T) {
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()
	st, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), f.db))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := NewLeaseLock(st, LeasePublish, "replica-a", 300*time.Millisecond, nil, nil)
	if err := h.Held(ctx); !errors.Is(err, fleet.ErrLeaseLost) {
		t.Fatalf("Held before any take = %v; want ErrLeaseLost", err)
	}
	unlock, err := h.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := h.Held(ctx); err != nil {
		t.Fatalf("Held while held = %v", err)
	}
	// Another holder takes the lease over (as after this one stalled past its time).
	if _, err := st.DB().ExecContext(ctx, `UPDATE leases SET holder = 'replica-b/1', token = token + 1 WHERE name = ?`, LeasePublish); err != nil {
		t.Fatal(err)
	}
	if err := h.Held(ctx); !errors.Is(err, fleet.ErrLeaseLost) {
		t.Fatalf("Held after another replica took the lease = %v; want ErrLeaseLost", err)
	}
}
