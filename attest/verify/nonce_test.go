package verify_test

import (
	"errors"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/verify"
)

// TestNonceCap: at most Max nonces are outstanding. A device that already holds one may
// always get a new one; the others are refused until a nonce is used or expires.
func TestNonceCap(t *testing.T) {
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	n := verify.NewNonces(verify.NoncesConfig{Max: 2, TTL: time.Minute, Now: func() time.Time { return now }})
	issue := func(dev string, want error) []byte {
		t.Helper()
		b, err := n.Issue(dev)
		if !errors.Is(err, want) {
			t.Fatalf("Issue(%q) = %v; want %v", dev, err, want)
		}
		return b
	}
	issue("d1", nil)
	d2 := issue("d2", nil)
	issue("d3", verify.ErrTooManyNonces)
	issue("d1", nil) // replaces d1's own nonce
	if err := n.Consume("d2", d2); err != nil {
		t.Fatalf("Consume(d2) = %v", err)
	}
	d3 := issue("d3", nil) // d2's was used
	issue("d4", verify.ErrTooManyNonces)
	now = now.Add(time.Minute) // not yet expired: a nonce lives for exactly its TTL
	issue("d4", verify.ErrTooManyNonces)
	now = now.Add(time.Nanosecond)
	issue("d4", nil) // both expired ones made room
	issue("d5", nil)
	issue("d6", verify.ErrTooManyNonces)
	if err := n.Consume("d3", d3); !errors.Is(err, verify.ErrNonceUnknown) {
		t.Errorf("Consume(d3) after its eviction = %v; want %v", err, verify.ErrNonceUnknown)
	}
}

// TestNonceDefaultTTL: a zero TTL means 2 minutes.
func TestNonceDefaultTTL(t *testing.T) {
	now := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	n := verify.NewNonces(verify.NoncesConfig{Now: func() time.Time { return now }})
	b, _ := n.Issue("d")
	now = now.Add(2 * time.Minute)
	if err := n.Consume("d", b); err != nil {
		t.Errorf("Consume after 2 minutes = %v; want nil", err)
	}
	b, _ = n.Issue("d")
	now = now.Add(2*time.Minute + time.Nanosecond)
	if err := n.Consume("d", b); !errors.Is(err, verify.ErrNonceExpired) {
		t.Errorf("Consume after 2 minutes and 1 ns = %v; want %v", err, verify.ErrNonceExpired)
	}
}
