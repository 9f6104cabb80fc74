package reposerver

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/protocol"
)

// TestEKAllowlist: --ek-allowlist admits the EKs it lists, by ID or by EK certificate,
// and refuses others (attestca.ErrRefused: a 403 and a recorded refusal); a change to
// the file applies without a restart; a file that no longer parses refuses everyone
// until fixed (fails closed); a decommissioned device stays refused when listed.
func TestEKAllowlist(t *testing.T) {
	ctx := context.Background()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "EK"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	certID, _ := protocol.EKID(&k.PublicKey)
	const listed, other = "urn:ek:sha256:AAAA", "urn:ek:sha256:BBBB"
	path := filepath.Join(t.TempDir(), "eks.txt")
	write := func(s string, at time.Time) {
		t.Helper()
		if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chtimes(path, at, at)
	}
	t0 := time.Now().Add(-time.Hour)
	write("# the plant's TPMs\n"+listed+"\n\n"+string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})), t0)
	decom := func(_ context.Context, id string) error {
		if id == listed+"-gone" {
			return attestca.ErrRefused
		}
		return nil
	}
	refuse := refuseEK(&ekAllowlist{path: path}, decom)
	for id, ok := range map[string]bool{listed: true, certID: true, other: false} {
		if err := refuse(ctx, id); ok != (err == nil) || (!ok && !errors.Is(err, attestca.ErrRefused)) {
			t.Errorf("Refuse(%s) = %v; want allowed %v", id, err, ok)
		}
	}
	write(listed+"\n"+other+"\n", t0.Add(time.Minute)) // added without a restart
	if err := refuse(ctx, other); err != nil {
		t.Errorf("Refuse(%s) after it was added = %v", other, err)
	}
	if err := refuse(ctx, certID); !errors.Is(err, attestca.ErrRefused) {
		t.Errorf("Refuse(%s) after its certificate was removed = %v", certID, err)
	}
	write(listed+"\nnot an id\n", t0.Add(2*time.Minute))
	if err := refuse(ctx, listed); !errors.Is(err, attestca.ErrRefused) {
		t.Errorf("Refuse(listed) with a file that does not parse = %v; want refused", err)
	}
	write(listed+"-gone\n", t0.Add(3*time.Minute))
	if err := refuse(ctx, listed+"-gone"); !errors.Is(err, attestca.ErrRefused) {
		t.Errorf("Refuse(listed, decommissioned) = %v; want refused", err)
	}
	for _, bad := range []string{"urn:ek:sha256:A B\n", "-----BEGIN CERTIFICATE-----\nnotbase64\n", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"} {
		if _, err := parseEKAllowlist([]byte(bad)); err == nil {
			t.Errorf("parseEKAllowlist(%q) = nil error", bad)
		}
	}
}
