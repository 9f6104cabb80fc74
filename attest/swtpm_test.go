package attest_test

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
)

// TestSwtpmEKCertAndFloor runs against a real swtpm process: the EK
// certificate swtpm_setup --create-ek-cert wrote is read from NV and chains to
// swtpm's local CA, and an NV floor survives a power cycle.
func TestSwtpmEKCertAndFloor(t *testing.T) {
	ctx := context.Background()
	sw := attesttest.StartSwtpm(t, true)
	tpm, err := attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatalf("Open(%s) = %v", sw.URL, err)
	}
	ek, err := tpm.EK(ctx, attest.RSA)
	if err != nil {
		t.Fatalf("EK(RSA) = %v", err)
	}
	if ek.Certificate == nil {
		t.Fatalf("swtpm EK has no certificate at %#x", uint32(attest.EKCertIndexRSA))
	}
	c := *ek.Certificate
	c.UnhandledCriticalExtensions = nil
	if _, err := c.Verify(x509.VerifyOptions{Roots: sw.CARoots, Intermediates: sw.CAIntermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("swtpm EK cert does not chain to swtpm's local CA: %v", err)
	}
	info, err := tpm.Info(ctx)
	if err != nil || info.Manufacturer != "id:49424D00" {
		t.Errorf("Info() = %+v, %v; want IBM (id:49424D00)", info, err)
	}
	if v, err := tpm.Floor("model").RaiseTo(ctx, 42); err != nil || v != 42 {
		t.Fatalf("RaiseTo(42) = %d, %v", v, err)
	}
	tpm.Close()

	sw.Restart()
	tpm, err = attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatalf("Open after restart = %v", err)
	}
	defer tpm.Close()
	if v, err := tpm.Floor("model").Read(ctx); err != nil || v != 42 {
		t.Errorf("floor after power cycle = %d, %v; want 42", v, err)
	}
}
