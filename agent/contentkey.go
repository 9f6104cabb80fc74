package agent

import (
	"context"
	"crypto/ecdh"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// DecryptionKeyLabel names the agent's TPM decryption key (attest.CreateDecryptionKey).
const DecryptionKeyLabel = "edgeward content keys v1"

// Decrypter is the device's TPM-resident decryption key (attest.DecryptionKey): the key
// the server wraps encrypted models' content keys to (issue 18).
type Decrypter interface {
	Public() *ecdh.PublicKey
	// ZGen computes the ECDH shared secret with peer inside the TPM.
	ZGen(ctx context.Context, peer *ecdh.PublicKey) ([]byte, error)
}

// wrappedKey is kept beside an encrypted model's slot payload (PAYLOAD.key): its
// content key wrapped to this device's TPM, and what the plaintext must be. Nothing in
// it is secret: only this TPM can unwrap the key, and the runtime authenticates every
// segment. It is what lets the agent serve the committed model after a restart
// without asking the server (docs/ARCHITECTURE.md, "Encrypted models").
type wrappedKey struct {
	Target     string              `json:"target"`
	SHA256     string              `json:"sha256"` // the ciphertext's: the slot's target
	Encryption artifact.Encryption `json:"encryption"`
	Wrapped    keywrap.Wrapped     `json:"wrapped"`
}

func keyPath(payload string) string { return payload + ".key" }

// storeKey records the wrapped content key of the encrypted target t staged at payload,
// durably, before the trial loads it.
func storeKey(payload string, t rollback.Target, enc artifact.Encryption, w keywrap.Wrapped) error {
	b, err := json.Marshal(wrappedKey{Target: t.Path, SHA256: t.SHA256, Encryption: enc, Wrapped: w})
	if err != nil {
		return err
	}
	if err := durable.WriteFile(keyPath(payload), b, 0o600); err != nil {
		return fmt.Errorf("store the wrapped content key of %s: %w", t.Path, err)
	}
	return nil
}

// errNoDecrypter: an encrypted model and no TPM decryption key to unwrap its key with.
var errNoDecrypter = errors.New("encrypted model but the agent has no TPM decryption key")

// loadRequest is the runtime load of the model in payload whose bytes on disk have
// SHA-256 sha. When a wrapped key for those bytes lies beside it, the model is
// encrypted: its key is unwrapped in the TPM and handed to the runtime, which decrypts
// into memory and checks the plaintext against its signed hash. A key file left by an
// earlier target of the slot is ignored.
func (j *RuntimeJudge) loadRequest(ctx context.Context, name, version, payload, sha string, def bool) (runtimeapi.LoadRequest, error) {
	req := runtimeapi.LoadRequest{Name: name, Version: version, Path: payload, SHA256: sha, Default: def}
	b, err := os.ReadFile(keyPath(payload))
	if errors.Is(err, os.ErrNotExist) {
		return req, nil
	}
	if err != nil {
		return req, fmt.Errorf("wrapped content key: %w", err)
	}
	var wk wrappedKey
	if err := json.Unmarshal(b, &wk); err != nil {
		return req, fmt.Errorf("wrapped content key %s: %w", keyPath(payload), err)
	}
	if wk.SHA256 != sha {
		return req, nil // an earlier target's key
	}
	if j.Decrypter == nil {
		return req, errNoDecrypter
	}
	key, err := keywrap.FromDevice(wk.Wrapped, j.Decrypter.Public(), func(p *ecdh.PublicKey) ([]byte, error) {
		return j.Decrypter.ZGen(ctx, p)
	}, keywrap.TargetContext(wk.Target, wk.SHA256))
	if err != nil {
		return req, fmt.Errorf("unwrap the content key of %s: %w", wk.Target, err)
	}
	req.Key, req.PlainLength, req.SHA256 = key, wk.Encryption.PlainLength, wk.Encryption.PlainSHA256
	return req, nil
}
