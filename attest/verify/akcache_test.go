package verify_test

import (
	"crypto"
	"crypto/x509"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
)

type softCA struct {
	key   crypto.Signer
	cert  *x509.Certificate
	roots *x509.CertPool
}

func newSoftCA(t *testing.T, validity time.Duration) softCA {
	t.Helper()
	key, cert, err := attestca.NewRoot("Cache Test CA", validity)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	return softCA{key, cert, roots}
}

func softEvidence(t *testing.T, d *attesttest.SoftDevice, nonce []byte) verify.Evidence {
	t.Helper()
	q, log, err := d.Quote(nonce)
	if err != nil {
		t.Fatal(err)
	}
	return verify.Evidence{AKCert: d.AKCert, Quote: q, Log: log}
}

// TestAKCache: a cached AK certificate verifies as before, and only as long as the full
// verification would: not after its chain expired, not against other roots, not for
// another device; failures are not kept, and the cache stays within its size.
func TestAKCache(t *testing.T) {
	ca := newSoftCA(t, time.Hour) // the chain expires with the root, in an hour
	other := newSoftCA(t, time.Hour)
	devs := make([]*attesttest.SoftDevice, 3)
	for i := range devs {
		d, err := attesttest.NewSoftDevice(ca.key, ca.cert, "dev-"+string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		d.Measure("model", "m", "1.0.0", strings.Repeat("1", 64))
		devs[i] = d
	}
	stranger, err := attesttest.NewSoftDevice(other.key, other.cert, "stranger")
	if err != nil {
		t.Fatal(err)
	}
	cache := verify.NewAKCache(2)
	now := time.Now()
	nonce := []byte("0123456789abcdef0123456789abcdef")
	check := func(d *attesttest.SoftDevice, roots *x509.CertPool, id string, at time.Time) verify.Verdict {
		t.Helper()
		return verify.Verify(verify.Policy{Roots: roots, PermanentIdentifier: id, AKCache: cache}, softEvidence(t, d, nonce), nonce, at)
	}
	for round := range 2 { // the second round hits the cache
		if v := check(devs[0], ca.roots, devs[0].ID, now); !v.Trusted || !slices.Equal(v.PermanentIdentifiers, []string{devs[0].ID}) {
			t.Fatalf("round %d: Verify(cached device) = %+v; want trusted, identifiers [%s]", round, v, devs[0].ID)
		}
	}
	if n := cache.Len(); n != 1 {
		t.Fatalf("cache holds %d certificates after one device; want 1", n)
	}
	// Another device's identity is refused from the cached certificate too.
	if v := check(devs[0], ca.roots, devs[1].ID, now); v.Trusted || v.Reasons[0].Code != verify.IdentityMismatch {
		t.Errorf("Verify(cached certificate, other device's ID) = %+v; want %s", v, verify.IdentityMismatch)
	}
	// Expired (the root's NotAfter passed) and not yet valid: refused, cached or not.
	for _, at := range []time.Time{now.Add(2 * time.Hour), now.Add(-time.Hour)} {
		if v := check(devs[0], ca.roots, devs[0].ID, at); v.Trusted || v.Reasons[0].Code != verify.AKCertInvalid {
			t.Errorf("Verify(cached certificate at %v) = %+v; want %s", at.Sub(now), v, verify.AKCertInvalid)
		}
	}
	// The same bytes against other roots: a new generation, verified in full.
	if v := check(devs[0], other.roots, devs[0].ID, now); v.Trusted || v.Reasons[0].Code != verify.AKCertInvalid {
		t.Errorf("Verify(cached certificate, other roots) = %+v; want %s", v, verify.AKCertInvalid)
	}
	if v := check(stranger, ca.roots, stranger.ID, now); v.Trusted || v.Reasons[0].Code != verify.AKCertInvalid {
		t.Errorf("Verify(certificate of another CA) = %+v; want %s", v, verify.AKCertInvalid)
	}
	if n := cache.Len(); n != 1 {
		t.Errorf("cache holds %d certificates after one success and failures; want 1 (failures are not kept)", n)
	}
	for round := range 2 {
		for _, d := range devs {
			if v := check(d, ca.roots, d.ID, now); !v.Trusted {
				t.Fatalf("round %d: Verify(%s) = %+v; want trusted", round, d.ID, v)
			}
		}
	}
	if n := cache.Len(); n != 2 {
		t.Errorf("cache of size 2 holds %d certificates after 3 devices; want 2", n)
	}
	// A forged quote under a cached certificate still fails its signature.
	ev := softEvidence(t, devs[2], nonce)
	ev.Quote.Attest = append([]byte(nil), ev.Quote.Attest...)
	ev.Quote.Attest[len(ev.Quote.Attest)-1] ^= 1
	if v := verify.Verify(verify.Policy{Roots: ca.roots, AKCache: cache}, ev, nonce, now); v.Trusted || v.Reasons[0].Code != verify.SignatureInvalid {
		t.Errorf("Verify(altered quote, cached certificate) = %+v; want %s", v, verify.SignatureInvalid)
	}
}

// TestAKCacheHitCostsOnlyTheQuote: what the cache is for. A device checking in again
// with a cached certificate is judged without parsing the certificate or verifying its
// chain again, so its check-in costs far fewer allocations than one verified in full;
// a cache of size 0 is one of DefaultAKCacheSize, not of one certificate.
func TestAKCacheHitCostsOnlyTheQuote(t *testing.T) {
	ca := newSoftCA(t, time.Hour)
	d, err := attesttest.NewSoftDevice(ca.key, ca.cert, "dev-hit")
	if err != nil {
		t.Fatal(err)
	}
	d.Measure("model", "m", "1.0.0", strings.Repeat("1", 64))
	nonce := []byte("0123456789abcdef0123456789abcdef")
	ev := softEvidence(t, d, nonce)
	now := time.Now()
	allocs := func(cache *verify.AKCache) float64 {
		t.Helper()
		p := verify.Policy{Roots: ca.roots, PermanentIdentifier: d.ID, AKCache: cache}
		if v := verify.Verify(p, ev, nonce, now); !v.Trusted {
			t.Fatalf("Verify = %+v; want trusted", v)
		}
		return testing.AllocsPerRun(20, func() {
			if v := verify.Verify(p, ev, nonce, now); !v.Trusted {
				t.Fatalf("Verify = %+v; want trusted", v)
			}
		})
	}
	full, cached := allocs(nil), allocs(verify.NewAKCache(1))
	t.Logf("allocations per check-in: %.0f verified in full, %.0f from the cache", full, cached)
	if cached > full/2 {
		t.Errorf("a cached certificate costs %.0f allocations per check-in, a full verification %.0f: the cache did not spare the chain", cached, full)
	}

	// Size 0: the default size.
	cache := verify.NewAKCache(0)
	for i := range 3 {
		dev, err := attesttest.NewSoftDevice(ca.key, ca.cert, "dev-"+string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		if v := verify.Verify(verify.Policy{Roots: ca.roots, AKCache: cache}, softEvidence(t, dev, nonce), nonce, now); !v.Trusted {
			t.Fatalf("Verify(%s) = %+v; want trusted", dev.ID, v)
		}
	}
	if n := cache.Len(); n != 3 {
		t.Errorf("NewAKCache(0) holds %d certificates after 3 devices; want 3 (size 0 is DefaultAKCacheSize)", n)
	}
}
