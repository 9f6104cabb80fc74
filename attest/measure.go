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
	d := e.Digest()
	err := t.do(ctx, func(tp transport.TPM) error {
		_, err := tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(e.PCR), Auth: tpm2.PasswordAuth(nil)},
			Digests: tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{
				HashAlg: tpm2.TPMAlgSHA256, Digest: d[:],
			}}},
		}.Execute(tp)
		if err != nil {
			return fmt.Errorf("attest: extend PCR %d with %s/%s@%s: %w", e.PCR, e.Kind, e.Name, e.Version, err)
		}
		return nil
	})
	return e, err
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
