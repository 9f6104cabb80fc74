package reposerver

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestFullDiskErrorsNameTheCause: a fleet write that failed for want of space is
// answered by the operator API 503 saying the database cannot take writes because its
// disk is full (before: "the fleet database is not answering"), and is passed to the
// attestation CA as ErrUnavailable with ENOSPC (503 with Retry-After there; before,
// 500 "internal error").
func TestFullDiskErrorsNameTheCause(t *testing.T) {
	full := fmt.Errorf("create token: %w", &os.PathError{Op: "write", Path: "fleet.db-wal", Err: syscall.ENOSPC})
	o := &operatorAPI{s: &Server{log: slog.New(slog.DiscardHandler)}}
	rec := httptest.NewRecorder()
	o.fail(rec, httptest.NewRequest("POST", "/v1/tokens", nil), "create token", full)
	if body := rec.Body.String(); rec.Code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot take writes (its disk is full)") || rec.Header().Get("Retry-After") == "" {
		t.Errorf("operator API on a full disk = %d %s (Retry-After %q); want 503 naming the full disk", rec.Code, body, rec.Header().Get("Retry-After"))
	}
	if err := caUnavailable(full); !errors.Is(err, attestca.ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("caUnavailable(%v) = %v; want ErrUnavailable and ENOSPC", full, err)
	}
	if err := caUnavailable(fleet.ErrClosed); !errors.Is(err, attestca.ErrUnavailable) || errors.Is(err, syscall.ENOSPC) {
		t.Errorf("caUnavailable(ErrClosed) = %v; want ErrUnavailable only", err)
	}
	if err := caUnavailable(fleet.ErrNotFound); errors.Is(err, attestca.ErrUnavailable) {
		t.Errorf("caUnavailable(ErrNotFound) = %v; want it as it was", err)
	}
}
