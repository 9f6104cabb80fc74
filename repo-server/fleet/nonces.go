package fleet

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Nonce errors of ConsumeNonce and Store.Admit.
var (
	// ErrNonceUnknown: not issued to this device (by any replica on the database), or
	// already used (replay).
	ErrNonceUnknown = errors.New("nonce unknown or already used")
	// ErrNonceExpired: issued to this device, but expired.
	ErrNonceExpired = errors.New("nonce expired")
)

// Quote nonces are sealed, not stored. A nonce is 32 bytes: its expiry (8 bytes,
// Unix nanoseconds, big-endian), 8 random bytes, and the first 16 bytes of an
// HMAC-SHA256, under the fleet's nonce key, of the device's ID, the expiry and the
// random bytes. Any replica on the database holds the key (server_secrets, made by
// migration 18), so any replica can tell a nonce it or another issued to a device from
// one it did not, without a row per issued nonce. What is stored is a nonce's use:
// its tag in used_nonces until some time after it expires, so that each nonce is
// single use.
//
// So a nonce request writes nothing. Nonce requests are not authenticated on the
// plain listener, and before this each one wrote the device's outstanding nonce,
// replacing the one before: a stranger requesting nonces in a device's name could keep
// it from checking in with a nonce it requested, and every such request was a
// transaction in the check-ins' group commit.
const (
	nonceSize    = 32
	nonceTagSize = 16
	nonceKeySize = 32
	// usedNonceGrace is how long a used nonce's tag is kept past the nonce's expiry
	// before Admit prunes it: a replica whose clock is this far behind another's still
	// refuses a replay rather than find no record of the use.
	usedNonceGrace = 10 * time.Minute
)

// nonceKeyName is the nonce key's row in server_secrets.
const nonceKeyName = "quote-nonce"

// IssueNonce returns a fresh nonce for device, good until expires, for one check-in.
// Nothing is stored, and every replica on the database accepts it. A device may hold
// any number of nonces at once; each is single use (Store.Admit, ConsumeNonce).
func (s *Store) IssueNonce(ctx context.Context, device string, expires time.Time) ([]byte, error) {
	if err := validID(device); err != nil {
		return nil, fmt.Errorf("issue nonce: %w", err)
	}
	if len(s.nonceKey) != nonceKeySize {
		return nil, fmt.Errorf("issue nonce for %s: the store has no nonce key", device)
	}
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		return nil, fmt.Errorf("issue nonce for %s: %w", device, err)
	}
	return sealNonce(s.nonceKey, device, expires, r), nil
}

// sealNonce is the nonce for device expiring at expires with random part r.
func sealNonce(key []byte, device string, expires time.Time, r [8]byte) []byte {
	n := make([]byte, 16, nonceSize)
	binary.BigEndian.PutUint64(n, uint64(expires.UnixNano()))
	copy(n[8:], r[:])
	return append(n, nonceTag(key, device, n[:16])...)
}

// nonceTag is the tag of a nonce whose first 16 bytes are head, for device.
func nonceTag(key []byte, device string, head []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte("edgeward quote nonce v1\x00"))
	m.Write([]byte(device))
	m.Write([]byte{0})
	m.Write(head)
	return m.Sum(nil)[:nonceTagSize]
}

// openNonce checks that nonce was sealed for device under key, and returns its tag and
// expiry (ErrNonceUnknown if it was not).
func openNonce(key []byte, device string, nonce []byte) (tag []byte, expires time.Time, err error) {
	if len(key) != nonceKeySize || len(nonce) != nonceSize {
		return nil, time.Time{}, ErrNonceUnknown
	}
	if !hmac.Equal(nonce[16:], nonceTag(key, device, nonce[:16])) {
		return nil, time.Time{}, ErrNonceUnknown
	}
	return nonce[16:], time.Unix(0, int64(binary.BigEndian.Uint64(nonce))), nil
}

// CheckNonce says whether nonce was issued to device (ErrNonceUnknown if not) and is
// good at now (ErrNonceExpired if not), without the database: not whether it was used.
func (s *Store) CheckNonce(device string, nonce []byte, now time.Time) error {
	_, expires, err := openNonce(s.nonceKey, device, nonce)
	if err != nil {
		return err
	}
	if now.After(expires) {
		return ErrNonceExpired
	}
	return nil
}

// ConsumeNonce checks that nonce was issued to device and uses it up, so it can never
// be used again: ErrNonceUnknown if it was not issued to device or was used before,
// ErrNonceExpired if it expired before now (and then it is not used up: it is no good
// anyway). Store.Admit does the same in a check-in's transaction.
func (s *Store) ConsumeNonce(ctx context.Context, device string, nonce []byte, now time.Time) error {
	err := s.tx(ctx, func(tx *txn) error { return s.useNonceTx(ctx, tx, device, nonce, now) })
	if err != nil {
		return fmt.Errorf("nonce of %s: %w", device, err)
	}
	return nil
}

// useNonceTx uses up nonce, issued to device, in tx (see ConsumeNonce), and prunes
// the tags of two nonces that expired more than usedNonceGrace before now: each use
// adds one, so the table holds the nonces used within their lifetime and the grace.
func (s *Store) useNonceTx(ctx context.Context, tx *txn, device string, nonce []byte, now time.Time) error {
	tag, expires, err := openNonce(s.nonceKey, device, nonce)
	if err != nil {
		return err
	}
	if now.After(expires) {
		return ErrNonceExpired
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO used_nonces (device_id, tag, expires_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, device, tag, ns(expires))
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		return ErrNonceUnknown // used before
	}
	_, err = tx.ExecContext(ctx, pruneUsedNoncesQuery, ns(now.Add(-usedNonceGrace)))
	return err
}

// pruneUsedNoncesQuery deletes the tags of up to two nonces that expired
// before its argument, found through the expiry index.
const pruneUsedNoncesQuery = `DELETE FROM used_nonces WHERE (device_id, tag) IN
	(SELECT device_id, tag FROM used_nonces WHERE expires_at < ? ORDER BY expires_at LIMIT 2)`

// backfillNonceKey makes the fleet's nonce key (migration 18).
func backfillNonceKey(ctx context.Context, tx *txn) error {
	key := make([]byte, nonceKeySize)
	if _, err := rand.Read(key); err != nil {
		return err
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO server_secrets (name, secret, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING`, nonceKeyName, key, ns(time.Now()))
	return err
}

// loadNonceKey reads the fleet's nonce key.
func loadNonceKey(ctx context.Context, db *sqlDB) ([]byte, error) {
	var key []byte
	err := db.QueryRowContext(ctx, `SELECT secret FROM server_secrets WHERE name = ?`, nonceKeyName).Scan(&key)
	if errors.Is(err, sql.ErrNoRows) || err == nil && len(key) != nonceKeySize {
		return nil, fmt.Errorf("nonce key: missing or damaged in server_secrets")
	}
	if err != nil {
		return nil, fmt.Errorf("nonce key: %w", err)
	}
	return key, nil
}
