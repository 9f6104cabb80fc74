package fleet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Limit is a token bucket: Burst attempts at once, then one per Every. At most Max
// buckets are kept (0: DefaultMaxBuckets).
type Limit struct {
	Burst int
	Every time.Duration
	Max   int
}

// DefaultMaxBuckets bounds the rate_limits table when Limit.Max is 0.
const DefaultMaxBuckets = 10000

// micro is the fixed-point scale of a bucket's attempts in the database.
const micro = 1_000_000

// TakeAttempt takes one attempt from key's bucket at now (e.g. "signin:" and the
// client's address). The bucket is a row of the database, so every replica on it
// counts into the same one. When none is left it takes nothing and returns false and
// how long until the next attempt. Buckets expire once they would be full again; when
// l.Max are kept, the one used longest ago is forgotten (a forgotten key starts with a
// full bucket, which is no worse than its burst).
func (s *Store) TakeAttempt(ctx context.Context, key string, l Limit, now time.Time) (bool, time.Duration, error) {
	return s.attempt(ctx, key, l, now)
}

// AttemptsLeft reports whether key's bucket has an attempt left at now, and if not how
// long until it has; it takes nothing and writes nothing.
func (s *Store) AttemptsLeft(ctx context.Context, key string, l Limit, now time.Time) (bool, time.Duration, error) {
	n, wait, err := s.CountAttemptsLeft(ctx, key, l, now)
	return n > 0, wait, err
}

// CountAttemptsLeft is AttemptsLeft with the number of whole attempts key's bucket
// holds at now (0: none, and wait is how long until one).
func (s *Store) CountAttemptsLeft(ctx context.Context, key string, l Limit, now time.Time) (int, time.Duration, error) {
	if l.Burst <= 0 || l.Every <= 0 {
		return 0, 0, errors.New("rate limit: burst and interval must be positive")
	}
	tokens, err := bucket(ctx, s.db, key, l, now)
	if err != nil {
		return 0, 0, fmt.Errorf("rate limit %s: %w", key, err)
	}
	_, wait := available(tokens, l)
	return int(tokens / micro), wait, nil
}

func (s *Store) attempt(ctx context.Context, key string, l Limit, now time.Time) (bool, time.Duration, error) {
	if l.Burst <= 0 || l.Every <= 0 {
		return false, 0, errors.New("rate limit: burst and interval must be positive")
	}
	max := l.Max
	if max <= 0 {
		max = DefaultMaxBuckets
	}
	var ok bool
	var wait time.Duration
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM rate_limits WHERE expires_at < ?`, ns(now)); err != nil {
			return err
		}
		tokens, err := bucket(ctx, tx, key, l, now)
		if err != nil {
			return err
		}
		if ok, wait = available(tokens, l); !ok {
			return nil
		}
		tokens -= micro
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM rate_limits`).Scan(&n); err != nil {
			return err
		}
		if n >= max {
			if _, err := tx.ExecContext(ctx, `DELETE FROM rate_limits WHERE key IN (SELECT key FROM rate_limits WHERE key <> ? ORDER BY at, key LIMIT ?)`, key, n-max+1); err != nil {
				return err
			}
		}
		// Full again (and so forgettable) once the missing attempts have come back.
		full := now.Add(time.Duration((float64(l.Burst)*micro - float64(tokens)) / micro * float64(l.Every)))
		_, err = tx.ExecContext(ctx, `INSERT INTO rate_limits (key, tokens, at, expires_at) VALUES (?, ?, ?, ?)
			ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, at = excluded.at, expires_at = excluded.expires_at`,
			key, tokens, ns(now), ns(full))
		return err
	})
	if err != nil {
		return false, 0, fmt.Errorf("rate limit %s: %w", key, err)
	}
	return ok, wait, nil
}

// bucket is key's attempts (times micro) at now: a missing or expired row is a full
// bucket.
func bucket(ctx context.Context, q dbtx, key string, l Limit, now time.Time) (int64, error) {
	full := int64(l.Burst) * micro
	var tokens, at, expires int64
	err := q.QueryRowContext(ctx, `SELECT tokens, at, expires_at FROM rate_limits WHERE key = ?`, key).Scan(&tokens, &at, &expires)
	if errors.Is(err, sql.ErrNoRows) || err == nil && expires < ns(now) {
		return full, nil
	}
	if err != nil {
		return 0, err
	}
	if el := now.Sub(fromNS(at)); el > 0 {
		tokens += int64(float64(el) / float64(l.Every) * micro)
	}
	return min(full, tokens), nil
}

// available reports whether tokens hold one attempt, and if not how long until they do.
func available(tokens int64, l Limit) (bool, time.Duration) {
	if tokens >= micro {
		return true, 0
	}
	return false, time.Duration(float64(micro-tokens) / micro * float64(l.Every))
}
