package attestca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
)

// publicEK is an enrollment request for someone else's TPM, as an attacker can
// build it from public material: an ECC EK and its manufacturer certificate
// (EK certificates are public), with any AK. The attacker cannot answer the
// challenge; it can only ask for them.
func publicEK(t *testing.T, f *fixture, ak []byte) *protocol.EnrollRequest {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.PublicKey.ECDH(); err != nil { // a valid point
		t.Fatal(err)
	}
	tmpl := tpm2.ECCEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: pad32(k.X)},
		Y: tpm2.TPM2BECCParameter{Buffer: pad32(k.Y)},
	})
	info := attest.Info{Manufacturer: "id:41434D45", Model: "Acme", Version: "id:00010002"}
	cert, err := f.maker.IssueEKCert(&k.PublicKey, info)
	if err != nil {
		t.Fatal(err)
	}
	return &protocol.EnrollRequest{EKAlg: "ecc", EKCert: cert, EKPublic: tpm2.Marshal(tmpl), AKPublic: ak, TPM: protocol.TPMInfo(info)}
}

func pad32(n *big.Int) []byte { return n.FillBytes(make([]byte, 32)) }

// TestReplayedEKCannotBlockEnrollment replays issue 15 item 2: one public EK
// certificate replayed 20,000 times filled the 10,000 pending challenges, and
// every other TPM got 503. The replays now hold one slot; a different genuine
// TPM (the simulator) enrolls over HTTP.
func TestReplayedEKCannotBlockEnrollment(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	genuine := enrollRequest(t, f.tpm, attest.RSA)
	evil := publicEK(t, f, genuine.AKPublic)
	n := 20000
	if testing.Short() {
		n = 10001 // one past the old global cap still replays the attack
	}
	for i := 0; i < n; i++ {
		if _, err := f.ca.ChallengeFrom(ctx, "203.0.113.7", evil); err != nil {
			t.Fatalf("replay %d: ChallengeFrom() = %v", i, err)
		}
	}
	if _, err := f.client(attest.RSA).Enroll(ctx, f.tpm); err != nil {
		t.Fatalf("Enroll(genuine TPM) after 20,000 replays of another EK = %v; want an AK certificate", err)
	}
}

// TestPendingFairCap: a source sending many distinct public EK certificates is
// held to its own bound, and when the global cap is reached a newcomer evicts
// the largest holder's oldest challenge instead of getting 503. The evicted
// challenge is gone; the newcomer's can be answered.
func TestPendingFairCap(t *testing.T) {
	f := newFixture(t, func(c *attestca.Config) { c.MaxPending = 8; c.MaxPendingPerSource = 6 })
	ctx := context.Background()
	genuine := enrollRequest(t, f.tpm, attest.RSA)
	var flood []*protocol.EnrollChallenge
	for i := 0; i < 20; i++ {
		ch, err := f.ca.ChallengeFrom(ctx, "flooder", publicEK(t, f, genuine.AKPublic))
		if err != nil {
			t.Fatalf("flood %d: ChallengeFrom() = %v", i, err)
		}
		flood = append(flood, ch)
	}
	// Past its bound, the flooder lost its own oldest challenges.
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: flood[0].ID, Secret: make([]byte, 32)}); !errors.Is(err, attestca.ErrUnknownChallenge) {
		t.Errorf("Activate(flooder's first challenge) = %v; want ErrUnknownChallenge (evicted by its own bound)", err)
	}
	for i := 0; i < 2; i++ {
		if _, err := f.ca.ChallengeFrom(ctx, fmt.Sprintf("other-%d", i), publicEK(t, f, genuine.AKPublic)); err != nil {
			t.Fatalf("other source %d: ChallengeFrom() = %v", i, err)
		}
	}
	// The cap (8) is reached with 7 live challenges: flooder 5 of 6 after the
	// Activate above burned one, others 2. Fill it, then a newcomer still gets in.
	if _, err := f.ca.ChallengeFrom(ctx, "flooder", publicEK(t, f, genuine.AKPublic)); err != nil {
		t.Fatal(err)
	}
	ch, err := f.ca.ChallengeFrom(ctx, "device", genuine)
	if err != nil {
		t.Fatalf("ChallengeFrom(genuine, new source) at the global cap = %v; want a challenge", err)
	}
	secret, err := f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); err != nil {
		t.Fatalf("Activate(genuine) = %v", err)
	}
}

// TestPendingBusyAtFairShare: at the cap, a source holding as much as everyone
// else is refused rather than evicting.
func TestPendingBusyAtFairShare(t *testing.T) {
	ctx := context.Background()
	f2 := newFixture(t, func(c *attestca.Config) { c.MaxPending = 2; c.MaxPendingPerSource = 2 })
	genuine := enrollRequest(t, f2.tpm, attest.RSA)
	for _, src := range []string{"a", "b"} {
		if _, err := f2.ca.ChallengeFrom(ctx, src, publicEK(t, f2, genuine.AKPublic)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f2.ca.ChallengeFrom(ctx, "a", publicEK(t, f2, genuine.AKPublic)); !errors.Is(err, attestca.ErrBusy) {
		t.Errorf("ChallengeFrom(a, holding its fair share at the cap) = %v; want ErrBusy", err)
	}
}

// TestOthersCannotReplaceADevicesChallenge: one who knows a device's public enrollment
// request (its EK certificate and public parts) asks for challenges in its name from
// another source while the device answers its own: the device's challenge stays, and
// it enrolls. (A new challenge for an EK replaced its pending one from any source:
// 2 requests a second kept a device with a hardware TPM's slow activation from ever
// enrolling, found from outside, 2 Dec.) From its own source a new request still
// replaces its old challenge.
func TestOthersCannotReplaceADevicesChallenge(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	genuine := enrollRequest(t, f.tpm, attest.RSA)
	ch, err := f.ca.ChallengeFrom(ctx, "10.0.0.5", genuine)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := f.ca.ChallengeFrom(ctx, fmt.Sprintf("203.0.113.%d", i%3), genuine); err != nil {
			t.Fatalf("replay %d: %v", i, err)
		}
	}
	secret, err := f.tpm.ActivateCredential(ctx, attest.RSA, ch.CredentialBlob, ch.EncryptedSecret)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: ch.ID, Secret: secret}); err != nil {
		t.Fatalf("Activate(the device's challenge, after 50 requests in its name from elsewhere) = %v; want an AK certificate", err)
	}
	old, err := f.ca.ChallengeFrom(ctx, "10.0.0.5", genuine)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.ChallengeFrom(ctx, "10.0.0.5", genuine); err != nil {
		t.Fatal(err)
	}
	if _, err := f.ca.Activate(ctx, &protocol.ActivateRequest{ID: old.ID, Secret: secret}); !errors.Is(err, attestca.ErrUnknownChallenge) {
		t.Errorf("Activate(a challenge its own source replaced) = %v; want ErrUnknownChallenge", err)
	}
}
