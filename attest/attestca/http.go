package attestca

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"syscall"

	"github.com/edgeward/edgeward/internal/jsonstrict"
	"github.com/edgeward/edgeward/internal/protocol"
)

// MaxRequestBytes bounds a request body. An enrollment carries an EK
// certificate, a short chain and two public areas: a few KiB.
const MaxRequestBytes = 64 << 10

// Handler serves the enrollment protocol as JSON:
//
//	POST /enroll    protocol.EnrollRequest  -> protocol.EnrollChallenge
//	POST /activate  protocol.ActivateRequest -> protocol.EnrollResponse
//
// Errors are {"error": "..."} with 400 (malformed), 403 (rejected), 404
// (unknown, expired or used challenge), 413 (body too large), 415 (not JSON)
// or 503 (too many pending challenges). Mount it under a prefix with
// http.StripPrefix, e.g. mux.Handle("/v1/attest/", http.StripPrefix("/v1/attest", ca.Handler())).
func (ca *CA) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /enroll", func(w http.ResponseWriter, r *http.Request) {
		var req protocol.EnrollRequest
		if !decode(w, r, &req) {
			return
		}
		ch, err := ca.ChallengeFrom(r.Context(), remoteHost(r), &req)
		ca.respond(w, r, ch, err)
	})
	mux.HandleFunc("POST /activate", func(w http.ResponseWriter, r *http.Request) {
		var req protocol.ActivateRequest
		if !decode(w, r, &req) {
			return
		}
		resp, err := ca.Activate(r.Context(), &req)
		ca.respond(w, r, resp, err)
	})
	return mux
}

// DecodeRequest decodes one JSON value of at most MaxRequestBytes, rejecting
// unknown fields and trailing data. Exported for the fuzz target and for
// servers that reuse the request types.
func DecodeRequest(body []byte, v any) error {
	if len(body) > MaxRequestBytes {
		return fmt.Errorf("%w: body larger than %d bytes", ErrBadRequest, MaxRequestBytes)
	}
	if err := jsonstrict.Decode(bytes.NewReader(body), v); err != nil {
		return fmt.Errorf("%w: %w", ErrBadRequest, err)
	}
	return nil
}

func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			writeError(w, http.StatusUnsupportedMediaType, "content type must be application/json")
			return false
		}
	}
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxRequestBytes+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, "reading body: "+err.Error())
		return false
	}
	if len(body) > MaxRequestBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("body larger than %d bytes", MaxRequestBytes))
		return false
	}
	if err := DecodeRequest(body, v); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return false
	}
	return true
}

func (ca *CA) respond(w http.ResponseWriter, r *http.Request, v any, err error) {
	switch {
	case err == nil:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	case errors.Is(err, ErrBadRequest):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, ErrRefusedForGood):
		writeErrorCode(w, http.StatusForbidden, protocol.CodeRefused, err.Error())
	case errors.Is(err, ErrRejected):
		writeError(w, http.StatusForbidden, err.Error())
	case errors.Is(err, ErrUnknownChallenge):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, ErrBusy):
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, ErrUnavailable):
		// The store's own error stays in the log: it may name hosts and files.
		ca.cfg.Logger.WarnContext(r.Context(), "attestation CA: its store cannot take the request now", "path", r.URL.Path, "err", err)
		msg := ErrUnavailable.Error()
		if errors.Is(err, syscall.ENOSPC) {
			msg += " (the server's disk is full)"
		}
		w.Header().Set("Retry-After", retryAfter)
		writeError(w, http.StatusServiceUnavailable, msg)
	default:
		ca.cfg.Logger.ErrorContext(r.Context(), "attestation CA failed", "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal error")
	}
}

// retryAfter is the Retry-After of a 503, in seconds.
const retryAfter = "5"

// remoteHost is the request's remote IP address without the port, the source for
// the per-source bound on pending challenges.
func remoteHost(r *http.Request) string {
	if h, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return h
	}
	return r.RemoteAddr
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeErrorCode(w, code, "", msg)
}

// writeErrorCode answers status with a protocol.Error of what (a protocol.Code…, or
// empty) and msg.
func writeErrorCode(w http.ResponseWriter, status int, what, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(protocol.Error{Error: msg, Code: what})
}
