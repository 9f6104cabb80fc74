package attestca

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
)

// TestStoreUnavailableIs503: an enrollment whose store cannot take it now (its
// database away, its disk full: ErrUnavailable) is answered 503 with Retry-After, the
// full disk named and the store's own error kept out of the answer. Before, it was
// 500 "internal error" (found from outside: a device enrolling on a full disk).
func TestStoreUnavailableIs503(t *testing.T) {
	ca := &CA{cfg: Config{Logger: slog.New(slog.DiscardHandler)}}
	for _, c := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("attestca: store challenge: %w: %w: fleet: database or disk is full (13)", ErrUnavailable, syscall.ENOSPC), "try again later (the server's disk is full)"},
		{fmt.Errorf("attestca: take challenge: %w: dial tcp 10.0.0.5:5432: connection refused", ErrUnavailable), "try again later"},
	} {
		rec := httptest.NewRecorder()
		ca.respond(rec, httptest.NewRequest("POST", "/enroll", nil), nil, c.err)
		body := rec.Body.String()
		if rec.Code != http.StatusServiceUnavailable || rec.Header().Get("Retry-After") == "" || !strings.Contains(body, c.want) || strings.Contains(body, "10.0.0.5") || strings.Contains(body, "(13)") {
			t.Errorf("respond(%v) = %d, Retry-After %q, %s; want 503 with Retry-After, %q, no store error", c.err, rec.Code, rec.Header().Get("Retry-After"), body, c.want)
		}
	}
	rec := httptest.NewRecorder()
	ca.respond(rec, httptest.NewRequest("POST", "/enroll", nil), nil, errors.New("boom"))
	if rec.Code != http.StatusInternalServerError {
		t.Errorf("respond(another error) = %d; want 500", rec.Code)
	}
}
