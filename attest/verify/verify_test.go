package verify_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
)

var (
	runtimeV1 = eventlog.Event{PCR: 16, Kind: "runtime", Name: "onnxruntime", Version: "1.24.0", SHA256: strings.Repeat("1", 64)}
	modelV3   = eventlog.Event{PCR: 16, Kind: "model", Name: "vibration-anomaly", Version: "3.1.0", SHA256: strings.Repeat("3", 64)}
	modelV2   = eventlog.Event{PCR: 16, Kind: "model", Name: "vibration-anomaly", Version: "3.0.0", SHA256: strings.Repeat("2", 64)}
)

func art(e eventlog.Event) eventlog.Artifact {
	return eventlog.Artifact{Kind: e.Kind, Name: e.Name, Version: e.Version, SHA256: e.SHA256}
}

// device is a simulator TPM enrolled with an attestation CA, with a
// measurement log.
type device struct {
	tpm    *attest.TPM
	ca     *attestca.CA
	akCert *attest.AKCertificate
	log    eventlog.Log
}

func enrolledDevice(t testing.TB, ca *attestca.CA, maker *attesttest.Manufacturer) *device {
	t.Helper()
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ca.Handler())
	defer srv.Close()
	ak, err := (&attest.EnrollClient{URL: srv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll() = %v", err)
	}
	if err := tpm.ResetPCR(ctx, 16); err != nil {
		t.Fatal(err)
	}
	d := &device{tpm: tpm, ca: ca, akCert: ak}
	for _, e := range []eventlog.Event{runtimeV1, modelV2, modelV3} {
		d.measure(t, e)
	}
	return d
}

func (d *device) measure(t testing.TB, e eventlog.Event) {
	t.Helper()
	if _, err := d.tpm.Measure(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	d.log = append(d.log, e)
}

func (d *device) evidence(t testing.TB, nonce []byte) verify.Evidence {
	t.Helper()
	ev, err := d.tpm.Evidence(context.Background(), d.akCert, nonce, []int{0, 16}, slices.Clone(d.log))
	if err != nil {
		t.Fatal(err)
	}
	return *ev
}

func newCA(t testing.TB) (*attestca.CA, *attesttest.Manufacturer) {
	t.Helper()
	m, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: m.Roots(), ManufacturerIntermediates: poolOf(m)})
	if err != nil {
		t.Fatal(err)
	}
	return ca, m
}

func poolOf(m *attesttest.Manufacturer) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(m.Intermediate)
	return p
}

func codes(v verify.Verdict) []verify.Code {
	var out []verify.Code
	for _, r := range v.Reasons {
		out = append(out, r.Code)
	}
	return out
}

func TestVerify(t *testing.T) {
	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	now := time.Now()
	nonce := bytes.Repeat([]byte{7}, 32)
	good := d.evidence(t, nonce)
	expected := []eventlog.Artifact{art(runtimeV1), art(modelV3)}
	policy := verify.Policy{Roots: ca.Roots(), Expected: expected, PermanentIdentifier: d.akCert.PermanentIdentifier}

	// Evidence from a second, differently manufactured TPM enrolled with
	// another CA: its AK certificate is not from our CA, and its quotes are
	// not signed by our device's AK.
	otherCA, otherMaker := newCA(t)
	d.tpm.Close() // the simulator is one per process
	other := enrolledDevice(t, otherCA, otherMaker)
	otherEv := other.evidence(t, nonce)
	other.tpm.Close()

	tests := []struct {
		name   string
		policy func(p *verify.Policy)
		ev     func(ev *verify.Evidence)
		nonce  []byte
		want   []verify.Code
	}{
		{name: "genuine", want: nil},
		{name: "no expectations", policy: func(p *verify.Policy) { p.Expected = nil }, want: nil},
		{name: "wrong nonce", nonce: bytes.Repeat([]byte{8}, 32), want: []verify.Code{verify.NonceMismatch}},
		{name: "empty nonce", nonce: []byte{}, want: []verify.Code{verify.NonceMismatch}},
		{name: "AK cert from another CA", ev: func(ev *verify.Evidence) { ev.AKCert = otherEv.AKCert }, want: []verify.Code{verify.AKCertInvalid}},
		{name: "quote from a different TPM's AK", ev: func(ev *verify.Evidence) { ev.Quote = otherEv.Quote }, want: []verify.Code{verify.SignatureInvalid}},
		{name: "another device's identity", policy: func(p *verify.Policy) { p.PermanentIdentifier = other.akCert.PermanentIdentifier }, want: []verify.Code{verify.IdentityMismatch}},
		{name: "tampered attest bytes", ev: func(ev *verify.Evidence) {
			ev.Quote.Attest = slices.Clone(ev.Quote.Attest)
			ev.Quote.Attest[len(ev.Quote.Attest)-1] ^= 1
		}, want: []verify.Code{verify.SignatureInvalid}},
		{name: "garbage signature", ev: func(ev *verify.Evidence) { ev.Quote.Signature = []byte{0, 1, 2} }, want: []verify.Code{verify.SignatureInvalid}},
		{name: "garbage AK cert", ev: func(ev *verify.Evidence) { ev.AKCert = []byte("x") }, want: []verify.Code{verify.AKCertInvalid}},
		{name: "PCR value not the quoted one", ev: func(ev *verify.Evidence) {
			ev.Quote.PCRs = map[int][]byte{0: ev.Quote.PCRs[0], 16: make([]byte, 32)}
		}, want: []verify.Code{verify.LogReplayMismatch, verify.PCRDigestMismatch}},
		{name: "PCR dropped", ev: func(ev *verify.Evidence) {
			ev.Quote.PCRs = map[int][]byte{16: ev.Quote.PCRs[16]}
		}, want: []verify.Code{verify.PCRDigestMismatch}},
		{name: "tampered log: version changed", ev: func(ev *verify.Evidence) {
			ev.Log[2].Version = "3.1.1"
		}, want: []verify.Code{verify.ArtifactMismatch, verify.LogReplayMismatch}},
		{name: "tampered log: event dropped", ev: func(ev *verify.Evidence) {
			ev.Log = slices.Delete(ev.Log, 1, 2)
		}, want: []verify.Code{verify.LogReplayMismatch}},
		{name: "tampered log: reordered", ev: func(ev *verify.Evidence) {
			ev.Log[1], ev.Log[2] = ev.Log[2], ev.Log[1]
		}, want: []verify.Code{verify.ArtifactMismatch, verify.LogReplayMismatch}},
		{name: "malformed log", ev: func(ev *verify.Evidence) { ev.Log[0].SHA256 = "zz" }, want: []verify.Code{verify.LogMalformed}},
		{name: "log on another PCR", policy: func(p *verify.Policy) { p.MeasurementPCR = 23 },
			want: []verify.Code{verify.LogMalformed, verify.LogMalformed, verify.LogMalformed, verify.LogReplayMismatch, verify.PCRNotQuoted}},
		{name: "server expects another model version", policy: func(p *verify.Policy) {
			p.Expected = []eventlog.Artifact{art(runtimeV1), art(modelV2)}
		}, want: []verify.Code{verify.ArtifactMismatch}},
		{name: "expected artifact not measured", policy: func(p *verify.Policy) {
			p.Expected = append(slices.Clone(expected), eventlog.Artifact{Kind: "model", Name: "other", Version: "1", SHA256: strings.Repeat("f", 64)})
		}, want: []verify.Code{verify.ArtifactNotMeasured}},
		{name: "unexpected artifact", policy: func(p *verify.Policy) {
			p.Expected = []eventlog.Artifact{art(modelV3)}
		}, want: []verify.Code{verify.ArtifactUnexpected}},
		{name: "expired AK cert", policy: nil, ev: nil, nonce: nil, want: nil},
	}
	for _, tc := range tests {
		p := policy
		if tc.policy != nil {
			tc.policy(&p)
		}
		ev := good
		ev.Log = slices.Clone(good.Log)
		ev.Quote.PCRs = good.Quote.PCRs
		if tc.ev != nil {
			tc.ev(&ev)
		}
		n := nonce
		if tc.nonce != nil {
			n = tc.nonce
		}
		at := now
		if tc.name == "expired AK cert" {
			at = now.Add(2 * 365 * 24 * time.Hour)
			tc.want = []verify.Code{verify.AKCertInvalid}
		}
		v := verify.Verify(p, ev, n, at)
		if got := codes(v); !slices.Equal(got, tc.want) || v.Trusted != (len(tc.want) == 0) {
			t.Errorf("%s: Verify() = trusted %v %v; want %v", tc.name, v.Trusted, v.Reasons, tc.want)
		}
	}

	// What an operator reads: both versions, with the start of both digests.
	older := policy
	older.Expected = []eventlog.Artifact{art(runtimeV1), art(modelV2)}
	v := verify.Verify(older, good, nonce, now)
	if got, want := v.Reasons[0].String(), "artifact_mismatch: model vibration-anomaly: runs 3.1.0 (333333333333), expected 3.0.0 (222222222222)"; len(v.Reasons) != 1 || got != want {
		t.Errorf("Verify(another version expected) = %v; want %q", v.Reasons, want)
	}

	v = verify.Verify(policy, good, nonce, now)
	if want := []eventlog.Artifact{art(modelV3), art(runtimeV1)}; !slices.Equal(v.Measured, want) {
		t.Errorf("Measured = %v; want %v", v.Measured, want)
	}
	if len(v.PermanentIdentifiers) != 1 || v.PermanentIdentifiers[0] != d.akCert.PermanentIdentifier {
		t.Errorf("PermanentIdentifiers = %v", v.PermanentIdentifiers)
	}
}

func TestCheckNonces(t *testing.T) {
	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	now := time.Now()
	clock := func() time.Time { return now }
	nonces := verify.NewNonces(verify.NoncesConfig{TTL: time.Minute, Now: clock})
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{art(runtimeV1), art(modelV3)}}
	const dev = "device-1"

	n1, err := nonces.Issue(dev)
	if err != nil {
		t.Fatal(err)
	}
	ev := d.evidence(t, n1)
	if v := verify.Check(nonces, dev, n1, nil, policy, ev, now); !v.Trusted {
		t.Fatalf("Check(fresh) = %v; want trusted", v.Reasons)
	}
	// Replay of the same (genuine) quote.
	if v := verify.Check(nonces, dev, n1, nil, policy, ev, now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.NonceUnknownOrReused}) {
		t.Errorf("Check(replayed) = %v; want nonce_unknown_or_reused", v.Reasons)
	}
	// A nonce issued to another device.
	n2, _ := nonces.Issue("device-2")
	if v := verify.Check(nonces, dev, n2, nil, policy, d.evidence(t, n2), now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.NonceUnknownOrReused}) {
		t.Errorf("Check(other device's nonce) = %v; want nonce_unknown_or_reused", v.Reasons)
	}
	// A stale nonce.
	n3, _ := nonces.Issue(dev)
	ev3 := d.evidence(t, n3)
	now = now.Add(2 * time.Minute)
	if v := verify.Check(nonces, dev, n3, nil, policy, ev3, now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.NonceExpired}) {
		t.Errorf("Check(stale) = %v; want nonce_expired", v.Reasons)
	}
	// Forged evidence does not burn the device's outstanding nonce.
	n4, _ := nonces.Issue(dev)
	bad := d.evidence(t, n4)
	bad.Quote.Signature = []byte{1}
	if v := verify.Check(nonces, dev, n4, nil, policy, bad, now); v.Trusted {
		t.Errorf("Check(forged) trusted")
	}
	if v := verify.Check(nonces, dev, n4, nil, policy, d.evidence(t, n4), now); !v.Trusted {
		t.Errorf("Check(genuine after forged) = %v; want trusted", v.Reasons)
	}
	// A quote over a digest binding the nonce to a request (as the device API's): an
	// altered request (another digest) is rejected without burning the nonce.
	n7, _ := nonces.Issue(dev)
	bound := sha256.Sum256(append([]byte("request\x00"), n7...))
	altered := sha256.Sum256(append([]byte("altered\x00"), n7...))
	evb := d.evidence(t, bound[:])
	if v := verify.Check(nonces, dev, n7, altered[:], policy, evb, now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.NonceMismatch}) {
		t.Errorf("Check(altered request) = %v; want nonce_mismatch", v.Reasons)
	}
	if v := verify.Check(nonces, dev, n7, bound[:], policy, evb, now); !v.Trusted {
		t.Errorf("Check(bound, after an altered request) = %v; want trusted", v.Reasons)
	}
	// A file changed on disk shows up at its next load: PCR extended
	// with the new digest, server still expects the committed one.
	n5, _ := nonces.Issue(dev)
	changed := modelV3
	changed.SHA256 = strings.Repeat("e", 64)
	d.measure(t, changed)
	if v := verify.Check(nonces, dev, n5, nil, policy, d.evidence(t, n5), now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.ArtifactMismatch}) {
		t.Errorf("Check(modified model) = %v; want artifact_mismatch", v.Reasons)
	}
	// An extend the log does not record.
	n6, _ := nonces.Issue(dev)
	if _, err := d.tpm.Measure(context.Background(), modelV2); err != nil {
		t.Fatal(err)
	}
	if v := verify.Check(nonces, dev, n6, nil, policy, d.evidence(t, n6), now); v.Trusted || !slices.Contains(codes(v), verify.LogReplayMismatch) {
		t.Errorf("Check(unlogged extend) = %v; want log_replay_mismatch", v.Reasons)
	}
}

// TestVerifyEncryptedArtifact: an encrypted model's event carries the plaintext hash
// the runtime decrypted beside its ciphertext hash, the quote covers both, and the
// verifier holds the plaintext hash to what the server expects (the target's signed
// metadata) as it holds the ciphertext's (issue 18).
func TestVerifyEncryptedArtifact(t *testing.T) {
	ca, maker := newCA(t)
	d := enrolledDevice(t, ca, maker)
	enc := eventlog.Event{PCR: 16, Kind: "model", Name: "vibration-anomaly", Version: "4.0.0", SHA256: strings.Repeat("4", 64), PlainSHA256: strings.Repeat("5", 64)}
	d.measure(t, enc)
	now := time.Now()
	nonce := bytes.Repeat([]byte{9}, 32)
	good := d.evidence(t, nonce)
	want := eventlog.Artifact{Kind: enc.Kind, Name: enc.Name, Version: enc.Version, SHA256: enc.SHA256, PlainSHA256: enc.PlainSHA256}
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{art(runtimeV1), want}}

	v := verify.Verify(policy, good, nonce, now)
	if !v.Trusted {
		t.Fatalf("Verify(encrypted model as expected) = %v; want trusted", v.Reasons)
	}
	if !slices.Contains(v.Measured, want) {
		t.Errorf("Measured = %v; want it to hold %v (the plaintext hash shown)", v.Measured, want)
	}
	// The content key was rotated since: the device still runs the superseded
	// ciphertext of the same plaintext. Trusted, and said, so that the server offers
	// it the new one; a superseded ciphertext of another plaintext or version is not.
	rotated := want
	rotated.SHA256 = strings.Repeat("7", 64)
	sp := policy
	sp.Expected = []eventlog.Artifact{art(runtimeV1), rotated}
	sp.Superseded = []eventlog.Artifact{want}
	if v := verify.Verify(sp, good, nonce, now); !v.Trusted || !slices.Equal(v.Superseded, []eventlog.Artifact{want}) {
		t.Errorf("Verify(superseded ciphertext) = trusted %v %v, superseded %v; want trusted, %v superseded", v.Trusted, v.Reasons, v.Superseded, want)
	}
	sp.Superseded = nil
	if v := verify.Verify(sp, good, nonce, now); v.Trusted || !slices.Equal(codes(v), []verify.Code{verify.ArtifactMismatch}) {
		t.Errorf("Verify(an earlier ciphertext not listed as superseded) = %v; want artifact_mismatch", v.Reasons)
	}
	otherPlain := rotated
	otherPlain.PlainSHA256 = strings.Repeat("8", 64)
	sp.Expected = []eventlog.Artifact{art(runtimeV1), otherPlain}
	sp.Superseded = []eventlog.Artifact{want}
	if v := verify.Verify(sp, good, nonce, now); v.Trusted || len(v.Superseded) != 0 {
		t.Errorf("Verify(superseded ciphertext of another plaintext) = trusted %v %v; want artifact_mismatch", v.Trusted, v.Reasons)
	}
	if v := verify.Verify(policy, good, nonce, now); len(v.Superseded) != 0 {
		t.Errorf("Verify(current ciphertext).Superseded = %v; want none", v.Superseded)
	}

	other := want
	other.PlainSHA256 = strings.Repeat("6", 64)
	plain := want
	plain.PlainSHA256 = ""
	tests := []struct {
		name     string
		expected eventlog.Artifact
		ev       func(ev *verify.Evidence)
		want     []verify.Code
		reason   string
	}{
		{name: "another plaintext expected", expected: other, want: []verify.Code{verify.ArtifactMismatch},
			reason: "artifact_mismatch: model vibration-anomaly 4.0.0: decrypted plaintext 555555555555, expected 666666666666"},
		{name: "a plaintext target expected", expected: plain, want: []verify.Code{verify.ArtifactMismatch},
			reason: "artifact_mismatch: model vibration-anomaly 4.0.0: decrypted plaintext 555555555555, expected none"},
		// The log claims the expected plaintext but the TPM extended another: the
		// plaintext hash is in the quoted PCR, not only in the log.
		{name: "log's plaintext hash rewritten", expected: other, ev: func(ev *verify.Evidence) {
			ev.Log[len(ev.Log)-1].PlainSHA256 = other.PlainSHA256
		}, want: []verify.Code{verify.LogReplayMismatch}},
		{name: "log's plaintext hash dropped", expected: plain, ev: func(ev *verify.Evidence) {
			ev.Log[len(ev.Log)-1].PlainSHA256 = ""
		}, want: []verify.Code{verify.LogReplayMismatch}},
	}
	for _, tc := range tests {
		p := policy
		p.Expected = []eventlog.Artifact{art(runtimeV1), tc.expected}
		ev := good
		ev.Log = slices.Clone(good.Log)
		if tc.ev != nil {
			tc.ev(&ev)
		}
		v := verify.Verify(p, ev, nonce, now)
		if got := codes(v); !slices.Equal(got, tc.want) || v.Trusted {
			t.Errorf("%s: Verify() = trusted %v %v; want %v", tc.name, v.Trusted, v.Reasons, tc.want)
		}
		if tc.reason != "" && (len(v.Reasons) != 1 || v.Reasons[0].String() != tc.reason) {
			t.Errorf("%s: Verify() = %v; want %q", tc.name, v.Reasons, tc.reason)
		}
	}
}
