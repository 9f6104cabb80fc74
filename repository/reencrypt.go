package repository

import (
	"bufio"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/segcrypt"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ReencryptRequest names a published encrypted target whose content key is rotated.
type ReencryptRequest struct {
	Kind    artifact.Kind
	Name    string
	Version string
	// KEK opens the target's current content key and seals the new one.
	KEK []byte
	// KeepOldKey keeps the superseded content key sealed in content-keys/ until the
	// superseded ciphertext is swept (SweepRetired). false: it is destroyed as soon as
	// the new metadata is visible, so nobody, the server included, can open the old
	// ciphertext again (devices that received it wrapped keep their copy: see
	// docs/ARCHITECTURE.md, "Encrypted models").
	KeepOldKey bool
	// Grace is how long the superseded ciphertext stays in the blob store (a device
	// mid-download of it fails its hash check against the new metadata anyway; the
	// server recognises its measurements as long as it is listed in retired.json).
	// 0: DefaultRetireGrace.
	Grace time.Duration
}

// ReencryptResult says what Reencrypt changed.
type ReencryptResult struct {
	Path string
	// Old and New are the SHA-256 of the superseded and the new ciphertext.
	Old, New  string
	Length    int64
	OldKey    string // "destroyed" or "kept"
	Version   int64  // the role's new version
	Plaintext string // the plaintext's SHA-256, unchanged
}

// ErrNotEncrypted is returned when a target to re-encrypt was published in the clear.
var ErrNotEncrypted = errors.New("not an encrypted target")

// Reencrypt rotates the content key of a published encrypted target (issue 18): the
// ciphertext is decrypted under its current key and encrypted again under a fresh one,
// streaming, one segment in memory, so no plaintext touches the repository's disk; the
// plaintext's hash and length are checked against the signed metadata before anything
// is written. The target keeps its path, version and custom metadata (its plaintext
// description is unchanged); its signed hash and length become the new ciphertext's,
// and the new content key is sealed under req.KEK beside it. The superseded ciphertext
// is listed in retired.json (with its content kept for req.Grace), so the server still
// trusts the measurements of devices that run it and offers them the new one; its
// sealed key is destroyed unless req.KeepOldKey.
func (r *Repo) Reencrypt(ctx context.Context, req ReencryptRequest, keys *KeyRing) (*ReencryptResult, error) {
	if len(req.KEK) != keywrap.KeySize {
		return nil, fmt.Errorf("re-encrypt: key-encryption key is %d bytes, want %d", len(req.KEK), keywrap.KeySize)
	}
	if _, err := artifact.ParseKind(string(req.Kind)); err != nil {
		return nil, fmt.Errorf("re-encrypt: %w", err)
	}
	grace := req.Grace
	if grace <= 0 {
		grace = DefaultRetireGrace
	}
	role := req.Kind.Role()
	st, err := r.Load(ctx)
	if err != nil {
		return nil, err
	}
	tpath, tf, meta, err := findEncrypted(st, role, req)
	if err != nil {
		return nil, err
	}
	oldSum := hex.EncodeToString(tf.Hashes["sha256"])
	oldKey, err := r.ContentKey(req.KEK, tpath, oldSum)
	if err != nil {
		return nil, fmt.Errorf("re-encrypt %s: %w", tpath, err)
	}
	f, err := os.Open(r.BlobPath(oldSum))
	if err != nil {
		clear(oldKey[:])
		return nil, fmt.Errorf("re-encrypt %s: its ciphertext: %w", tpath, err)
	}
	dec, err := segcrypt.NewReader(bufio.NewReaderSize(f, 1<<20), oldKey)
	clear(oldKey[:])
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("re-encrypt %s: %w", tpath, err)
	}

	unlock, err := r.lockIncoming(syscall.LOCK_SH)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("re-encrypt %s: %w", tpath, err)
	}
	defer unlock()
	incoming, sum, n, enc, newKey, err := r.receiveEncrypted(ctx, dec)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("re-encrypt %s: %w", tpath, err)
	}
	defer os.Remove(incoming) // no-op once renamed into the store
	defer clear(newKey[:])
	if enc.PlainSHA256 != meta.Encryption.PlainSHA256 || enc.PlainLength != meta.Encryption.PlainLength {
		return nil, fmt.Errorf("re-encrypt %s: decrypted %d bytes with sha256 %s; the signed metadata says %d bytes, %s",
			tpath, enc.PlainLength, enc.PlainSHA256, meta.Encryption.PlainLength, meta.Encryption.PlainSHA256)
	}

	res := &ReencryptResult{Path: tpath, Old: oldSum, New: sum, Length: n, Plaintext: enc.PlainSHA256, OldKey: "destroyed"}
	if req.KeepOldKey {
		res.OldKey = "kept"
	}
	var prev []RetiredTarget
	wrote := false
	var tsBefore int64 // timestamp.json's version when the change began
	err = r.update(ctx, keys, func(t *txn) error {
		tsBefore = t.st.Timestamp.Signed.Version
		rm, ok := t.st.Targets[role]
		if !ok {
			return fmt.Errorf("re-encrypt %s: no delegated role %q", tpath, role)
		}
		cur, ok := rm.Signed.Targets[tpath]
		if !ok || hex.EncodeToString(cur.Hashes["sha256"]) != oldSum {
			return fmt.Errorf("re-encrypt %s: %w: the target changed meanwhile; try again", tpath, ErrConflict)
		}
		m := *meta
		e := *meta.Encryption
		e.SegmentSize = enc.SegmentSize
		m.Encryption = &e
		custom, err := json.Marshal(m)
		if err != nil {
			return err
		}
		raw := json.RawMessage(custom)
		digest, _ := hex.DecodeString(sum)
		sealed, err := keywrap.Seal(nil, req.KEK, newKey[:], contentKeyContext(tpath, sum))
		if err != nil {
			return fmt.Errorf("re-encrypt %s: seal its content key: %w", tpath, err)
		}
		kp := r.contentKeyPath(sum)
		if err := r.fs.WriteFile(kp, sealed, 0o600); err != nil {
			return fmt.Errorf("re-encrypt %s: store its sealed content key: %w", tpath, err)
		}
		t.create(kp)
		if _, err := os.Stat(r.BlobPath(sum)); err != nil {
			t.create(r.BlobPath(sum))
		}
		if err := r.fs.Rename(incoming, r.BlobPath(sum)); err != nil {
			return fmt.Errorf("store blob: %w", err)
		}
		rm.Signed.Targets[tpath] = &metadata.TargetFiles{Length: n, Hashes: metadata.Hashes{"sha256": digest}, Custom: &raw, Path: tpath}
		t.touch(role)
		now := r.now().UTC().Truncate(time.Second)
		list, err := r.Retired()
		if err != nil {
			return err
		}
		prev = slices.Clone(list)
		old := RetiredTarget{Path: tpath, Role: role, SHA256: oldSum, Length: tf.Length, RetiredAt: now, KeepUntil: now.Add(grace)}
		if tf.Custom != nil {
			old.Custom = append(json.RawMessage(nil), *tf.Custom...)
		}
		list = append(list, old)
		t.record("reencrypt", tpath, map[string]any{"path": tpath, "role": role, "old_sha256": oldSum, "sha256": sum, "length": n,
			"plain_sha256": enc.PlainSHA256, "old_key": res.OldKey, "keep_until": old.KeepUntil})
		// Before the new metadata is visible: the server must know the superseded
		// ciphertext by the time devices that run it find another one listed.
		wrote = true
		return r.writeRetired(list)
	})
	if err != nil && wrote && !r.wentLive(tsBefore) { // as in Retire
		if rerr := r.writeRetired(prev); rerr != nil {
			r.log.Warn("restore the retired list after a failed re-encryption", "err", rerr)
		}
	}
	if err != nil {
		return nil, err
	}
	if !req.KeepOldKey {
		if err := os.Remove(r.contentKeyPath(oldSum)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("re-encrypt %s: new key in place, but the superseded key %s was not destroyed: %w", tpath, r.contentKeyPath(oldSum), err)
		}
	}
	if st, lerr := r.Load(ctx); lerr == nil {
		res.Version = st.Targets[role].Signed.Version
	}
	return res, nil
}

// findEncrypted returns the listed encrypted target of req in role.
func findEncrypted(st *State, role string, req ReencryptRequest) (string, *metadata.TargetFiles, *artifact.Meta, error) {
	rm, ok := st.Targets[role]
	if !ok {
		return "", nil, nil, fmt.Errorf("re-encrypt: no delegated role %q", role)
	}
	for p, tf := range rm.Signed.Targets {
		k, name, ver, err := artifact.ParseTargetPath(p)
		if err != nil || k != req.Kind || name != req.Name || ver != req.Version || tf.Custom == nil {
			continue
		}
		if _, ok := artifact.ParseDelta(*tf.Custom); ok {
			continue
		}
		var m artifact.Meta
		if err := json.Unmarshal(*tf.Custom, &m); err != nil {
			return "", nil, nil, fmt.Errorf("re-encrypt %s: custom metadata: %w", p, err)
		}
		if m.Encryption == nil {
			return "", nil, nil, fmt.Errorf("re-encrypt %s: %w (publish a new version with --encrypt)", p, ErrNotEncrypted)
		}
		return p, tf, &m, nil
	}
	return "", nil, nil, fmt.Errorf("re-encrypt %s %s %s: %w", req.Kind, req.Name, req.Version, ErrNotPublished)
}

// RotateKEKResult says what RotateKEK re-sealed.
type RotateKEKResult struct {
	// Resealed are the targets whose content keys were sealed under the new KEK;
	// Already were under it (a rotation interrupted and run again).
	Resealed, Already []string
}

// RotateKEK seals every listed encrypted target's content key under newKEK instead of
// oldKEK (content-keys/ holds no other copy afterwards). It holds the repository lock
// and changes no metadata; each sealed key is replaced atomically, and a key already
// under newKEK is left as it is, so a rotation interrupted half way is finished by
// running it again. Nothing is changed unless every listed key opens under one of the
// two keys. Keys of superseded or retired ciphertexts that are still stored are
// re-sealed too.
func (r *Repo) RotateKEK(ctx context.Context, oldKEK, newKEK []byte) (*RotateKEKResult, error) {
	if len(oldKEK) != keywrap.KeySize || len(newKEK) != keywrap.KeySize {
		return nil, fmt.Errorf("rotate KEK: keys must be %d bytes", keywrap.KeySize)
	}
	unlock, err := r.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := r.Load(ctx)
	if err != nil {
		return nil, err
	}
	type sealedKey struct{ path, sum string }
	var all []sealedKey
	for _, rm := range st.Targets {
		for p, tf := range rm.Signed.Targets {
			sum := hex.EncodeToString(tf.Hashes["sha256"])
			if _, err := os.Stat(r.contentKeyPath(sum)); err == nil {
				all = append(all, sealedKey{p, sum})
			}
		}
	}
	retired, err := r.Retired()
	if err != nil {
		return nil, err
	}
	for _, rt := range retired {
		if _, err := os.Stat(r.contentKeyPath(rt.SHA256)); err == nil && !slices.ContainsFunc(all, func(k sealedKey) bool { return k.sum == rt.SHA256 }) {
			all = append(all, sealedKey{rt.Path, rt.SHA256})
		}
	}
	slices.SortFunc(all, func(a, b sealedKey) int { return strings.Compare(a.path+a.sum, b.path+b.sum) })
	res := &RotateKEKResult{}
	resealed := map[string][]byte{}
	for _, k := range all {
		ck, err := r.ContentKey(oldKEK, k.path, k.sum)
		if err != nil {
			if _, nerr := r.ContentKey(newKEK, k.path, k.sum); nerr == nil {
				res.Already = append(res.Already, k.path)
				continue
			}
			return nil, fmt.Errorf("rotate KEK: %w (nothing changed)", err)
		}
		sealed, err := keywrap.Seal(nil, newKEK, ck[:], contentKeyContext(k.path, k.sum))
		clear(ck[:])
		if err != nil {
			return nil, err
		}
		resealed[k.sum] = sealed
		res.Resealed = append(res.Resealed, k.path)
	}
	if len(resealed) > 0 {
		// Recorded before any key changes (no key material in the record).
		if err := r.record(ctx, event{"kek.rotate", "content-keys", map[string]any{"resealed": res.Resealed, "already": res.Already}}); err != nil {
			return nil, err
		}
	}
	for _, k := range all {
		if sealed, ok := resealed[k.sum]; ok {
			if err := r.fs.WriteFile(r.contentKeyPath(k.sum), sealed, 0o600); err != nil {
				return nil, fmt.Errorf("rotate KEK: %s: %w (run it again to finish)", filepath.Base(r.contentKeyPath(k.sum)), err)
			}
		}
	}
	return res, nil
}
