package updater

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/edgeward/edgeward/rollback"
)

// Transient reports whether err has a cause that goes away without a new version: no
// space left on the device, the network or the server unreachable or failing (a
// timeout, a refused or reset connection, HTTP 408, 429 or 5xx), the local runtime not
// answering. An install that fails for such a cause is retried with backoff and does
// not count against the version. A wrong hash, a signature, a 404, a downgrade or a
// failed probe are not transient.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	var de *DownloadError
	if errors.As(err, &de) && de.Status != 0 {
		return de.Status == http.StatusRequestTimeout || de.Status == http.StatusTooManyRequests || de.Status >= 500
	}
	for _, e := range []error{ErrDiskFull, syscall.ENOSPC, syscall.EDQUOT, ErrStalled, ErrTruncated,
		syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.EHOSTUNREACH, syscall.ENETUNREACH, syscall.ETIMEDOUT,
		io.ErrUnexpectedEOF, context.DeadlineExceeded} {
		if errors.Is(err, e) {
			return true
		}
	}
	var ne net.Error
	return errors.As(err, &ne)
}

// recordingFetcher remembers the last error of the fetcher it wraps: the slot keeps
// only its text, and the agent needs its cause.
type recordingFetcher struct {
	f   rollback.Fetcher
	err error
}

func (r *recordingFetcher) Fetch(ctx context.Context, t rollback.Target, path string) error {
	r.err = r.f.Fetch(ctx, t, path)
	return r.err
}
