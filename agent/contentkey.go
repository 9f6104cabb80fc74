package agent

import (
	"bufio"
	"context"
	"crypto/ecdh"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/segcrypt"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
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
		return req, fmt.Errorf("unwrap the content key of %s: %w: %w", wk.Target, updater.ErrContentKeyUnusable, err)
	}
	req.Key, req.PlainLength, req.SHA256 = key, wk.Encryption.PlainLength, wk.Encryption.PlainSHA256
	return req, nil
}

// rekeyed is a re-encrypted copy of the serving version whose trial passed, until it
// is committed or rolled back.
type rekeyed struct {
	target rollback.Target
	plain  string // the plaintext's SHA-256, checked
}

// judgeRekey tries a target that is the serving version re-encrypted under a new
// content key (repository.Reencrypt): the plaintext it must decrypt to is the serving
// model's. The agent decrypts the staged ciphertext with the new key as a stream, one
// segment in memory and nothing written, and checks every segment, the plaintext's
// length and its hash against the signed metadata and against what the runtime serves.
// Nothing is loaded and no probe runs: these exact bytes passed their probes when the
// version was first committed. Committed then measures the new ciphertext.
func (j *RuntimeJudge) judgeRekey(ctx context.Context, rc *runtimeapi.Client, name string, tr updater.Trial, load runtimeapi.LoadRequest) updater.Verdict {
	defer clear(load.Key)
	t := tr.Target
	servingPlain := ""
	if idx, err := rc.Index(ctx); err == nil {
		for _, e := range idx {
			if e.Name == name && e.Version == t.Version {
				servingPlain = e.PlainSHA256
			}
		}
	}
	if servingPlain != tr.Meta.Encryption.PlainSHA256 {
		return fail(fmt.Sprintf("re-encrypted %s %s: the serving model's plaintext is %q, the signed metadata says %s", name, t.Version, servingPlain, tr.Meta.Encryption.PlainSHA256))
	}
	if err := checkCiphertext(ctx, tr.Payload, load); err != nil {
		return fail(fmt.Sprintf("re-encrypted %s %s: %v", name, t.Version, err))
	}
	j.mu.Lock()
	if j.rekey == nil {
		j.rekey = map[string]rekeyed{}
	}
	j.rekey[name] = rekeyed{target: t, plain: load.SHA256}
	j.mu.Unlock()
	j.logger().Info("re-encrypted model checked", "model", name, "version", t.Version, "sha256", t.SHA256)
	return updater.Verdict{Pass: true}
}

// checkCiphertext decrypts the file at path with load's key as a stream and checks that
// every segment authenticates and that the plaintext has load.PlainLength bytes and
// SHA-256 load.SHA256. The plaintext is hashed and dropped a segment at a time.
func checkCiphertext(ctx context.Context, path string, load runtimeapi.LoadRequest) error {
	if len(load.Key) != segcrypt.KeySize {
		return fmt.Errorf("content key is %d bytes", len(load.Key))
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := segcrypt.NewReader(bufio.NewReaderSize(f, 1<<20), segcrypt.Key(load.Key))
	if err != nil {
		return err
	}
	h := sha256.New()
	buf := make([]byte, r.SegmentSize())
	defer clear(buf)
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		k, err := r.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
	}
	if sum := hex.EncodeToString(h.Sum(nil)); n != load.PlainLength || sum != load.SHA256 {
		return fmt.Errorf("decrypts to %d bytes with sha256 %s; the signed metadata says %d bytes, %s", n, sum, load.PlainLength, load.SHA256)
	}
	return nil
}

func probeKeyPath(payload string) string { return payload + ".probe.key" }

// decryptProbeSet decrypts the encrypted probe set downloaded to file (target path,
// ciphertext SHA-256 sum) into memory: its content key wrapped to this TPM comes from
// the decision (wrapped, then kept beside the model's payload, durably) or, when
// wrapped is nil, from beside the payload. Every segment is authenticated and the
// plaintext checked against enc's signed length and hash; it is never written.
func (j *RuntimeJudge) decryptProbeSet(ctx context.Context, path, sum string, enc artifact.Encryption, file string, wrapped *keywrap.Wrapped, payload string) ([]byte, error) {
	if wrapped != nil {
		b, err := json.Marshal(wrappedKey{Target: path, SHA256: sum, Encryption: enc, Wrapped: *wrapped})
		if err != nil {
			return nil, err
		}
		if err := durable.WriteFile(probeKeyPath(payload), b, 0o600); err != nil {
			return nil, fmt.Errorf("store the wrapped key of probe set %s: %w", path, err)
		}
	} else {
		b, err := os.ReadFile(probeKeyPath(payload))
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%s is encrypted: %w", path, updater.ErrNoContentKey)
		}
		if err != nil {
			return nil, err
		}
		var wk wrappedKey
		if err := json.Unmarshal(b, &wk); err != nil {
			return nil, fmt.Errorf("wrapped key of probe set %s: %w", path, err)
		}
		if wk.Target != path || wk.SHA256 != sum {
			return nil, fmt.Errorf("%s is encrypted and the key kept is another target's: %w", path, updater.ErrNoContentKey)
		}
		wrapped = &wk.Wrapped
	}
	if j.Decrypter == nil {
		return nil, errNoDecrypter
	}
	key, err := keywrap.FromDevice(*wrapped, j.Decrypter.Public(), func(p *ecdh.PublicKey) ([]byte, error) {
		return j.Decrypter.ZGen(ctx, p)
	}, keywrap.TargetContext(path, sum))
	if err != nil {
		return nil, fmt.Errorf("unwrap the content key of %s: %w: %w", path, updater.ErrContentKeyUnusable, err)
	}
	defer clear(key)
	if len(key) != segcrypt.KeySize {
		return nil, fmt.Errorf("content key of %s is %d bytes", path, len(key))
	}
	if enc.PlainLength > maxProbeBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, maxProbeBytes)
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := segcrypt.Decrypt(ctx, bufio.NewReader(f), segcrypt.Key(key), enc.PlainLength)
	if err != nil {
		return nil, fmt.Errorf("decrypt probe set %s: %w", path, err)
	}
	if s := sha256.Sum256(data); hex.EncodeToString(s[:]) != enc.PlainSHA256 {
		clear(data)
		return nil, fmt.Errorf("probe set %s decrypts to sha256 %x; the signed metadata says %s", path, s, enc.PlainSHA256)
	}
	return data, nil
}
