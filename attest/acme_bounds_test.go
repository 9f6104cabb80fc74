package attest

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// endless is a body that never ends.
type endless struct{}

func (endless) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'x'
	}
	return len(p), nil
}

// TestACMEServerCannotHoldTheDevice: what a hostile ACME server (or someone on the path
// to it) answers cannot park the device or fill its memory. A Retry-After of 31 years
// is waited at most a few seconds per retry, for a few retries; an endless error body is
// read to 1 MiB at most, on every retry, and the error repeats 1 KiB of it at most; and
// the whole exchange ends at its Timeout.
// Before, the first parked the agent in x/crypto/acme's backoff for good, before its
// first check-in, and 503s of 1 GiB took it to 5.4 GB resident (found by an outside
// audit, 1 Dec).
func TestACMEServerCannotHoldTheDevice(t *testing.T) {
	ak := &AKCertificate{PermanentIdentifier: "ek-test"}
	key := &Key{} // never used: every request fails before the challenge
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		timeout time.Duration
		within  time.Duration
	}{
		{"Retry-After of 31 years", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "1000000000")
			w.WriteHeader(http.StatusServiceUnavailable)
		}, time.Minute, 40 * time.Second},
		{"endless error body", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.Copy(w, endless{})
		}, time.Minute, 40 * time.Second},
		{"endless directory", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.Copy(w, io.MultiReader(strings.NewReader(`{"newNonce":"`), endless{}))
		}, time.Minute, 40 * time.Second},
		{"answers nothing until the timeout", func(w http.ResponseWriter, r *http.Request) {
			<-r.Context().Done()
		}, 2 * time.Second, 30 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var requests atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				requests.Add(1)
				tc.handler(w, r)
			}))
			defer srv.Close()
			var before, after goruntime.MemStats
			goruntime.ReadMemStats(&before)
			start := time.Now()
			_, err := RequestDeviceCert(context.Background(), DeviceCertRequest{DirectoryURL: srv.URL + "/directory",
				HTTP: srv.Client(), AK: ak, Key: key, Timeout: tc.timeout})
			took := time.Since(start)
			goruntime.ReadMemStats(&after)
			if err == nil || !errors.Is(err, ErrACME) {
				t.Fatalf("RequestDeviceCert = %v; want an ACME error", err)
			}
			if len(err.Error()) > 2*maxErrorText {
				t.Errorf("the error's text is %d bytes; want it bounded", len(err.Error()))
			}
			if took > tc.within {
				t.Errorf("RequestDeviceCert took %v; want under %v", took, tc.within)
			}
			if n := requests.Load(); n > 2*(acmeMaxRetries+1) {
				t.Errorf("%d requests; want the retries bounded", n)
			}
			if got := after.TotalAlloc - before.TotalAlloc; got > 64<<20 {
				t.Errorf("allocated %d MB; want the bodies bounded", got>>20)
			}
			t.Logf("%s: %v after %v, %d requests, %d MB allocated", tc.name, err, took.Round(time.Millisecond), requests.Load(), (after.TotalAlloc-before.TotalAlloc)>>20)
		})
	}
}

// TestACMEBoundsEdges: Retry-After: 0 does not end the retries (x/crypto/acme stops at
// a wait of 0), and a response of exactly the bound is read whole while one byte more
// fails (found by review).
func TestACMEBoundsEdges(t *testing.T) {
	resp := &http.Response{Header: http.Header{"Retry-After": {"0"}}}
	for n := 1; n <= acmeMaxRetries; n++ {
		if d := acmeBackoff(n, nil, resp); d <= 0 {
			t.Fatalf("acmeBackoff(%d, Retry-After: 0) = %v; want a wait, not the end of retries", n, d)
		}
	}
	if d := acmeBackoff(acmeMaxRetries+1, nil, resp); d >= 0 {
		t.Errorf("acmeBackoff past the retries = %v; want the end (-1)", d)
	}
	for _, c := range []struct {
		size int
		ok   bool
	}{{acmeMaxBodyBytes, true}, {acmeMaxBodyBytes + 1, false}} {
		body := &cappedBody{ReadCloser: io.NopCloser(strings.NewReader(strings.Repeat("x", c.size)))}
		b, err := io.ReadAll(body)
		if c.ok && (err != nil || len(b) != c.size) {
			t.Errorf("a body of exactly %d bytes: %d read, %v; want it whole", c.size, len(b), err)
		}
		if !c.ok && (err == nil || len(b) > acmeMaxBodyBytes) {
			t.Errorf("a body of %d bytes: %d read, %v; want an error within the bound", c.size, len(b), err)
		}
	}
}
