package verify

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// Nonce errors.
var (
	// ErrNonceUnknown: never issued to this device, or already used (replay).
	ErrNonceUnknown = errors.New("verify: nonce unknown or already used")
	// ErrNonceExpired: issued, but older than the TTL.
	ErrNonceExpired = errors.New("verify: nonce expired")
	// ErrTooManyNonces: the outstanding-nonce bound is reached.
	ErrTooManyNonces = errors.New("verify: too many outstanding nonces")
)

// NonceSize is the size of issued nonces (the TPM accepts up to 64 bytes of
// qualifying data with SHA-256 AKs).
const NonceSize = 32

// Nonces issues single-use, expiring quote nonces bound to a device. Safe for
// concurrent use. The zero value is not usable; use NewNonces.
//
// Nonces live in memory: a server restart invalidates outstanding ones, which
// only makes devices ask again. Several server replicas need a shared store
// (or sticky check-ins); that is the repo-server's concern.
type Nonces struct {
	ttl  time.Duration
	max  int
	now  func() time.Time
	rand io.Reader

	mu     sync.Mutex
	issued map[string]issued
}

type issued struct {
	nonce   []byte
	expires time.Time
}

// NoncesConfig configures Nonces; every zero value is a working default.
type NoncesConfig struct {
	// TTL is how long a nonce can be used; zero means 2 minutes.
	TTL time.Duration
	// Max bounds outstanding nonces; zero means 100000.
	Max int
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Rand is the randomness source; nil means crypto/rand.Reader.
	Rand io.Reader
}

// NewNonces returns a nonce store.
func NewNonces(c NoncesConfig) *Nonces {
	n := &Nonces{ttl: c.TTL, max: c.Max, now: c.Now, rand: c.Rand, issued: map[string]issued{}}
	if n.ttl == 0 {
		n.ttl = 2 * time.Minute
	}
	if n.max == 0 {
		n.max = 100000
	}
	if n.now == nil {
		n.now = time.Now
	}
	if n.rand == nil {
		n.rand = rand.Reader
	}
	return n
}

// Issue returns a fresh nonce for device, replacing any outstanding one of
// the same device (one check-in at a time per device).
func (n *Nonces) Issue(device string) ([]byte, error) {
	b := make([]byte, NonceSize)
	if _, err := io.ReadFull(n.rand, b); err != nil {
		return nil, fmt.Errorf("verify: nonce: %w", err)
	}
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	if _, ok := n.issued[device]; !ok && len(n.issued) >= n.max {
		for k, v := range n.issued {
			if now.After(v.expires) {
				delete(n.issued, k)
			}
		}
		if len(n.issued) >= n.max {
			return nil, ErrTooManyNonces
		}
	}
	n.issued[device] = issued{nonce: b, expires: now.Add(n.ttl)}
	return b, nil
}

// Consume checks that nonce is the one outstanding for device and removes it,
// so it can never be used again, whether or not the quote then verifies.
func (n *Nonces) Consume(device string, nonce []byte) error {
	now := n.now()
	n.mu.Lock()
	defer n.mu.Unlock()
	got, ok := n.issued[device]
	if !ok || subtle.ConstantTimeCompare(got.nonce, nonce) != 1 {
		return ErrNonceUnknown
	}
	delete(n.issued, device)
	if now.After(got.expires) {
		return ErrNonceExpired
	}
	return nil
}
