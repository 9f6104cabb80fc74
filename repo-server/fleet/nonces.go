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
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM nonces WHERE expires_at < ?`, ns(now)); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO nonces (device_id, nonce, expires_at) VALUES (?, ?, ?)
			ON CONFLICT (device_id) DO UPDATE SET nonce = excluded.nonce, expires_at = excluded.expires_at`, device, nonce, ns(expires))
		return err
	})
	if err != nil {
		return fmt.Errorf("issue nonce for %s: %w", device, err)
	}
	return nil
}

// ConsumeNonce checks that nonce is device's outstanding one and removes it, so it
// can never be used again (ErrNonceExpired if it expired before now). A wrong nonce
// (ErrNonceUnknown) leaves the outstanding one in place.
func (s *Store) ConsumeNonce(ctx context.Context, device string, nonce []byte, now time.Time) error {
	expired := false
	err := s.tx(ctx, func(tx *txn) error {
		var got []byte
		var expires int64
		err := tx.QueryRowContext(ctx, `SELECT nonce, expires_at FROM nonces WHERE device_id = ?`, device).Scan(&got, &expires)
		if errors.Is(err, sql.ErrNoRows) || (err == nil && subtle.ConstantTimeCompare(got, nonce) != 1) {
			return ErrNonceUnknown
		}
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM nonces WHERE device_id = ?`, device); err != nil {
			return err
		}
		expired = now.After(fromNS(expires)) // deleted all the same: single use
		return nil
	})
	switch {
	case err != nil:
		return fmt.Errorf("nonce of %s: %w", device, err)
	case expired:
		return fmt.Errorf("nonce of %s: %w", device, ErrNonceExpired)
	}
	return nil
}
