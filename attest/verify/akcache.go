package verify

import (
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"slices"
	"sync"
	"time"
)

// DefaultAKCacheSize is the number of AK certificates an AKCache of size 0 keeps: a
// fleet of that many devices checking in round-robin hits it every time; each entry
// is a public key, the permanent identifiers and two times (about half a kilobyte).
const DefaultAKCacheSize = 50000

// AKCache remembers AK certificates that verified (Policy.AKCache), so that a device
// checking in again with the same certificate costs the server one signature check
// (its quote's) instead of parsing the certificate and verifying its chain too.
//
// What it keeps, per AK certificate and chain sent (the exact DER bytes), is what the
// verification proved that does not depend on the time: the AK's public key, its
// permanent identifiers, and the interval in which every certificate of the verified
// chain is valid. A hit needs the same bytes, the same roots (the *x509.CertPool of
// the policy, which must not be modified after use: a new pool is a new generation, and
// the first verification against it empties the cache) and a time inside that
// interval; anything else is verified in full again. A certificate that expires is
// therefore refused from its expiry on, as without the cache. Failures are not kept.
// (AK certificates are not revoked: a device the server stops trusting is quarantined
// in the fleet store, which every check-in reads.)
//
// The cache holds at most its size; when full, an arbitrary entry gives way. Safe for
// concurrent use; the zero value is not usable, see NewAKCache.
type AKCache struct {
	max int

	mu    sync.Mutex
	roots *x509.CertPool
	m     map[[32]byte]*akEntry
}

type akEntry struct {
	pub                 crypto.PublicKey
	ids                 []string
	notBefore, notAfter time.Time
}

// NewAKCache returns a cache of at most size certificates (0: DefaultAKCacheSize).
func NewAKCache(size int) *AKCache {
	if size <= 0 {
		size = DefaultAKCacheSize
	}
	return &AKCache{max: size, m: map[[32]byte]*akEntry{}}
}

// akKey digests the certificate and chain a device sent, each length-prefixed.
func akKey(ev Evidence) [32]byte {
	h := sha256.New()
	var n [8]byte
	for _, b := range append([][]byte{ev.AKCert}, ev.AKChain...) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	var k [32]byte
	h.Sum(k[:0])
	return k
}

// lookup returns the entry for key verified against roots and valid at now, or nil.
func (c *AKCache) lookup(key [32]byte, roots *x509.CertPool, now time.Time) *akEntry {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.roots != roots {
		return nil
	}
	e := c.m[key]
	if e == nil || now.Before(e.notBefore) || now.After(e.notAfter) {
		return nil
	}
	return e
}

// add keeps what verifying the AK certificate with key against roots proved: its
// public key, its identifiers and chain, the verified chain (leaf first).
func (c *AKCache) add(key [32]byte, roots *x509.CertPool, pub crypto.PublicKey, ids []string, chain []*x509.Certificate) {
	if c == nil || len(chain) == 0 {
		return
	}
	e := &akEntry{pub: pub, ids: slices.Clone(ids), notBefore: chain[0].NotBefore, notAfter: chain[0].NotAfter}
	for _, cert := range chain[1:] {
		if cert.NotBefore.After(e.notBefore) {
			e.notBefore = cert.NotBefore
		}
		if cert.NotAfter.Before(e.notAfter) {
			e.notAfter = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.roots != roots {
		c.roots = roots
		clear(c.m)
	}
	if _, ok := c.m[key]; !ok && len(c.m) >= c.max {
		for k := range c.m {
			delete(c.m, k)
			break
		}
	}
	c.m[key] = e
}

// Len is the number of certificates the cache holds.
func (c *AKCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
