package fleet

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Nonce errors of ConsumeNonce.
var (
	// ErrNonceUnknown: never issued to this device, or already used (replay).
	ErrNonceUnknown = errors.New("nonce unknown or already used")
	// ErrNonceExpired: issued, but expired.
	ErrNonceExpired = errors.New("nonce expired")
)

// IssueNonce stores nonce as device's requested nonce until expires, replacing the
// one requested before (one check-in at a time per device), and forgets nonces expired
// before now. Every replica on the database sees it.
//
// A device has two outstanding nonces, each single use: the one it last requested
// (IssueNonce; a nonce request is not authenticated, so anyone may replace it) and the
// one its last check-in issued it (Admission.NextNonce, which only a check-in its TPM
// signed replaces). A check-in may use either. So a stranger requesting nonces in a
// device's name cannot keep it from checking in with the nonce it was given.
func (s *Store) IssueNonce(ctx context.Context, device string, nonce []byte, expires, now time.Time) error {
	if err := validID(device); err != nil {
		return fmt.Errorf("issue nonce: %w", err)
	}
	err := s.tx(ctx, func(tx *txn) error { return issueNonceTx(ctx, tx, device, nonce, expires, now) })
	if err != nil {
		return fmt.Errorf("issue nonce for %s: %w", device, err)
	}
	return nil
}

// issueNonceTx is IssueNonce in tx.
func issueNonceTx(ctx context.Context, tx *txn, device string, nonce []byte, expires, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `DELETE FROM nonces WHERE expires_at < ? AND next_expires_at < ?`, ns(now), ns(now)); err != nil {
		return err
	}
	return putNonceTx(ctx, tx, device, nonce, expires)
}

// putNonceTx makes nonce device's requested one, replacing the one requested before;
// the nonce its last check-in issued stays. The table holds one row per device: what
// grows it is a nonce requested for a made-up device ID (a nonce request is not
// authenticated), and IssueNonce prunes those.
func putNonceTx(ctx context.Context, tx *txn, device string, nonce []byte, expires time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET nonce = excluded.nonce, expires_at = excluded.expires_at`, device, nonce, ns(expires))
	return err
}

// putNextNonceTx makes next the nonce device's check-in issued it, replacing the one
// an earlier check-in issued; the requested one stays. While no requested nonce is
// outstanding, the row's expires_at follows the next nonce's (see rowExpiry).
func putNextNonceTx(ctx context.Context, tx *txn, device string, next []byte, expires time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO nonces (device_id, nonce, expires_at, next_nonce, next_expires_at) VALUES (?, ?, ?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET next_nonce = excluded.next_nonce, next_expires_at = excluded.next_expires_at,
			expires_at = CASE WHEN length(nonces.nonce) = 0 THEN excluded.next_expires_at ELSE nonces.expires_at END`, device, []byte{}, ns(expires), next, ns(expires))
	return err
}

// rowExpiry: a row's expires_at is its requested nonce's expiry while one is
// outstanding, and the next nonce's otherwise, so that IssueNonce's pruning, which
// finds rows through the expires_at index, neither scans the rows of devices checking
// in (whose requested nonce was used up) at every nonce request nor deletes a row
// whose next nonce is still good.

// ConsumeNonce checks that nonce is one of device's outstanding ones and uses it up,
// so it can never be used again (ErrNonceExpired if it expired before now). A wrong
// nonce (ErrNonceUnknown) leaves both outstanding ones in place.
func (s *Store) ConsumeNonce(ctx context.Context, device string, nonce []byte, now time.Time) error {
	expired := false
	err := s.tx(ctx, func(tx *txn) error {
		var err error
		expired, err = consumeNonceTx(ctx, tx, device, nonce, nil, time.Time{}, now)
		return err
	})
	switch {
	case err != nil:
		return fmt.Errorf("nonce of %s: %w", device, err)
	case expired:
		return fmt.Errorf("nonce of %s: %w", device, ErrNonceExpired)
	}
	return nil
}

// storedNonce is a device's outstanding nonces as read with its row: the one it
// requested and the one its last check-in issued it (nil: none).
type storedNonce struct {
	found       bool
	nonce       []byte
	expires     int64
	next        []byte
	nextExpires int64
}

// consumeNonceTx uses up nonce in tx if it is one of device's outstanding nonces
// (ErrNonceUnknown, and nothing changed, if it is not) and reports whether it had
// expired before now. With next set, next becomes the nonce the device's check-in
// issued it (expiring at nextExpires): either way the consumed nonce is gone.
func consumeNonceTx(ctx context.Context, tx *txn, device string, nonce, next []byte, nextExpires, now time.Time) (expired bool, err error) {
	n := storedNonce{found: true}
	err = tx.QueryRowContext(ctx, `SELECT nonce, expires_at, next_nonce, next_expires_at FROM nonces WHERE device_id = ?`, device).Scan(&n.nonce, &n.expires, &n.next, &n.nextExpires)
	if errors.Is(err, sql.ErrNoRows) {
		return false, ErrNonceUnknown
	}
	if err != nil {
		return false, err
	}
	return useNonceTx(ctx, tx, device, n, nonce, next, nextExpires, now)
}

// useNonceTx is consumeNonceTx once device's outstanding nonces (n) have been read in tx.
func useNonceTx(ctx context.Context, tx *txn, device string, n storedNonce, nonce, next []byte, nextExpires, now time.Time) (expired bool, err error) {
	if !n.found || len(nonce) == 0 {
		return false, ErrNonceUnknown
	}
	var expires int64
	var q string
	var args []any
	switch {
	case len(n.next) > 0 && subtle.ConstantTimeCompare(n.next, nonce) == 1:
		// The check-in uses the nonce its last check-in issued it.
		expires = n.nextExpires
		if next != nil {
			q, args = `UPDATE nonces SET next_nonce = ?, next_expires_at = ?,
				expires_at = CASE WHEN length(nonce) = 0 THEN ? ELSE expires_at END WHERE device_id = ?`, []any{next, ns(nextExpires), ns(nextExpires), device}
		} else {
			q, args = `UPDATE nonces SET next_nonce = NULL, next_expires_at = 0,
				expires_at = CASE WHEN length(nonce) = 0 THEN 0 ELSE expires_at END WHERE device_id = ?`, []any{device}
		}
	case len(n.nonce) > 0 && subtle.ConstantTimeCompare(n.nonce, nonce) == 1:
		expires = n.expires
		if next != nil {
			q, args = `UPDATE nonces SET nonce = ?, expires_at = ?, next_nonce = ?, next_expires_at = ? WHERE device_id = ?`, []any{[]byte{}, ns(nextExpires), next, ns(nextExpires), device}
		} else {
			q, args = `UPDATE nonces SET nonce = ?, expires_at = next_expires_at WHERE device_id = ?`, []any{[]byte{}, device}
		}
	default:
		return false, ErrNonceUnknown
	}
	if _, err = tx.ExecContext(ctx, q, args...); err != nil {
		return false, err
	}
	return now.After(fromNS(expires)), nil // used up all the same: single use
}
