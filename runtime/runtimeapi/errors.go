package runtimeapi

import (
	"errors"
	"fmt"
	"net/http"
)

// Errors a caller decides on. The runtime's handlers map them to status codes and the
// Client maps status codes back (APIError.Is): ErrNotFound ↔ 404, ErrInvalid ↔ 400 (and
// 413), ErrConflict ↔ 409, ErrUnavailable ↔ 503. The same values are returned by the
// runtime's Go API, so errors.Is works the same on both sides of the socket.
var (
	ErrNotFound    = errors.New("not found")
	ErrInvalid     = errors.New("invalid request")
	ErrConflict    = errors.New("conflict")
	ErrUnavailable = errors.New("unavailable")
)

// APIError is a non-2xx answer of the runtime; Code is the HTTP status.
type APIError struct {
	Code    int
	Message string
}

func (e *APIError) Error() string { return fmt.Sprintf("runtime: %d: %s", e.Code, e.Message) }

// Is lets callers test an APIError against the package's sentinels (ErrNotFound, …).
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrNotFound:
		return e.Code == http.StatusNotFound
	case ErrInvalid:
		return e.Code == http.StatusBadRequest || e.Code == http.StatusRequestEntityTooLarge
	case ErrConflict:
		return e.Code == http.StatusConflict
	case ErrUnavailable:
		return e.Code == http.StatusServiceUnavailable
	}
	return false
}

// IsConflict reports whether err is a conflict (e.g. the version is already loaded).
func IsConflict(err error) bool { return errors.Is(err, ErrConflict) }
