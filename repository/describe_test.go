package repository

import (
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestDescribeRoot: what a key holder reads before signing names every key added or
// revoked, a lowered threshold and the expiry, so a proposal that hands the root to a
// new key cannot pass for a routine one.
func TestDescribeRoot(t *testing.T) {
	now := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	key := func() *metadata.Key {
		pub, _, _ := ed25519.GenerateKey(nil)
		k, err := metadata.KeyFromPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	alice, bob, mallory := key(), key(), key()
	id := func(k *metadata.Key) string {
		s, err := k.ID()
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cur := metadata.Root(now.Add(365 * 24 * time.Hour))
	for _, k := range []*metadata.Key{alice, bob} {
		if err := cur.Signed.AddKey(k, metadata.ROOT); err != nil {
			t.Fatal(err)
		}
	}
	cur.Signed.Roles[metadata.ROOT].Threshold = 2
	next, err := metadata.Root().FromBytes(mustBytes(cur))
	if err != nil {
		t.Fatal(err)
	}
	next.Signed.Version = 2
	next.Signed.AddKey(mallory, metadata.ROOT)
	next.Signed.RevokeKey(id(bob), metadata.ROOT)
	next.Signed.Roles[metadata.ROOT].Threshold = 1
	next.Signed.Expires = now.Add(-time.Hour)

	got := strings.Join(DescribeRoot(&cur.Signed, &next.Signed, now), "\n")
	for _, want := range []string{
		"root v2, replacing v1",
		"ALREADY EXPIRED",
		"root: 1 of 2 keys (was 2 of 2) THRESHOLD LOWERED",
		short(id(mallory)) + " ed25519 ADDED",
		short(id(bob)) + " REVOKED",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("description lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, short(id(alice))+" ed25519 ADDED") {
		t.Errorf("alice's key, in both roots, is called added:\n%s", got)
	}
	// Away from the repository, without the current root: the keys as they are, and a
	// word that the change itself cannot be shown.
	got = strings.Join(DescribeRoot(nil, &next.Signed, now), "\n")
	if !strings.Contains(got, "root v1 not known here") || strings.Contains(got, "ADDED") || !strings.Contains(got, "root: 1 of 2 keys") {
		t.Errorf("description without the current root:\n%s", got)
	}
}
