package verify_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/eventlog"
)

// TestInteropTPM2Tools checks quotes both ways against a real swtpm:
// tpm2_checkquote (tpm2-tools) accepts a quote made by attest.TPM.Quote, and
// verify.Verify accepts a quote made by tpm2_quote with the same AK (our AK
// template is what tpm2_createprimary makes from the same attributes).
func TestInteropTPM2Tools(t *testing.T) {
	attesttest.NeedBinary(t, "tpm2_quote", "tpm2_checkquote", "tpm2_createprimary")
	ctx := context.Background()
	sw := attesttest.StartSwtpm(t, true)
	dir := t.TempDir()

	tpm, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatal(err)
	}
	signer, root, _ := attestca.NewRoot("Edgeward Attestation CA", time.Hour)
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: sw.CARoots, ManufacturerIntermediates: sw.CAIntermediates})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ca.Handler())
	defer srv.Close()
	ak, err := (&attest.EnrollClient{URL: srv.URL}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("Enroll(swtpm) = %v", err)
	}
	e := eventlog.Event{PCR: 16, Kind: "model", Name: "m", Version: "1", SHA256: strings.Repeat("c", 64)}
	if _, err := tpm.Measure(ctx, e); err != nil {
		t.Fatal(err)
	}
	log := eventlog.Log{e}
	policy := verify.Policy{Roots: ca.Roots(), Expected: []eventlog.Artifact{{Kind: "model", Name: "m", Version: "1", SHA256: e.SHA256}}}

	// 1. Ours, checked by tpm2_checkquote.
	nonce := bytes.Repeat([]byte{0x5a}, 32)
	q, err := tpm.Quote(ctx, nonce, []int{16})
	if err != nil {
		t.Fatal(err)
	}
	if v := verify.Verify(policy, verify.Evidence{AKCert: ak.Certificate.Raw, Quote: *q, Log: log}, nonce, time.Now()); !v.Trusted {
		t.Fatalf("Verify(our swtpm quote) = %v", v.Reasons)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(ak.Certificate.PublicKey)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	akPEM := write("ak.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}))
	msg := write("msg", q.Attest)
	sig := write("sig", q.Signature)
	run := func(name string, args ...string) []byte {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = append(os.Environ(), fmt.Sprintf("TPM2TOOLS_TCTI=swtpm:host=127.0.0.1,port=%d", sw.Port))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
		return out
	}
	run("tpm2_checkquote", "-u", akPEM, "-m", msg, "-s", sig, "-g", "sha256", "-q", hex.EncodeToString(nonce))
	// A different nonce must make tpm2_checkquote fail.
	if out, err := exec.Command("tpm2_checkquote", "-u", akPEM, "-m", msg, "-s", sig, "-g", "sha256", "-q", hex.EncodeToString(bytes.Repeat([]byte{1}, 32))).CombinedOutput(); err == nil {
		t.Errorf("tpm2_checkquote with a wrong nonce succeeded:\n%s", out)
	}

	// 2. tpm2_quote's, checked by us. swtpm serves one connection at a time.
	tpm.Close()
	akCtx := filepath.Join(dir, "ak.ctx")
	run("tpm2_createprimary", "-C", "o", "-g", "sha256", "-G", "rsa2048:rsassa-sha256:null",
		"-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|noda|restricted|sign", "-c", akCtx)
	nonce2 := bytes.Repeat([]byte{0xa5}, 32)
	msg2, sig2 := filepath.Join(dir, "msg2"), filepath.Join(dir, "sig2")
	run("tpm2_quote", "-c", akCtx, "-l", "sha256:16", "-q", hex.EncodeToString(nonce2), "-m", msg2, "-s", sig2, "-g", "sha256")
	attestBytes, _ := os.ReadFile(msg2)
	sigBytes, _ := os.ReadFile(sig2)

	tpm, err = attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	pcrs, err := tpm.ReadPCRs(ctx, 16)
	if err != nil {
		t.Fatal(err)
	}
	ev := verify.Evidence{AKCert: ak.Certificate.Raw, Quote: attest.Quote{Attest: attestBytes, Signature: sigBytes, PCRs: pcrs}, Log: log}
	if v := verify.Verify(policy, ev, nonce2, time.Now()); !v.Trusted {
		t.Errorf("Verify(tpm2_quote's quote) = %v", v.Reasons)
	}
	if v := verify.Verify(policy, ev, nonce, time.Now()); v.Trusted {
		t.Errorf("Verify(tpm2_quote's quote, wrong nonce) trusted")
	}
}
