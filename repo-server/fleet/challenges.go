package fleet

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// ErrChallengesFull: AddChallenge found every source holding its fair share of the
// pending challenges; nothing was stored.
var ErrChallengesFull = errors.New("too many pending enrollment challenges")

// Challenge is a pending enrollment challenge of the attestation CA (the store keeps
// what the CA hands it; see attestca.Challenge). Secret is the credential's secret.
type Challenge struct {
	ID, EKID, Source             string
	Secret, AKPublic             []byte
	Manufacturer, Model, Version string
	Expires                      time.Time
}

// AddChallenge makes room for c and stores it in one store transaction (they run one
// at a time across replicas: see Store.tx), so the bounds hold across every replica on
// the database: challenges expired before now are dropped,
// and so is the one pending for c.EKID from c.Source (not from other sources: one who
// knows a device's public EK certificate must not replace the device's challenge);
// c.Source keeps at most perSource (its oldest go);
// when max are pending, the oldest challenge of the source holding the most (ties:
// the smallest source name) is evicted, provided it holds more than c.Source, and
// otherwise ErrChallengesFull.
func (s *Store) AddChallenge(ctx context.Context, c Challenge, max, perSource int, now time.Time) error {
	err := s.tx(ctx, func(tx *txn) error {
		if _, err := tx.ExecContext(ctx, `DELETE FROM challenges WHERE expires_at < ?`, ns(now)); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM challenges WHERE ek_id = ? AND source = ?`, c.EKID, c.Source); err != nil {
			return err
		}
		var mine int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM challenges WHERE source = ?`, c.Source).Scan(&mine); err != nil {
			return err
		}
		if mine >= perSource {
			if err := dropOldest(ctx, tx, c.Source, mine-perSource+1); err != nil {
				return err
			}
			mine = perSource - 1
		}
		var total int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM challenges`).Scan(&total); err != nil {
			return err
		}
		if total >= max {
			var top string
			var n int
			err := tx.QueryRowContext(ctx, `SELECT source, count(*) AS n FROM challenges GROUP BY source ORDER BY n DESC, source LIMIT 1`).Scan(&top, &n)
			if err != nil {
				return err
			}
			if n <= mine {
				return ErrChallengesFull
			}
			if err := dropOldest(ctx, tx, top, 1); err != nil {
				return err
			}
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO challenges (id, ek_id, source, secret, ak_public, manufacturer, model, version, expires_at)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			c.ID, c.EKID, c.Source, c.Secret, c.AKPublic, c.Manufacturer, c.Model, c.Version, ns(c.Expires))
		return err
	})
	if errors.Is(err, ErrChallengesFull) {
		return err
	}
	if err != nil {
		return fmt.Errorf("add enrollment challenge: %w", err)
	}
	return nil
}

// dropOldest deletes source's n challenges that expire first.
func dropOldest(ctx context.Context, tx *txn, source string, n int) error {
	_, err := tx.ExecContext(ctx, `DELETE FROM challenges WHERE id IN
		(SELECT id FROM challenges WHERE source = ? ORDER BY expires_at, id LIMIT ?)`, source, n)
	return err
}

// TakeChallenge removes challenge id and returns it; nil and no error when no
// challenge has that ID (never issued, evicted, or already taken). Of two replicas
// taking the same challenge at once, one gets it.
func (s *Store) TakeChallenge(ctx context.Context, id string) (*Challenge, error) {
	c := Challenge{ID: id}
	var expires int64
	// One statement: of two replicas deleting the same row, one gets it back.
	err := s.db.QueryRowContext(ctx, `DELETE FROM challenges WHERE id = ?
		RETURNING ek_id, source, secret, ak_public, manufacturer, model, version, expires_at`, id).
		Scan(&c.EKID, &c.Source, &c.Secret, &c.AKPublic, &c.Manufacturer, &c.Model, &c.Version, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("take enrollment challenge: %w", err)
	}
	c.Expires = fromNS(expires)
	return &c, nil
}
