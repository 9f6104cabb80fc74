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

// IssueNonce stores nonce as device's outstanding quote nonce until expires, replacing
// any other (one check-in at a time per device), and forgets nonces expired before now.
// Every replica on the database sees it.
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
	if _, err := tx.ExecContext(ctx, `DELETE FROM nonces WHERE expires_at < ?`, ns(now)); err != nil {
		return err
	}
	return putNonceTx(ctx, tx, device, nonce, expires)
}

// putNonceTx makes nonce device's outstanding one, replacing any other. The table holds
// one row per device: what grows it is a nonce requested for a made-up device ID (a
// nonce request is not authenticated), and IssueNonce prunes those.
func putNonceTx(ctx context.Context, tx *txn, device string, nonce []byte, expires time.Time) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET nonce = excluded.nonce, expires_at = excluded.expires_at`, device, nonce, ns(expires))
	return err
}

// ConsumeNonce checks that nonce is device's outstanding one and removes it, so it
// can never be used again (ErrNonceExpired if it expired before now). A wrong nonce
// (ErrNonceUnknown) leaves the outstanding one in place.
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

// consumeNonceTx uses up device's outstanding nonce in tx if it is nonce
// (ErrNonceUnknown, and nothing changed, if it is not) and reports whether it had
// expired before now. Its row is removed, or, with next set, rewritten in place to hold
// next (expiring at nextExpires) as the device's outstanding nonce: either way the
// consumed nonce is gone, and a check-in that issues the next nonce (Admission.NextNonce)
// touches the device's one row once instead of deleting and inserting it.
func consumeNonceTx(ctx context.Context, tx *txn, device string, nonce, next []byte, nextExpires, now time.Time) (expired bool, err error) {
	var got []byte
	var expires int64
	err = tx.QueryRowContext(ctx, `SELECT nonce, expires_at FROM nonces WHERE device_id = ?`, device).Scan(&got, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return false, ErrNonceUnknown
	}
	if err != nil {
		return false, err
	}
	return useNonceTx(ctx, tx, device, true, got, expires, nonce, next, nextExpires, now)
}

// useNonceTx is consumeNonceTx once device's outstanding nonce (got, expiring at
// expires; found false: it has none) has been read in tx.
func useNonceTx(ctx context.Context, tx *txn, device string, found bool, got []byte, expires int64, nonce, next []byte, nextExpires, now time.Time) (expired bool, err error) {
	if !found || subtle.ConstantTimeCompare(got, nonce) != 1 {
		return false, ErrNonceUnknown
	}
	if next != nil {
		_, err = tx.ExecContext(ctx, `UPDATE nonces SET nonce = ?, expires_at = ? WHERE device_id = ?`, next, ns(nextExpires), device)
	} else {
		_, err = tx.ExecContext(ctx, `DELETE FROM nonces WHERE device_id = ?`, device)
	}
	if err != nil {
		return false, err
	}
	return now.After(fromNS(expires)), nil // used up all the same: single use
}
