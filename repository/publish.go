package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
	"github.com/edgeward/edgeward/internal/segcrypt"
	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrConflict is returned when a name+version is published again with other bytes.
// Published versions are immutable: devices may already run them.
var ErrConflict = errors.New("already published with different content")

// ErrMetadataConflict is returned when a name+version is published again with the
// same content but other custom metadata (gates, probe set, hardware, min_runtime, a
// --custom field): the signed metadata stays as it is, so the publish must not say it
// succeeded. It matches ErrConflict.
var ErrMetadataConflict error = metadataConflict{}

type metadataConflict struct{}

func (metadataConflict) Error() string        { return "already published with other metadata" }
func (metadataConflict) Is(target error) bool { return target == ErrConflict }

// ErrInvalid is returned for a publish request that cannot be published as given (bad
// metadata, extension or probe link): the caller's mistake, not the repository's.
var ErrInvalid = errors.New("invalid publish request")

// ErrNoProbeSet is returned for a model published with commit gates but no probe set
// (none named, none published for its name and version). A device judges every gate
// (min_accuracy, max_abs_error, max_p99_ms, max_rss_mb: peak memory is measured while
// the version loads and during the probe run) on a run of the model's probe set, and fails a trial with gates and
// no probe set; such a model would fail on every device and its version could never be
// installed. It matches ErrInvalid.
var ErrNoProbeSet = fmt.Errorf("%w: a model with commit gates needs a probe set", ErrInvalid)

// ErrOutsideDelegation is returned when a target path is not one the signing role is
// trusted for; a client would reject it.
var ErrOutsideDelegation = errors.New("target path outside the role's delegation")

// PublishRequest is one target to publish.
type PublishRequest struct {
	Meta artifact.Meta
	// Ext is the file extension of the target path, with its dot (".onnx"); "" for none.
	Ext string
	// Content is read once, streaming: it is hashed while it is copied into the blob store.
	Content io.Reader
	// Role overrides the signing role (default Meta.Kind.Role()). Only useful to tests
	// and to repositories with custom delegations.
	Role string
	// KEK, when set, publishes the content encrypted (issue 18). It is encrypted as it
	// is received, under a fresh content key (internal/segcrypt), so its plaintext
	// touches no disk here either; the target's signed hash and length are the
	// ciphertext's, and Meta.Encryption describes the plaintext. The content key is
	// stored sealed under this key-encryption key (keywrap.Seal), read back by
	// ContentKey. Republishing the same plaintext is "unchanged".
	KEK []byte
	// Deltas is how many of the newest earlier versions of the same kind and name get a
	// delta to this one (models and runtimes only): 0 means DefaultDeltas, negative none.
	Deltas int
	// DeltaMaxRatio: a delta at least this fraction of the full target is not
	// published. 0 means DefaultDeltaMaxRatio.
	DeltaMaxRatio float64
}

// DefaultDeltas is how many earlier versions get a delta to a newly published one.
const DefaultDeltas = 3

// DefaultDeltaMaxRatio: a delta must be under 70 % of its full target to be published.
const DefaultDeltaMaxRatio = 0.7

// DeltaResult is one delta published beside a target, or one that was made and not
// published (Skipped says why).
type DeltaResult struct {
	Path    string `json:"path,omitempty"`
	Base    string `json:"base"`
	Length  int64  `json:"length"`
	SHA256  string `json:"sha256,omitempty"`
	Skipped string `json:"skipped,omitempty"`
}

// PublishResult says what was published.
type PublishResult struct {
	Path      string // target path
	Role      string
	SHA256    string
	Length    int64
	Unchanged bool // the same bytes and metadata were already published under this name+version
	Version   int64
	// Deltas are the deltas made from earlier versions to this one.
	Deltas []DeltaResult `json:",omitempty"`
	// Staged is set when the role needs more signatures than the keys at hand made
	// (KeyRing.Stage): the target is in the staged new version of the role, not yet
	// published; Version is then the staged version.
	Staged *Staged `json:",omitempty"`
}

// checkRequest runs Publish's checks that need no content and no repository state,
// and returns the metadata to sign (gates normalised), its canonical JSON and the role.
func (r *Repo) checkRequest(req PublishRequest) (m artifact.Meta, custom []byte, role string, err error) {
	if g := req.Meta.Gates; g != nil && *g == (artifact.Gates{}) {
		// No gate set: signed as "gates":{}, a device would take it for gates and
		// refuse a trial without a probe set.
		req.Meta.Gates = nil
	}
	m = req.Meta
	if err := m.Validate(); err != nil {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish: %w: %w", ErrInvalid, err)
	}
	if m.Encryption != nil {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish: %w: custom metadata claims encryption; publish the plaintext with encryption on instead", ErrInvalid)
	}
	if req.KEK != nil && len(req.KEK) != keywrap.KeySize {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish: key-encryption key is %d bytes, want %d", len(req.KEK), keywrap.KeySize)
	}
	if req.Ext != "" && !slices.Contains(artifact.Exts, req.Ext) {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish: %w: extension %q: want none or one of %s", ErrInvalid, req.Ext, strings.Join(artifact.Exts, " "))
	}
	role = req.Role
	if role == "" {
		role = m.Kind.Role()
	}
	custom, err = cjson.EncodeCanonical(m)
	if err != nil {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish: %w: custom metadata cannot be signed (TUF canonical JSON has no floating-point numbers; give them as strings): %w", ErrInvalid, err)
	}
	// Bounded before anything is received: the probe link added later is a target path.
	if max := r.limits.MaxCustomBytes; len(custom) > max {
		return artifact.Meta{}, nil, "", fmt.Errorf("publish %s %s %s: %w: custom metadata is %d bytes, more than the %d allowed per target (limits.max_custom_bytes in %s)",
			m.Kind, m.Name, m.Version, ErrTooLarge, len(custom), max, r.path("edgeward-repo.json"))
	}
	return m, custom, role, nil
}

// Publish adds a target: it copies Content into the blob store (hashing as it goes),
// adds the target with its custom metadata to the delegated role, and re-signs that role,
// the snapshot and the timestamp. Publishing the same name+version again with the same
// bytes and custom metadata changes nothing; with other bytes it fails with ErrConflict,
// with the same bytes and other metadata with ErrMetadataConflict (an ErrConflict).
func (r *Repo) Publish(ctx context.Context, req PublishRequest, keys *KeyRing) (*PublishResult, error) {
	m, _, role, err := r.checkRequest(req)
	if err != nil {
		return nil, err
	}
	req.Meta = m // gates normalised
	tpath := artifact.TargetPath(m.Kind, m.Name, m.Version, req.Ext)
	pk, pn, pv, err := artifact.ParseTargetPath(tpath)
	if err != nil {
		return nil, fmt.Errorf("publish: %w: %w", ErrInvalid, err)
	}
	if pk != m.Kind || pn != m.Name || pv != m.Version {
		// A version that ends like a file extension ("1.0.0-rc.onnx" without an
		// extension) makes the path of another version ("1.0.0-rc" with ".onnx"): the
		// conflict check, by version, would not see it, and the published target would
		// be replaced under the same path.
		return nil, fmt.Errorf("publish: %w: the target path %s reads back as %s %s %s, not %s %s %s: give the version without a file extension (or the extension with --ext)",
			ErrInvalid, tpath, pk, pn, pv, m.Kind, m.Name, m.Version)
	}

	// Stream the content into an incoming file first (outside the lock: it may be GiBs),
	// holding the incoming directory shared so that no sweep removes it meanwhile.
	unlock, err := r.lockIncoming(syscall.LOCK_SH)
	if err != nil {
		return nil, fmt.Errorf("publish %s: %w", tpath, err)
	}
	res, err := r.publishLocked(ctx, req, keys, role, tpath)
	unlock()
	if err != nil {
		// Remove what a killed publish (this one's own files are gone already) left.
		if n, size, serr := r.SweepIncoming(); serr != nil {
			r.log.Warn("sweep abandoned incoming files", "err", serr)
		} else if n > 0 {
			r.log.Info("removed abandoned incoming files after a failed publish", "files", n, "bytes", size)
		}
	}
	return res, err
}

func (r *Repo) publishLocked(ctx context.Context, req PublishRequest, keys *KeyRing, role, tpath string) (*PublishResult, error) {
	m := req.Meta
	var (
		incoming, sum string
		n             int64
		err           error
		contentKey    segcrypt.Key
	)
	if req.KEK != nil {
		incoming, sum, n, m.Encryption, contentKey, err = r.receiveEncrypted(ctx, req.Content)
	} else {
		incoming, sum, n, err = r.receiveBlob(ctx, req.Content)
	}
	if err != nil {
		return nil, err
	}
	defer os.Remove(incoming) // no-op once renamed into the store

	res := &PublishResult{Path: tpath, Role: role, SHA256: sum, Length: n}
	deltas, err := r.makeDeltas(ctx, req, role, tpath, incoming, sum, n)
	for _, d := range deltas {
		defer os.Remove(d.incoming)
		res.Deltas = append(res.Deltas, d.DeltaResult)
	}
	if err != nil {
		return nil, err
	}
	staged, err := r.updateOrStage(ctx, keys, func(t *txn) error {
		if _, ok := t.st.Targets[role]; !ok {
			return fmt.Errorf("publish %s: no delegated role %q", tpath, role)
		}
		if err := checkDelegation(t.st, role, tpath); err != nil {
			if !errors.Is(err, ErrOutsideDelegation) || m.Kind != artifact.KindAgent || role != RoleRuntimes || !delegate(t.st, role, "agents/*/*") {
				return err
			}
			// A repository created before agent targets: the top-level targets role
			// delegates agents/*/* to runtimes now, signed with the (offline) targets key,
			// which the publish must then hold.
			t.touch(metadata.TARGETS)
		}
		targets := t.st.Targets[role].Signed.Targets
		for p, tf := range targets {
			k, name, ver, err := artifact.ParseTargetPath(p)
			if err != nil || k != m.Kind || name != m.Name || ver != m.Version {
				continue
			}
			sameBytes := p == tpath && hex.EncodeToString(tf.Hashes["sha256"]) == sum && tf.Length == n
			// Encrypted again under a fresh key, the same plaintext: the first is kept.
			samePlain := p == tpath && m.Encryption != nil && samePlaintext(tf, m.Encryption)
			if !sameBytes && !samePlain {
				return fmt.Errorf("publish %s %s %s: %w (existing %s, sha256 %s)", m.Kind, m.Name, m.Version, ErrConflict, p, hex.EncodeToString(tf.Hashes["sha256"]))
			}
			// The same content: unchanged only if the metadata this publish would sign
			// (its probe set linked as for a new target) is what is signed. Otherwise the
			// operator would be told it is published while other gates stay in force.
			want := m
			want.Probe = probeOf(&m, probeSets(t.st))
			if diff := metaDiff(signedCustom(tf), want); diff != "" {
				return fmt.Errorf("publish %s %s %s: %w: %s is signed with the same content and other metadata (%s); a published version never changes (devices may run it): publish the change as a new version",
					m.Kind, m.Name, m.Version, ErrMetadataConflict, p, diff)
			}
			res.Unchanged = true
			res.SHA256, res.Length = hex.EncodeToString(tf.Hashes["sha256"]), tf.Length
			return errNothingToDo
		}
		if err := t.r.notRetiredOtherwise(&m, sum, n); err != nil {
			return err
		}
		if err := linkProbe(&m, probeSets(t.st)); err != nil {
			return fmt.Errorf("publish %s: %w; nothing was published", tpath, err)
		}
		custom, err := json.Marshal(m)
		if err != nil {
			return err
		}
		raw := json.RawMessage(custom)
		digest, _ := hex.DecodeString(sum)
		tf := &metadata.TargetFiles{
			Length: n, Hashes: metadata.Hashes{"sha256": digest}, Custom: &raw, Path: tpath,
		}
		if m.Encryption != nil {
			sealed, err := keywrap.Seal(nil, req.KEK, contentKey[:], contentKeyContext(tpath, sum))
			if err != nil {
				return fmt.Errorf("publish %s: seal its content key: %w", tpath, err)
			}
			kp := r.contentKeyPath(sum)
			if err := r.fs.WriteFile(kp, sealed, 0o600); err != nil {
				return fmt.Errorf("publish %s: store its sealed content key: %w", tpath, err)
			}
			t.create(kp)
		}
		if _, err := os.Stat(r.BlobPath(sum)); err != nil {
			t.create(r.BlobPath(sum))
		}
		if err := r.fs.Rename(incoming, r.BlobPath(sum)); err != nil {
			return fmt.Errorf("store blob: %w", err)
		}
		targets[tpath] = tf
		t.touch(role)
		t.record("publish", tpath, map[string]any{
			"path": tpath, "role": role, "sha256": sum, "length": n, "kind": string(m.Kind), "name": m.Name, "version": m.Version,
			"encrypted": m.Encryption != nil,
		})
		for _, d := range deltas {
			if d.Skipped != "" {
				continue
			}
			if _, ok := targets[d.Base]; !ok {
				continue // retired meanwhile
			}
			if err := r.addDelta(t, targets, d); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errNothingToDo) {
		return res, nil
	}
	if err != nil {
		return nil, err
	}
	if staged != nil {
		res.Staged, res.Version = staged, staged.Version(role)
		return res, nil
	}
	res.Version = 0
	if st, lerr := r.Load(ctx); lerr == nil {
		res.Version = st.Targets[role].Signed.Version
	}
	return res, nil
}

// signedCustom is the custom metadata signed for tf (the zero Meta when it has none).
func signedCustom(tf *metadata.TargetFiles) artifact.Meta {
	var m artifact.Meta
	if tf.Custom != nil {
		json.Unmarshal(*tf.Custom, &m)
	}
	return m
}

// metaDiff describes how the custom metadata want differs from signed, field by field
// as signed ("gates: signed {...}, now {...}"; "none" for a field one side lacks), or
// returns "" when they are the same. Encryption is left out: the repository writes it
// (a fresh content key each time), and the caller compares the plaintexts. An empty
// gate set counts as none.
func metaDiff(signed, want artifact.Meta) string {
	fields := func(m artifact.Meta) map[string]any {
		m.Encryption = nil
		if m.Gates != nil && *m.Gates == (artifact.Gates{}) {
			m.Gates = nil
		}
		b, err := json.Marshal(m)
		if err != nil {
			return map[string]any{"": err.Error()}
		}
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var out map[string]any
		if err := d.Decode(&out); err != nil {
			return map[string]any{"": err.Error()}
		}
		return out
	}
	a, b := fields(signed), fields(want)
	all := maps.Clone(a)
	maps.Copy(all, b)
	keys := slices.Sorted(maps.Keys(all))
	show := func(v any, ok bool) string {
		if !ok {
			return "none"
		}
		s, _ := json.Marshal(v)
		return string(s)
	}
	var diffs []string
	for _, k := range keys {
		va, oka := a[k]
		vb, okb := b[k]
		if oka != okb || !reflect.DeepEqual(va, vb) {
			diffs = append(diffs, fmt.Sprintf("%s: signed %s, now %s", k, show(va, oka), show(vb, okb)))
		}
	}
	return strings.Join(diffs, "; ")
}

// probeSets are the targets of the models role, which signs the probe sets (nil when
// the repository has no such role).
func probeSets(st *State) map[string]*metadata.TargetFiles {
	if md, ok := st.Targets[RoleModels]; ok {
		return md.Signed.Targets
	}
	return nil
}

// probeOf is the probe set a model m is linked to when published now: the one it names,
// or else the probe set published beforehand for its name and version, if any.
func probeOf(m *artifact.Meta, probes map[string]*metadata.TargetFiles) string {
	if m.Probe != "" || m.Kind != artifact.KindModel {
		return m.Probe
	}
	probe := artifact.TargetPath(artifact.KindProbe, m.Name, m.Version, ".json")
	if _, ok := probes[probe]; ok {
		return probe
	}
	return ""
}

// CheckPublish refuses, before any content is read (req.Content is not used), a publish
// that Publish would refuse whatever the content: its checks of the request (invalid
// metadata or extension: ErrInvalid; metadata too large: ErrTooLarge), and a new version of a
// model with gates but no published probe set (ErrNoProbeSet), or naming a probe set
// that is not published. It reads the repository's state and changes nothing. A server
// runs it before it takes an upload: a gated model without its probe set was refused
// only once its bytes, GiBs perhaps, had all arrived. A version already listed is
// Publish's to judge on its content (unchanged, or a conflict).
func (r *Repo) CheckPublish(ctx context.Context, req PublishRequest) error {
	m, _, _, err := r.checkRequest(req)
	if err != nil {
		return err
	}
	if m.Kind != artifact.KindModel {
		return nil
	}
	st, err := r.Load(ctx)
	if err != nil {
		return err
	}
	for _, ti := range st.List() {
		if ti.Meta != nil && ti.Meta.Kind == m.Kind && ti.Meta.Name == m.Name && ti.Meta.Version == m.Version {
			return nil
		}
	}
	if err := linkProbe(&m, probeSets(st)); err != nil {
		return fmt.Errorf("publish %s %s %s: %w; nothing was published", m.Kind, m.Name, m.Version, err)
	}
	return nil
}

// linkProbe fills in m.Probe (probeOf) and refuses, wrapping ErrInvalid, a probe set
// that is not published, and a model with gates but no probe set (ErrNoProbeSet). It
// reads probes and changes nothing else.
func linkProbe(m *artifact.Meta, probes map[string]*metadata.TargetFiles) error {
	m.Probe = probeOf(m, probes)
	if m.Probe != "" {
		if _, ok := probes[m.Probe]; !ok {
			return fmt.Errorf("%w: probe set %s is not published (publish it first)", ErrInvalid, m.Probe)
		}
		return nil
	}
	if m.Kind == artifact.KindModel && m.Gates != nil {
		return fmt.Errorf("%w: the gates (%s) are judged on the probe set, none is named and %s is not published: publish the probe set first (edgeward publish --kind probe --name %s --version %s FILE), or name a published one with --probe",
			ErrNoProbeSet, gateList(*m.Gates), artifact.TargetPath(artifact.KindProbe, m.Name, m.Version, ".json"), m.Name, m.Version)
	}
	return nil
}

// gateList writes gates as the --gates flag takes them: "min_accuracy=0.95,max_p99_ms=5".
func gateList(g artifact.Gates) string {
	b, _ := json.Marshal(g)
	var set map[string]string
	json.Unmarshal(b, &set)
	var out []string
	for k, v := range set {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// receiveBlob copies r into DIR/blobs/incoming/<random>, hashing it, with a fixed buffer.
func (r *Repo) receiveBlob(ctx context.Context, src io.Reader) (path string, sum string, n int64, err error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return "", "", 0, err
	}
	path = r.path("blobs", "incoming", hex.EncodeToString(rnd[:]))
	h := sha256.New()
	n, err = r.fs.WriteStream(path, io.TeeReader(ctxReader{ctx, src}, h), 0o644)
	if err != nil {
		os.Remove(path)
		return "", "", 0, fmt.Errorf("store target content: %w", err)
	}
	return path, hex.EncodeToString(h.Sum(nil)), n, nil
}

// receiveEncrypted is receiveBlob for an encrypted publish: src is encrypted under a
// fresh content key on its way into the incoming file.
func (r *Repo) receiveEncrypted(ctx context.Context, src io.Reader) (path, sum string, n int64, enc *artifact.Encryption, key segcrypt.Key, err error) {
	key, err = segcrypt.NewKey(nil)
	if err != nil {
		return "", "", 0, nil, key, err
	}
	pr, pw := io.Pipe()
	done := make(chan segcrypt.Info, 1)
	go func() {
		info, err := segcrypt.Encrypt(ctx, pw, key, ctxReader{ctx, src}, segcrypt.Options{})
		done <- info
		pw.CloseWithError(err) // nil: EOF for the reader
	}()
	path, sum, n, err = r.receiveBlob(ctx, pr)
	pr.CloseWithError(errors.New("publish: receiving stopped")) // unblocks the encrypter
	info := <-done
	if err != nil {
		return "", "", 0, nil, key, err
	}
	if info.CipherLength != n {
		os.Remove(path)
		return "", "", 0, nil, key, fmt.Errorf("publish: encrypted %d bytes but stored %d", info.CipherLength, n)
	}
	return path, sum, n, &artifact.Encryption{
		Scheme:      artifact.EncryptionScheme,
		SegmentSize: info.SegmentSize,
		PlainSHA256: hex.EncodeToString(info.PlainSHA256[:]),
		PlainLength: info.PlainLength,
	}, key, nil
}

// samePlaintext reports whether the published target tf is an encryption of the
// plaintext enc describes.
// notRetiredOtherwise refuses (ErrConflict) publishing m with content sum when the same
// kind, name and version was retired with other content: a version's content never
// changes. Retired, then published again with other bytes, one version had two
// contents, and the server took the measurements of either for it (found from outside,
// 2 Dec). The same content (or, encrypted, the same plaintext) may come back.
func (r *Repo) notRetiredOtherwise(m *artifact.Meta, sum string, n int64) error {
	retired, err := r.Retired()
	if err != nil {
		return fmt.Errorf("publish %s %s %s: read the retired targets: %w", m.Kind, m.Name, m.Version, err)
	}
	for _, rt := range retired {
		k, name, ver, err := artifact.ParseTargetPath(rt.Path)
		if err != nil || k != m.Kind || name != m.Name || ver != m.Version {
			continue
		}
		if rt.SHA256 == sum && rt.Length == n {
			continue
		}
		if old := rt.Meta(); old != nil && old.Encryption != nil && m.Encryption != nil &&
			old.Encryption.PlainSHA256 == m.Encryption.PlainSHA256 && old.Encryption.PlainLength == m.Encryption.PlainLength {
			continue
		}
		return fmt.Errorf("publish %s %s %s: %w: it was retired with other content (%s, sha256 %s); a version's content never changes: publish another version",
			m.Kind, m.Name, m.Version, ErrConflict, rt.Path, rt.SHA256)
	}
	return nil
}

func samePlaintext(tf *metadata.TargetFiles, enc *artifact.Encryption) bool {
	if tf.Custom == nil {
		return false
	}
	var old artifact.Meta
	if json.Unmarshal(*tf.Custom, &old) != nil || old.Encryption == nil {
		return false
	}
	return old.Encryption.PlainSHA256 == enc.PlainSHA256 && old.Encryption.PlainLength == enc.PlainLength
}

// contentKeyPath is where the sealed content key of the encrypted blob sha256hex lives.
func (r *Repo) contentKeyPath(sha256hex string) string {
	return r.path("content-keys", sha256hex+".sealed")
}

// contentKeyContext binds a sealed content key to its target: sealed for one target,
// it does not open for another.
func contentKeyContext(tpath, sha256hex string) []byte {
	return []byte("edgeward content key\x00" + tpath + "\x00" + sha256hex)
}

// ErrNoContentKey: the repository holds no content key for a target (it is not
// encrypted, or its key file was lost).
var ErrNoContentKey = errors.New("no content key stored for this target")

// ContentKey returns the content key of the encrypted target tpath whose ciphertext
// has SHA-256 sha256hex, opened with the key-encryption key kek. It fails with
// ErrNoContentKey when none is stored, and with keywrap.ErrUnwrap under another KEK or
// when the stored key was changed or belongs to another target.
func (r *Repo) ContentKey(kek []byte, tpath, sha256hex string) (segcrypt.Key, error) {
	sealed, err := os.ReadFile(r.contentKeyPath(sha256hex))
	if errors.Is(err, os.ErrNotExist) {
		return segcrypt.Key{}, fmt.Errorf("%s: %w", tpath, ErrNoContentKey)
	}
	if err != nil {
		return segcrypt.Key{}, fmt.Errorf("content key of %s: %w", tpath, err)
	}
	k, err := keywrap.Open(kek, sealed, contentKeyContext(tpath, sha256hex))
	if err != nil {
		return segcrypt.Key{}, fmt.Errorf("content key of %s: %w", tpath, err)
	}
	return segcrypt.Key(k), nil
}

// IncomingDir holds the content of publishes in progress (and their shared lock file,
// IncomingLock).
func (r *Repo) IncomingDir() string { return r.path("blobs", "incoming") }

// lockIncoming takes the incoming directory's lock: shared (syscall.LOCK_SH) by every
// publish for as long as it has files there, in any process; exclusive by a sweep.
// With syscall.LOCK_NB it fails with syscall.EWOULDBLOCK instead of waiting.
func (r *Repo) lockIncoming(how int) (func(), error) {
	if err := os.MkdirAll(r.IncomingDir(), 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(r.IncomingDir(), incomingLockName)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", p, err)
	}
	if err := syscall.Flock(int(f.Fd()), how); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", p, err)
	}
	return func() { f.Close() }, nil // closing the last descriptor releases the lock
}

const incomingLockName = IncomingLock

// IncomingLock is the name of the lock file in IncomingDir.
const IncomingLock = ".lock"

// SweepIncoming removes what killed publishes left in DIR/blobs/incoming: content that
// was never moved into the store and the temporary files of unfinished writes. It runs
// only when no publish is in progress in any process (it takes the incoming lock
// exclusively, without waiting), so it never removes a file in use; otherwise it removes
// nothing and returns 0. The server sweeps when it starts and Publish after a failure.
func (r *Repo) SweepIncoming() (files int, bytes int64, err error) {
	unlock, err := r.lockIncoming(syscall.LOCK_EX | syscall.LOCK_NB)
	if errors.Is(err, syscall.EWOULDBLOCK) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, fmt.Errorf("sweep incoming: %w", err)
	}
	defer unlock()
	entries, err := os.ReadDir(r.IncomingDir())
	if err != nil {
		return 0, 0, fmt.Errorf("sweep incoming: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if e.Name() == incomingLockName || e.IsDir() {
			continue
		}
		p := filepath.Join(r.IncomingDir(), e.Name())
		info, err := e.Info()
		if err != nil {
			continue // gone meanwhile
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			continue
		}
		files++
		bytes += info.Size()
	}
	return files, bytes, errors.Join(errs...)
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// checkDelegation refuses a path the role is not delegated: the client would not accept
// it from this role.
func checkDelegation(st *State, role, tpath string) error {
	d := st.Targets[metadata.TARGETS].Signed.Delegations
	if d == nil {
		return fmt.Errorf("%w: targets has no delegations", ErrOutsideDelegation)
	}
	for _, dr := range d.Roles {
		if dr.Name != role {
			continue
		}
		ok, err := dr.IsDelegatedPath(tpath)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("%w: role %s is trusted for %v, not %s", ErrOutsideDelegation, role, dr.Paths, tpath)
		}
		return nil
	}
	return fmt.Errorf("%w: no delegation to %s", ErrOutsideDelegation, role)
}

// delegate adds pattern to role's delegated paths in the top-level targets metadata
// and reports whether it did.
func delegate(st *State, role, pattern string) bool {
	d := st.Targets[metadata.TARGETS].Signed.Delegations
	if d == nil {
		return false
	}
	for i := range d.Roles {
		if d.Roles[i].Name == role && len(d.Roles[i].PathHashPrefixes) == 0 && !slices.Contains(d.Roles[i].Paths, pattern) {
			d.Roles[i].Paths = append(d.Roles[i].Paths, pattern)
			return true
		}
	}
	return false
}

// TargetInfo is a published target as the repository lists it.
type TargetInfo struct {
	Path   string         `json:"path"`
	Role   string         `json:"role"`
	Length int64          `json:"length"`
	SHA256 string         `json:"sha256"`
	Meta   *artifact.Meta `json:"meta,omitempty"`
	// Delta is set, and Meta nil, for a delta target.
	Delta *artifact.Delta `json:"delta,omitempty"`
}

// List lists the targets of the delegated roles.
func (st *State) List() []TargetInfo {
	var out []TargetInfo
	for _, role := range delegatedNames() {
		for p, tf := range st.Targets[role].Signed.Targets {
			ti := TargetInfo{Path: p, Role: role, Length: tf.Length, SHA256: hex.EncodeToString(tf.Hashes["sha256"])}
			if tf.Custom != nil {
				var m artifact.Meta
				if d, ok := artifact.ParseDelta(*tf.Custom); ok {
					ti.Delta = &d
				} else if json.Unmarshal(*tf.Custom, &m) == nil {
					ti.Meta = &m
				}
			}
			out = append(out, ti)
		}
	}
	sortTargets(out)
	return out
}

// ConsistentTargetPath is the URL path under /targets/ a consistent-snapshot client asks
// for: <dir>/<sha256>.<base>.
func ConsistentTargetPath(tpath, sha256hex string) string {
	return path.Join(path.Dir(tpath), sha256hex+"."+path.Base(tpath))
}

func sortTargets(ts []TargetInfo) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Path < ts[j].Path })
}

// staleTemp is how old a temporary metadata file must be for SweepMetadataTemps to
// take it for one a killed writer left: a metadata write renames its file into place
// within moments, so one an hour old has no writer.
const staleTemp = time.Hour

// SweepMetadataTemps removes the temporary files of metadata writes that a kill
// stopped before their rename (".timestamp.json.tmp-…", ".12.snapshot.json.tmp-…")
// once they are older than an hour: nothing removed them, and each kill during a
// publish or a key rotation left one for good (found from outside, 2 Dec). Only names
// of that form are touched. The server sweeps when it starts.
func (r *Repo) SweepMetadataTemps(now time.Time) (files int, err error) {
	entries, err := os.ReadDir(r.MetadataDir())
	if err != nil {
		return 0, fmt.Errorf("sweep metadata temporaries: %w", err)
	}
	var errs []error
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasPrefix(name, ".") || !strings.Contains(name, ".json.tmp-") {
			continue
		}
		info, err := e.Info()
		if err != nil || now.Sub(info.ModTime()) < staleTemp {
			continue // gone meanwhile, or perhaps a write under way
		}
		if err := os.Remove(filepath.Join(r.MetadataDir(), name)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
			continue
		}
		files++
	}
	return files, errors.Join(errs...)
}
