package updater

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"

	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Transient reports whether err has a cause that goes away without a new version: no
// space left on the device, the network or the server unreachable or failing (a
// timeout, a refused or reset connection, any HTTP error status), the local runtime not
// answering, the server's certificate not trusted (ErrUntrustedServer), bytes that do
// not match what is signed (see WrongBytes), or the repository's metadata not fetched or
// not current (NotCurrent). An install that fails for such a cause is retried with
// backoff and does not count against the version. What the verified, signed metadata
// says against the version (its kind, its hardware, its custom fields), a downgrade or
// a failed probe are not transient: they burn the version on the device.
func Transient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if WrongBytes(err) || NotCurrent(err) {
		return true
	}
	if errors.Is(err, ErrUntrustedServer) {
		return true // the device's configuration is at fault, not the version
	}
	if errors.Is(err, ErrRuntimeDown) || errors.Is(err, ErrContentKeyUnusable) || errors.Is(err, ErrDiedInTrial) {
		return true // the version was not judged
	}
	var de *DownloadError
	if errors.As(err, &de) && de.Status != 0 {
		// Any status: the target is listed in signed metadata, so a 404 (or 403, 410)
		// says only that this server or mirror does not serve it now (a CDN the new
		// files have not reached, or someone on the path). Burning the version for it
		// let one forged 404 block a signed version on the device for good and count
		// as a failure of its rollout (found by an outside audit, 1 Dec). 416 and a
		// 206 at the wrong offset: the download starts over at the next attempt.
		return true
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

// NotCurrent reports whether err says the repository's metadata could not be fetched,
// or was not current, rather than that it spoke against the version: a metadata file
// not served (go-tuf's ErrDownload, any HTTP status), an older version than the one
// trusted or than snapshot lists (ErrBadVersionNumber: a stale mirror, or a replay),
// expired metadata (the repository has not been re-signed yet, or a freeze), metadata
// larger than the device accepts or not served in time, or a target that the metadata
// fetched does not list (a mirror behind the server that asked for it). Each is the
// repository's or the path's state, and changes without a new version; a target burnt
// for it stayed refused after honest service resumed.
func NotCurrent(err error) bool {
	return errors.Is(err, &metadata.ErrRepository{}) || errors.Is(err, &metadata.ErrDownload{}) ||
		errors.Is(err, ErrMetadataTooLarge) || errors.Is(err, ErrMetadataTimeout) || errors.Is(err, ErrNotListed)
}

// WrongBytes reports whether err says that what was served does not match what is
// signed: a target whose hash or length differs from its TUF entry, or a metadata file
// whose signatures or hash do not verify. Signed metadata is what defines a version, so
// such bytes were damaged or swapped on their way (a tampered or corrupted mirror or
// cache, a proxy, the network): the version is not at fault and must not be burnt on
// the device for it. The install is refused (nothing unverified is ever staged) and
// tried again after a backoff, so it succeeds once the good bytes are served again.
func WrongBytes(err error) bool {
	return errors.Is(err, ErrHashMismatch) || errors.Is(err, ErrTooLong) ||
		errors.Is(err, &metadata.ErrUnsignedMetadata{}) || errors.Is(err, &metadata.ErrLengthOrHashMismatch{})
}

// ErrUntrustedServer wraps the error of a request whose server presented a TLS
// certificate that no trusted root issued: the device needs the server's CA
// (edgeward-agent device --server-ca, agent.Config.ServerRoots), which covers
// check-ins, TUF metadata and targets alike. A Downloader does not retry it within a
// download; it is Transient, since the version is not at fault.
var ErrUntrustedServer = errors.New("the server's TLS certificate is not trusted: give the agent the CA that issued it (edgeward-agent device --server-ca FILE)")

// untrusted wraps err in ErrUntrustedServer when its cause is a certificate that chains
// to no trusted root; other errors are returned as they are.
func untrusted(err error) error {
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return fmt.Errorf("%w: %w", ErrUntrustedServer, err)
	}
	return err
}

// ErrContentKeyUnusable wraps the failure to open the content key the server released
// for an encrypted target (damaged or replayed on the way, wrapped for another target,
// or the TPM failing to derive): a fault of the key's release, not of the version, so
// the trial is retried with the key of a later check-in (MaxTrialRetries bounds it),
// as for a key withheld (ErrNoContentKey). It burned a good version on the device for
// good (found from outside, 2 Dec).
var ErrContentKeyUnusable = errors.New("the released content key cannot be used")

// ErrDiedInTrial wraps the error of a trial during which the serving runtime died
// (killed by the OOM killer, crashed): transient once, since the device may have been
// short of memory for another reason, then the version's fault (MaxTrialDeaths).
var ErrDiedInTrial = errors.New("the runtime died during the trial")

// ErrRuntimeDown wraps the error of a trial the runtime failed (refused the
// connection, died): the version was not judged.
var ErrRuntimeDown = errors.New("the runtime is down")

// ClassifyError says what kind of cause err is, for the check-in's last update error.
func ClassifyError(err error) wire.UpdateErrorKind {
	var expired *metadata.ErrExpiredMetadata
	switch {
	case errors.As(err, &expired):
		return wire.ErrorExpiredMetadata
	case errors.Is(err, ErrMetadataTooLarge):
		return wire.ErrorMetadataTooLarge
	case errors.Is(err, ErrMetadataBehind):
		return wire.ErrorMetadataBehind
	case errors.Is(err, ErrDiskFull), errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return wire.ErrorNoSpace
	case errors.Is(err, ErrRuntimeDown), errors.Is(err, ErrDiedInTrial):
		return wire.ErrorRuntimeDown
	case errors.Is(err, ErrContentKeyUnusable):
		return wire.ErrorOther
	}
	var de *DownloadError
	if errors.As(err, &de) || Transient(err) {
		return wire.ErrorDownload
	}
	return wire.ErrorOther
}

// recordingFetcher remembers the last error of the fetcher it wraps: the slot keeps
// only its text, and the agent needs its cause.
type recordingFetcher struct {
	f    rollback.Fetcher
	err  error
	info *FetchInfo // how the last Fetch got its target, if the fetcher says
}

// infoFetcher is a fetcher that says how it got the target (slotFetcher).
type infoFetcher interface {
	fetchInfo(ctx context.Context, t rollback.Target, path string) (FetchInfo, rollback.Proof, error)
}

func (r *recordingFetcher) Fetch(ctx context.Context, t rollback.Target, path string) error {
	_, err := r.FetchProven(ctx, t, path)
	return err
}

// FetchProven passes on the wrapped fetcher's Proof, if it gives one.
func (r *recordingFetcher) FetchProven(ctx context.Context, t rollback.Target, path string) (rollback.Proof, error) {
	if inf, ok := r.f.(infoFetcher); ok {
		info, p, err := inf.fetchInfo(ctx, t, path)
		r.info, r.err = &info, err
		return p, err
	}
	pf, ok := r.f.(rollback.ProvingFetcher)
	if !ok {
		r.err = r.f.Fetch(ctx, t, path) // the wrapped fetcher's (r.Fetch would come back here)
		return rollback.Proof{}, r.err
	}
	var p rollback.Proof
	p, r.err = pf.FetchProven(ctx, t, path)
	return p, r.err
}
