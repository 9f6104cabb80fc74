package attest

import (
	"context"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/edgeward/edgeward/internal/eventlog"
)

// Measure extends e.PCR with e.Digest() and returns the event for the caller
// to append to its measurement log. The caller must append it (durably)
// before relying on a later quote: a PCR extended without a log entry makes
// every later quote of this boot fail verification, which is the fail-closed
// outcome.
func (t *TPM) Measure(ctx context.Context, e eventlog.Event) (eventlog.Event, error) {
	if err := e.Validate(); err != nil {
		return e, err
	}
	if err := t.Extend(ctx, e.PCR, e.Digest()); err != nil {
		return e, fmt.Errorf("attest: measure %s/%s@%s: %w", e.Kind, e.Name, e.Version, err)
	}
	return e, nil
}

// Extend extends the SHA-256 bank of pcr with digest. Firmware and the kernel
// extend the boot PCRs (0–7) and IMA's (10) on a real device; tests use
// Extend to replay a recorded boot or IMA log into a simulator, so that its
// quotes and the log agree as on real hardware.
func (t *TPM) Extend(ctx context.Context, pcr int, digest [32]byte) error {
	if pcr < 0 || pcr > 23 {
		return fmt.Errorf("attest: extend: PCR %d out of range", pcr)
	}
	return t.do(ctx, func(tp transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
				HashAlg: tpm2.TPMAlgSHA256, Digest: digest[:],
			}}},
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: extend PCR %d: %w", pcr, err)
		}
		return nil
	})
}

// ResetPCR resets a resettable PCR (16 or 23) to zero, which starts a new
// measurement log. Tests and a fresh agent state use it; production agents
// normally rely on the reset at boot.
func (t *TPM) ResetPCR(ctx context.Context, pcr int) error {
	return t.do(ctx, func(tp transport.TPM) error {
		_, err := tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)}}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: reset PCR %d: %w", pcr, err)
		}
		return nil
	})
}

// ReadPCRs returns the SHA-256 bank values of pcrs.
func (t *TPM) ReadPCRs(ctx context.Context, pcrs ...int) (map[int][]byte, error) {
	var out map[int][]byte
	err := t.do(ctx, func(tp transport.TPM) error {
		var err error
		out, err = readPCRs(tp, pcrs)
		return err
	})
	return out, err
}
