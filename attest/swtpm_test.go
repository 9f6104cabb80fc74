package attest_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/eventlog"
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
	e := eventlog.Event{PCR: 16, Kind: "model", Name: "m", Version: "1", SHA256: strings.Repeat("d", 64)}
	if _, err := tpm.Measure(ctx, e); err != nil {
		t.Fatal(err)
	}
	tpm.Close()

	// Reopening (an agent restart) keeps the PCRs; a power cycle clears them.
	tpm, err = attest.Open(ctx, sw.URL)
	if err != nil {
		t.Fatalf("reopen = %v", err)
	}
	want := eventlog.Log{e}.Replay()[16]
	if got, err := tpm.ReadPCRs(ctx, 16); err != nil || !bytes.Equal(got[16], want[:]) {
		t.Errorf("PCR16 after reopen = %x, %v; want %x", got[16], err, want)
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
	if got, err := tpm.ReadPCRs(ctx, 16); err != nil || !bytes.Equal(got[16], make([]byte, 32)) {
		t.Errorf("PCR16 after power cycle = %x, %v; want zero", got[16], err)
	}
}
