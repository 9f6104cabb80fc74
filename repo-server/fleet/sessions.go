package fleet

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrSessionsFull is returned when the dashboard holds as many sessions as it may: a
// new sign-in waits for one to end rather than signing anybody else out.
var ErrSessionsFull = errors.New("too many dashboard sessions")

// StartSession records a dashboard session: id (the cookie's secret) for the operator
// of token, with its CSRF secret, until expires. Only SHA-256 hashes of id and token
// are stored. Expired sessions are forgotten. When the token already has perToken (> 0)
// sessions, its own oldest end: an operator who signs in again and again signs out only
// themselves. When max (> 0) sessions remain, the new one is refused with
// ErrSessionsFull; nobody else's session ends. Every replica on the database sees the
// session.
func (s *Store) StartSession(ctx context.Context, id, token, csrf string, now, expires time.Time, perToken, max int) error {
	ih, th := sha256.Sum256([]byte(id)), sha256.Sum256([]byte(token))
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= ?`, ns(now)); err != nil {
			return err
		}
		if perToken > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sessions WHERE token_hash = ?`, th[:]).Scan(&n); err != nil {
				return err
			}
			if n >= perToken {
				if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash IN (SELECT id_hash FROM sessions WHERE token_hash = ? ORDER BY created_at LIMIT ?)`, th[:], n-perToken+1); err != nil {
					return err
				}
			}
		}
		if max > 0 {
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM sessions`).Scan(&n); err != nil {
				return err
			}
			if n >= max {
				return ErrSessionsFull
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO sessions (id_hash, token_hash, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)`,
			ih[:], th[:], csrf, ns(now), ns(expires))
		return err
	})
	if err != nil {
		return fmt.Errorf("start session: %w", err)
	}
	return nil
}

// AuthenticateSession returns the operator of session id and its CSRF secret. A
// session unknown or expired is ErrNotFound; a session whose token expired or was
// revoked fails as Authenticate does (ErrUnauthenticated, ErrTokenExpired,
// ErrTokenRevoked).
func (s *Store) AuthenticateSession(ctx context.Context, id string, now time.Time) (Principal, string, error) {
	ih := sha256.Sum256([]byte(id))
	var th []byte
	var csrf string
	var expires int64
	err := s.db.QueryRowContext(ctx, `SELECT token_hash, csrf, expires_at FROM sessions WHERE id_hash = ?`, ih[:]).Scan(&th, &csrf, &expires)
	if errors.Is(err, sql.ErrNoRows) || (err == nil && !now.Before(fromNS(expires))) {
		return Principal{}, "", fmt.Errorf("session: %w", ErrNotFound)
	}
	if err != nil {
		return Principal{}, "", fmt.Errorf("session: %w", err)
	}
	p, err := authenticateHash(ctx, s.db, th, now)
	if err != nil {
		return Principal{}, "", err
	}
	return p, csrf, nil
}

// EndSession forgets session id (sign-out).
func (s *Store) EndSession(ctx context.Context, id string) error {
	ih := sha256.Sum256([]byte(id))
	if _, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE id_hash = ?`, ih[:]); err != nil {
		return fmt.Errorf("end session: %w", err)
	}
	return nil
}
