package deviceapi

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeward/edgeward/internal/wire"
)

func TestClientErrors(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case wire.PathNonce:
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte(`{"error":"busy"}`))
		default:
			w.WriteHeader(http.StatusForbidden)
			w.Write([]byte(`{"error":"evidence rejected: signature_invalid"}`))
		}
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL}
	_, err := c.Nonce(context.Background(), "d")
	var e *Error
	if !errors.As(err, &e) || e.Status != 503 || e.Message != "busy" || !IsRetryable(err) {
		t.Fatalf("Nonce = %v; want a retryable 503 'busy'", err)
	}
	_, err = c.CheckIn(context.Background(), &wire.CheckInRequest{DeviceID: "d"})
	if !errors.As(err, &e) || e.Status != 403 || IsRetryable(err) {
		t.Fatalf("CheckIn = %v; want a final 403", err)
	}
	srv.Close()
	if _, err := c.Nonce(context.Background(), "d"); err == nil || !IsRetryable(err) {
		t.Fatalf("Nonce to a closed server = %v; want a retryable error", err)
	}
}
