// Package repository is Edgeward's TUF repository library: keys and roles, publishing,
// root ceremonies and key rotation, expiry refresh. It reads and writes a repository
// directory and nothing else: it serves nothing (repo-server does) and opens no
// database; it reports every change to an injected Recorder, which fails the change
// when it cannot record it.
//
// A repository is a directory:
//
//	DIR/edgeward-repo.json        settings (expiry periods)
//	DIR/repository/metadata/      served TUF metadata: N.root.json, N.<role>.json, timestamp.json
//	DIR/blobs/sha256/<hex>        target contents, content-addressed
//	DIR/keys/online/              snapshot and timestamp keys (the server signs with them)
//	DIR/keys/offline/             root, targets, models, runtimes keys, encrypted (default place;
//	                              key holders may keep theirs anywhere)
//	DIR/staged/root/N.root.json   a proposed root collecting signatures
//	DIR/staged/ROLE/N.ROLE.json   a staged change of targets, models or runtimes collecting
//	                              its holders' signatures (stage.go)
//	DIR/keys/online/audit-*.key   the audit log's checkpoint key (used by the server)
//
// Invariant: every mutation writes new versioned metadata first and timestamp.json last
// (each file atomically), under an exclusive lock on DIR/.lock shared by the server and
// the CLI. A client therefore never sees a timestamp that names a snapshot not yet
// written, and a failed write leaves the served repository as it was.
package repository

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// Delegated role names.
const (
	RoleModels   = "models"
	RoleRuntimes = "runtimes"
)

// delegatedPaths are the roles the top-level targets role delegates to, with their path
// patterns. TUF patterns match one path segment per "*", and targets are
// <kind>/<name>/<version><ext> (artifact.TargetPath), hence two stars.
var delegatedPaths = map[string][]string{
	RoleModels:   {"models/*/*", "probes/*/*"},
	RoleRuntimes: {"runtimes/*/*", "agents/*/*"},
}

func delegatedNames() []string { return []string{RoleModels, RoleRuntimes} }

// Expiry is how long each role's metadata stays valid after it is signed. A zero field
// means the default: root 365 days, targets 180, delegated roles 90, snapshot 7,
// timestamp 1 day.
type Expiry struct {
	Root      time.Duration `json:"root"`
	Targets   time.Duration `json:"targets"`
	Delegated time.Duration `json:"delegated"`
	Snapshot  time.Duration `json:"snapshot"`
	Timestamp time.Duration `json:"timestamp"`
}

func (e Expiry) withDefaults() Expiry {
	day := 24 * time.Hour
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&e.Root, 365*day)
	def(&e.Targets, 180*day)
	def(&e.Delegated, 90*day)
	def(&e.Snapshot, 7*day)
	def(&e.Timestamp, day)
	return e
}

// RoleLife is how long role's metadata stays valid after it is signed (defaults
// applied).
func (e Expiry) RoleLife(role string) time.Duration { return e.withDefaults().forRole(role) }

func (e Expiry) forRole(role string) time.Duration {
	switch role {
	case metadata.ROOT:
		return e.Root
	case metadata.TARGETS:
		return e.Targets
	case metadata.SNAPSHOT:
		return e.Snapshot
	case metadata.TIMESTAMP:
		return e.Timestamp
	}
	return e.Delegated
}

// Config says where a repository is and how to work on it. The zero value of every field
// but Dir is usable.
type Config struct {
	Dir    string
	FS     FS               // nil: the real file system
	Now    func() time.Time // nil: time.Now
	KDF    KDFParams        // scrypt cost for new encrypted keys; zero: defaults
	Logger *slog.Logger     // nil: discard
	// Actor names who acts, for the event log ("cli:alice", "server"). Empty: "cli".
	Actor string
	// Recorder receives every change as an event, before the change becomes visible;
	// a failure to record fails the change. nil: changes are not recorded (tests,
	// tools that keep no log).
	Recorder Recorder
	// Lock, when set, is held with the directory's file lock (DIR/.lock) by every
	// change to the repository (publish, retire, key rotation, root, refresh): taken
	// after it, released before it. The file lock serialises the processes of one
	// machine; Lock serialises writers that share the directory from several, such as
	// server replicas and the CLI on one PostgreSQL database (reposerver.PublishLock,
	// the publish lease). nil: the file lock alone.
	Lock func(ctx context.Context) (unlock func(), err error)
	// Held, when set with Lock, says whether the lock Lock took is still held (nil) or
	// was lost (a lease that passed to another holder while this one stalled past its
	// time). A change checks it just before timestamp.json makes it visible, and fails,
	// leaving the repository as it was, when the lock is gone: its metadata, built from
	// what it read under the lock, could overwrite the next holder's. nil: not checked.
	Held func(ctx context.Context) error
}

// Repo is a handle on a repository directory. It holds no metadata in memory between
// calls: every operation loads the current state under the lock, so several processes
// can share one directory. Safe for concurrent use.
type Repo struct {
	cfg    Config
	fs     FS
	now    func() time.Time
	log    *slog.Logger
	expiry Expiry
	limits Limits
}

type settings struct {
	Format string `json:"format"`
	Expiry Expiry `json:"expiry"`
	Limits Limits `json:"limits,omitzero"`
}

const settingsFormat = "edgeward-repo-v1"

// Open opens an existing repository.
func Open(cfg Config) (*Repo, error) {
	r := newRepo(cfg)
	data, err := os.ReadFile(r.path("edgeward-repo.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			if unfinishedInit(r) {
				return nil, fmt.Errorf("%s is not an edgeward repository: %w", cfg.Dir, errUnfinishedInit(cfg.Dir))
			}
			return nil, fmt.Errorf("%s is not an edgeward repository (no edgeward-repo.json): create one with 'edgeward repo init %s', or name an existing one with --repo or $EDGEWARD_REPO", cfg.Dir, cfg.Dir)
		}
		return nil, err
	}
	var s settings
	if err := json.Unmarshal(data, &s); err != nil || s.Format != settingsFormat {
		return nil, fmt.Errorf("%s: bad edgeward-repo.json: %v", cfg.Dir, err)
	}
	r.expiry = s.Expiry.withDefaults()
	r.limits = s.Limits.withDefaults()
	if err := r.limits.validate(); err != nil {
		return nil, fmt.Errorf("%s: edgeward-repo.json: %w", cfg.Dir, err)
	}
	return r, nil
}

func newRepo(cfg Config) *Repo {
	r := &Repo{cfg: cfg, fs: cfg.FS, now: cfg.Now, log: cfg.Logger, limits: Limits{}.withDefaults()}
	if r.fs == nil {
		r.fs = OSFS{}
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.cfg.Actor == "" {
		r.cfg.Actor = "cli"
	}
	return r
}

// Now is the repository's clock (Config.Now): it stamps expiries, and the server uses it
// for everything it decides about the same metadata.
func (r *Repo) Now() time.Time { return r.now() }

// WithActor returns a handle on the same repository whose events name actor (an
// operator acting through the server, for example).
func (r *Repo) WithActor(actor string) *Repo {
	c := *r
	c.cfg.Actor = actor
	return &c
}

// WithLock returns a handle on the same repository whose changes also hold lock (see
// Config.Lock), replacing any lock r had (and its Held check).
func (r *Repo) WithLock(lock func(ctx context.Context) (unlock func(), err error)) *Repo {
	return r.WithLease(lock, nil)
}

// WithLease is WithLock with held, the check that the lock is still held before a
// change becomes visible (Config.Held).
func (r *Repo) WithLease(lock func(ctx context.Context) (unlock func(), err error), held func(ctx context.Context) error) *Repo {
	c := *r
	c.cfg.Lock, c.cfg.Held = lock, held
	return &c
}

// lock takes the repository lock: the directory's file lock, then Config.Lock.
func (r *Repo) lock(ctx context.Context) (func(), error) {
	unlock, err := lockFile(r.path(".lock"))
	if err != nil {
		return nil, err
	}
	if r.cfg.Lock == nil {
		return unlock, nil
	}
	unlock2, err := r.cfg.Lock(ctx)
	if err != nil {
		unlock()
		return nil, fmt.Errorf("repository lock: %w", err)
	}
	return func() { unlock2(); unlock() }, nil
}

// Dir is the repository directory.
func (r *Repo) Dir() string { return r.cfg.Dir }

// Expiry is the repository's expiry settings.
func (r *Repo) Expiry() Expiry { return r.expiry }

func (r *Repo) path(elem ...string) string {
	return filepath.Join(append([]string{r.cfg.Dir}, elem...)...)
}

// MetadataDir is the served metadata directory.
func (r *Repo) MetadataDir() string { return r.path("repository", "metadata") }

// BlobPath is where the target content with this sha256 is stored.
func (r *Repo) BlobPath(sha256hex string) string { return r.path("blobs", "sha256", sha256hex) }

// OnlineKeyDir holds the snapshot and timestamp keys.
func (r *Repo) OnlineKeyDir() string { return r.path("keys", "online") }

// OfflineKeyDir is the default home of offline keys.
func (r *Repo) OfflineKeyDir() string { return r.path("keys", "offline") }

// AuditKey loads the audit checkpoint key (an online key, role "audit") that Init
// created in the repository directory dir. The server signs audit checkpoints with it.
// After MoveAuditKey the key lives outside dir, in the file AuditKeyLocation names.
func AuditKey(dir string) (ed25519.PrivateKey, error) {
	keyDir := filepath.Join(dir, "keys", "online")
	matches, _ := filepath.Glob(filepath.Join(keyDir, "audit-*.key"))
	if len(matches) == 0 {
		loc, err := os.ReadFile(AuditKeyLocation(dir))
		if err == nil {
			matches = []string{strings.TrimSpace(string(loc))}
		}
	}
	if len(matches) != 1 {
		return nil, fmt.Errorf("want one audit checkpoint key in %s (or its location in %s), found %d", keyDir, AuditKeyLocation(dir), len(matches))
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		return nil, err
	}
	k, err := ParseKey(data, nil)
	if err != nil {
		return nil, fmt.Errorf("audit key %s: %w", matches[0], err)
	}
	priv, ok := k.Private.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("audit key %s is not ed25519", matches[0])
	}
	return priv, nil
}

// AuditKeyLocation is the file naming where the audit key lives once moved out of dir.
func AuditKeyLocation(dir string) string { return filepath.Join(dir, "keys", "audit-key-location") }

// MoveAuditKey moves the audit checkpoint key out of the repository directory dir into
// the file to (mode 0600, created; it must not exist and must lie outside dir), records
// its location in dir, and removes the key from dir: whoever copies the data directory
// (a backup) no longer holds the key that signs the log's checkpoints.
func MoveAuditKey(dir, to string) error {
	absDir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	absTo, err := filepath.Abs(to)
	if err != nil {
		return err
	}
	if rel, err := filepath.Rel(absDir, absTo); err == nil && !strings.HasPrefix(rel, "..") {
		return fmt.Errorf("%s is inside the repository directory %s: choose a file outside it", to, dir)
	}
	matches, _ := filepath.Glob(filepath.Join(absDir, "keys", "online", "audit-*.key"))
	if len(matches) == 0 {
		// 'repo init' puts it outside unless told --audit-key inside.
		if loc, err := os.ReadFile(AuditKeyLocation(absDir)); err == nil {
			return fmt.Errorf("the audit key is already outside the repository directory, at %s (named by %s): nothing to move", strings.TrimSpace(string(loc)), AuditKeyLocation(dir))
		}
	}
	if len(matches) != 1 {
		return fmt.Errorf("want one audit key in %s to move, found %d", filepath.Join(dir, "keys", "online"), len(matches))
	}
	data, err := os.ReadFile(matches[0])
	if err != nil {
		return err
	}
	f, err := os.OpenFile(absTo, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err = f.Write(data); err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(absTo)
		return err
	}
	// The new entry must be durable before the old key goes: often on another file
	// system, its directory entry could otherwise be lost in a crash after the removal
	// was written, and the key with it.
	if err := durable.SyncDir(filepath.Dir(absTo)); err != nil {
		return fmt.Errorf("sync %s: %w", filepath.Dir(absTo), err)
	}
	if err := durable.WriteFile(AuditKeyLocation(absDir), []byte(absTo+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.Remove(matches[0]); err != nil {
		return err
	}
	return durable.SyncDir(filepath.Dir(matches[0]))
}

// AuditKey loads the repository's audit checkpoint key (see the function AuditKey).
func (r *Repo) AuditKey() (ed25519.PrivateKey, error) { return AuditKey(r.cfg.Dir) }

func (r *Repo) expires(role string) time.Time {
	return r.now().UTC().Add(r.expiry.forRole(role)).Truncate(time.Second)
}

// State is the repository's current metadata, as loaded and verified from disk.
type State struct {
	Root      *metadata.Metadata[metadata.RootType]
	Targets   map[string]*metadata.Metadata[metadata.TargetsType] // "targets", "models", "runtimes"
	Snapshot  *metadata.Metadata[metadata.SnapshotType]
	Timestamp *metadata.Metadata[metadata.TimestampType]
	// Interrupted names a root file newer than Root under which the metadata does not
	// verify while it does under Root, with its pending copy (Pending) beside it: a root
	// publish stopped between putting the root in place and signing the timestamp under
	// it. Load uses the root before it; the next change under the lock removes both
	// (the proposal is still staged: publish it again). "" normally.
	Interrupted string
	// Pending names a new root's pending copy left in the metadata directory (by a
	// publish stopped before it removed it), which the next change removes. "" normally.
	Pending string
}

// MetadataError reports a metadata file in the repository that cannot be used.
type MetadataError struct {
	File string
	Err  error
}

func (e *MetadataError) Error() string { return fmt.Sprintf("metadata %s: %v", e.File, e.Err) }
func (e *MetadataError) Unwrap() error { return e.Err }

var rootFileRE = regexp.MustCompile(`^([1-9][0-9]{0,9})\.root\.json$`)

// Load reads the current metadata and verifies it: root is signed by its own threshold,
// timestamp, snapshot and targets by root's keys, delegated roles by targets' delegation,
// and every version named by timestamp and snapshot is the one on disk. It does not check
// expiry (an expired repository must still be loadable to be refreshed).
func (r *Repo) Load(ctx context.Context) (*State, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := r.MetadataDir()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("read metadata dir: %w", err)
	}
	rootVersion := 0
	for _, e := range entries {
		if m := rootFileRE.FindStringSubmatch(e.Name()); m != nil {
			if v, _ := strconv.Atoi(m[1]); v > rootVersion {
				rootVersion = v
			}
		}
	}
	if rootVersion == 0 {
		if _, err := os.Stat(r.ProposalPath(1)); err == nil {
			return nil, &MetadataError{File: filepath.Join(dir, "1.root.json"), Err: fmt.Errorf("%w: root v1 is staged at %s; the root key holders sign it ('edgeward root sign --key HOLDER.key') and publish it ('edgeward root publish')", ErrRootPending, r.ProposalPath(1))}
		}
		return nil, &MetadataError{File: filepath.Join(dir, "1.root.json"), Err: os.ErrNotExist}
	}
	st, err := r.loadAt(dir, rootVersion)
	pending := pendingRootName(rootVersion)
	if err == nil {
		if _, perr := os.Stat(filepath.Join(dir, pending)); perr == nil {
			st.Pending = pending // the publish completed; only its pending copy is left
		}
		return st, nil
	}
	// Root N does not verify the repository's metadata. A root publish stopped between
	// putting N in place and signing the timestamp under it leaves exactly that, and its
	// pending copy, with the same bytes, beside it: only then is the state before it
	// (under N-1) taken, the stray root named to be removed. Anything else is an error:
	// an older timestamp restored under a root devices already pinned must not make
	// the repository drop that root.
	if rootVersion > 1 && sameFile(filepath.Join(dir, pending), filepath.Join(dir, fmt.Sprintf("%d.root.json", rootVersion))) {
		if prev, perr := r.loadAt(dir, rootVersion-1); perr == nil {
			prev.Interrupted, prev.Pending = fmt.Sprintf("%d.root.json", rootVersion), pending
			return prev, nil
		}
	}
	return nil, err
}

// pendingRootName is the name a new root N is written under first (txn.commit).
func pendingRootName(v int) string { return fmt.Sprintf(".%d.root.json.pending", v) }

// sameFile reports whether the files at a and b both exist and hold the same bytes.
func sameFile(a, b string) bool {
	x, err := os.ReadFile(a)
	if err != nil {
		return false
	}
	y, err := os.ReadFile(b)
	return err == nil && bytes.Equal(x, y)
}

// loadAt loads and verifies the repository's metadata under root version rootVersion.
func (r *Repo) loadAt(dir string, rootVersion int) (*State, error) {
	var err error
	st := &State{Targets: map[string]*metadata.Metadata[metadata.TargetsType]{}}
	if st.Root, err = loadMeta(dir, fmt.Sprintf("%d.root.json", rootVersion), metadata.Root(), nil); err != nil {
		return nil, err
	}
	if err := st.Root.VerifyDelegate(metadata.ROOT, st.Root); err != nil {
		return nil, &MetadataError{File: fmt.Sprintf("%d.root.json", rootVersion), Err: fmt.Errorf("not signed by its own threshold: %w", err)}
	}
	if st.Timestamp, err = loadMeta(dir, "timestamp.json", metadata.Timestamp(), nil); err != nil {
		return nil, err
	}
	if err := st.Root.VerifyDelegate(metadata.TIMESTAMP, st.Timestamp); err != nil {
		return nil, &MetadataError{File: "timestamp.json", Err: err}
	}
	snapMeta := st.Timestamp.Signed.Meta["snapshot.json"]
	if snapMeta == nil {
		return nil, &MetadataError{File: "timestamp.json", Err: errors.New("names no snapshot")}
	}
	snapFile := fmt.Sprintf("%d.snapshot.json", snapMeta.Version)
	if st.Snapshot, err = loadMeta(dir, snapFile, metadata.Snapshot(), snapMeta); err != nil {
		return nil, err
	}
	if err := st.Root.VerifyDelegate(metadata.SNAPSHOT, st.Snapshot); err != nil {
		return nil, &MetadataError{File: snapFile, Err: err}
	}
	for _, role := range append([]string{metadata.TARGETS}, delegatedNames()...) {
		m := st.Snapshot.Signed.Meta[role+".json"]
		if m == nil {
			return nil, &MetadataError{File: snapFile, Err: fmt.Errorf("names no %s.json", role)}
		}
		file := fmt.Sprintf("%d.%s.json", m.Version, role)
		t, err := loadMeta(dir, file, metadata.Targets(), m)
		if err != nil {
			return nil, err
		}
		if t.Signed.Version != m.Version {
			return nil, &MetadataError{File: file, Err: fmt.Errorf("version %d, snapshot says %d", t.Signed.Version, m.Version)}
		}
		var verr error
		if role == metadata.TARGETS {
			verr = st.Root.VerifyDelegate(role, t)
		} else {
			verr = st.Targets[metadata.TARGETS].VerifyDelegate(role, t)
		}
		if verr != nil {
			return nil, &MetadataError{File: file, Err: verr}
		}
		st.Targets[role] = t
	}
	return st, nil
}

// maxMetadataBytes bounds what Load reads of one metadata file.
const maxMetadataBytes = 32 << 20

// loadMeta reads and parses the metadata file name in dir. want, if not nil, is how the
// snapshot or the timestamp names the file: its length and hashes, when it has them,
// must match (as a device checks them).
func loadMeta[T metadata.Roles](dir, name string, m *metadata.Metadata[T], want *metadata.MetaFiles) (*metadata.Metadata[T], error) {
	path := filepath.Join(dir, name)
	f, err := os.Open(path)
	if err != nil {
		return nil, &MetadataError{File: path, Err: err}
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, maxMetadataBytes+1)); err != nil {
		return nil, &MetadataError{File: path, Err: err}
	}
	if buf.Len() > maxMetadataBytes {
		return nil, &MetadataError{File: path, Err: fmt.Errorf("larger than %d bytes", maxMetadataBytes)}
	}
	if !json.Valid(buf.Bytes()) {
		return nil, &MetadataError{File: path, Err: errors.New("not valid JSON (truncated or corrupted)")}
	}
	if want != nil {
		if err := want.VerifyLengthHashes(buf.Bytes()); err != nil {
			return nil, &MetadataError{File: path, Err: fmt.Errorf("not the file the snapshot or timestamp names: %w", err)}
		}
	}
	out, err := m.FromBytes(buf.Bytes())
	if err != nil {
		return nil, &MetadataError{File: path, Err: err}
	}
	return out, nil
}

// writeMeta signs m with keys (replacing its signatures) and writes it to file in the
// metadata directory.
func writeMeta[T metadata.Roles](r *Repo, file string, m *metadata.Metadata[T], keys []*Key) error {
	data, err := signMeta(file, m, keys)
	if err != nil {
		return err
	}
	return r.writeMetaBytes(file, data)
}

// metaFileOf is how a snapshot names a targets role's file, or a timestamp the
// snapshot's: its version, and its length and SHA-256. With the version alone, anyone
// holding the role's key could make another file of the same version, which a device
// that had not cached that version took for the one the snapshot signed: a models key
// rotated out after a theft still signed a model that a device new to the repository,
// or back after an absence, installed from a mirror replaying the metadata of before
// the rotation, for as long as that timestamp had not expired (found from outside, 2
// Dec). The hashes bind the file to the online keys' signature.
func metaFileOf(version int64, data []byte) *metadata.MetaFiles {
	sum := sha256.Sum256(data)
	mf := metadata.MetaFile(version)
	mf.Length = int64(len(data))
	mf.Hashes = metadata.Hashes{"sha256": sum[:]}
	return mf
}

// hashedMetaFile is mf with the length and hashes of the file it names (VERSION.role.json
// in the metadata directory) when it has none: a snapshot or timestamp of a repository
// from before hashes, whose roles did not change since, gets them at its next version.
func (r *Repo) hashedMetaFile(role string, mf *metadata.MetaFiles) (*metadata.MetaFiles, error) {
	if len(mf.Hashes) > 0 && mf.Length > 0 {
		return mf, nil
	}
	file := fmt.Sprintf("%d.%s.json", mf.Version, role)
	data, err := os.ReadFile(filepath.Join(r.MetadataDir(), file))
	if err != nil {
		return nil, fmt.Errorf("hash %s, which the new snapshot or timestamp names: %w", file, err)
	}
	return metaFileOf(mf.Version, data), nil
}

// signMeta signs m with keys (replacing its signatures) and encodes it as served. A key
// listed twice signs once: during a root rotation a role is signed by its new keys and
// its old ones, which share the keys kept, and go-tuf refuses metadata that carries two
// signatures by one key (the whole repository, and every device, then failed to load).
func signMeta[T metadata.Roles](file string, m *metadata.Metadata[T], keys []*Key) ([]byte, error) {
	m.ClearSignatures()
	signed := map[string]bool{}
	for _, k := range keys {
		if id := k.ID(); signed[id] {
			continue
		} else {
			signed[id] = true
		}
		s, err := k.Signer()
		if err != nil {
			return nil, err
		}
		if _, err := m.Sign(s); err != nil {
			return nil, fmt.Errorf("sign %s: %w", file, err)
		}
	}
	data, err := m.ToBytes(true)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", file, err)
	}
	return data, nil
}

func (r *Repo) writeMetaBytes(file string, data []byte) error {
	if err := r.fs.WriteFile(filepath.Join(r.MetadataDir(), file), data, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", file, err)
	}
	return nil
}

// txn is one mutation of the repository, applied in the safe order by commit.
type txn struct {
	r        *Repo
	st       *State
	keys     *KeyRing
	changed  map[string]bool // targets roles with a new version to write
	extraSig map[string][]*Key
	newSnap  bool
	// tsWritten is set once the new timestamp.json was attempted.
	tsWritten bool
	// after runs once the metadata is written, still under the lock.
	after func() error
	// created are files this transaction added; they are removed if it fails before
	// timestamp.json names them.
	created []string
	// events are recorded, in order, just before timestamp.json is written.
	events []event
	// rootFile and rootData are a new root (N.root.json), written with the other new
	// metadata before timestamp.json: metadata signed by a new root's keys must never be
	// live while that root is not (a failed or interrupted write of the root after the
	// timestamp left a repository its own Load, and every device, could not verify).
	rootFile string
	rootData []byte
	// mayStage lets commit stage the change of one targets role whose threshold the
	// keys at hand do not meet (KeyRing.Stage), instead of failing (updateOrStage).
	mayStage bool
	// staged is the change commit staged instead of publishing it.
	staged *Staged
	// presigned are targets roles whose new version is already signed (a staged
	// change published with its holders' signatures): written as they are.
	presigned map[string][]byte
}

// record adds an event that commit records before the change becomes visible.
func (t *txn) record(action, subject string, data map[string]any) {
	t.events = append(t.events, event{action, subject, data})
}

// update runs fn on the freshly loaded state under the repository lock, then writes what
// it changed: delegated and targets metadata, then snapshot, then timestamp.
func (r *Repo) update(ctx context.Context, keys *KeyRing, fn func(t *txn) error) error {
	_, err := r.updateTxn(ctx, keys, false, fn)
	return err
}

// updateOrStage is update for the changes that may be staged (publish, retire, renew,
// a delegation change): when keys.Stage is set and the one targets role the change
// touches needs more signatures than the keys at hand make, it stages the change for
// the role's key holders and returns what it staged; nothing is published then.
func (r *Repo) updateOrStage(ctx context.Context, keys *KeyRing, fn func(t *txn) error) (*Staged, error) {
	return r.updateTxn(ctx, keys, keys != nil && keys.Stage, fn)
}

func (r *Repo) updateTxn(ctx context.Context, keys *KeyRing, mayStage bool, fn func(t *txn) error) (*Staged, error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	st, err := r.Load(ctx)
	if err != nil {
		return nil, err
	}
	if st.Interrupted != "" {
		// Under the lock: the interrupted publish's root goes, so that no device
		// fetches it any more; its proposal is still staged.
		if err := r.record(ctx, event{"root.publish.interrupted", st.Interrupted, map[string]any{"removed": st.Interrupted,
			"reason": "the metadata does not verify under it: a root publish stopped before signing the timestamp under it; publish the staged proposal again (not a new one: devices may have fetched this one)"}}); err != nil {
			return nil, err
		}
		if err := os.Remove(filepath.Join(r.MetadataDir(), st.Interrupted)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove the interrupted root %s: %w", st.Interrupted, err)
		}
		st.Interrupted = ""
	}
	if st.Pending != "" {
		if err := os.Remove(filepath.Join(r.MetadataDir(), st.Pending)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("remove %s: %w", st.Pending, err)
		}
		st.Pending = ""
	}
	if keys == nil {
		keys = &KeyRing{}
	}
	t := &txn{r: r, st: st, keys: keys, changed: map[string]bool{}, extraSig: map[string][]*Key{}, mayStage: mayStage}
	if err := fn(t); err != nil {
		return nil, errors.Join(err, t.rollback())
	}
	if err := t.commit(ctx); err != nil {
		if t.staged != nil && errors.Is(err, errStaged) {
			// Staged, not published: what the change stored (the content, the staged
			// files) stays for its publication; nothing served changed.
			return t.staged, nil
		}
		return nil, errors.Join(err, t.rollback())
	}
	if t.after != nil {
		return nil, t.after()
	}
	return nil, nil
}

// rollback removes the files the transaction created, unless timestamp.json already
// names its snapshot (the rename happened and only a later step failed): then they are
// live and must stay. Under a lease (Config.Held), it removes them only while the lease
// is still this change's: once it has passed to another writer (this one stalled past
// its time, or lost the database), that writer may have written the same names since —
// the next versions of the same metadata, content it publishes too — and removing them
// took files its live metadata names (a next holder's snapshot, which devices then could
// not fetch). They stay then, named by the error it returns; none is referenced by the
// live metadata unless the other writer's own.
func (t *txn) rollback() error {
	if len(t.created) == 0 {
		return nil
	}
	ts, err := loadMeta(t.r.MetadataDir(), "timestamp.json", metadata.Timestamp(), nil)
	if err == nil && ts.Signed.Version == t.st.Timestamp.Signed.Version && t.tsWritten {
		return nil
	}
	if t.r.cfg.Lock != nil && t.r.cfg.Held != nil {
		ctx, cancel := context.WithTimeout(context.Background(), heldCheckTimeout)
		defer cancel()
		if err := t.r.cfg.Held(ctx); err != nil {
			var left []string
			for _, f := range t.created {
				if _, err := os.Lstat(f); err == nil {
					left = append(left, f)
				}
			}
			if len(left) == 0 {
				return nil
			}
			return fmt.Errorf("the change's %d files stay (%s): the repository lock is no longer this change's (%v), and another writer may have written them since", len(left), strings.Join(left, ", "), err)
		}
	}
	for _, f := range t.created {
		os.Remove(f)
	}
	return nil
}

// heldCheckTimeout bounds rollback's check that the lock is still held.
const heldCheckTimeout = 5 * time.Second

// create records that the transaction added file.
func (t *txn) create(file string) { t.created = append(t.created, file) }

// touch marks a targets role as changed: its version rises and its expiry renews.
func (t *txn) touch(role string) {
	if !t.changed[role] {
		m := t.st.Targets[role]
		m.Signed.Version++
		m.Signed.Expires = t.r.expires(role)
		t.changed[role] = true
	}
}

// roleKeys finds threshold signing keys for a role named in root or a delegation.
func (t *txn) roleKeys(role string) ([]*Key, error) {
	ids, threshold, err := roleKeyIDs(t.st, role)
	if err != nil {
		return nil, err
	}
	dirs := []string{}
	if role == metadata.SNAPSHOT || role == metadata.TIMESTAMP {
		dirs = append(dirs, t.r.OnlineKeyDir())
	} else {
		dirs = append(dirs, t.r.OfflineKeyDir())
	}
	return t.keys.Find(role, ids, threshold, dirs)
}

func roleKeyIDs(st *State, role string) ([]string, int, error) {
	if r, ok := st.Root.Signed.Roles[role]; ok {
		return r.KeyIDs, r.Threshold, nil
	}
	if d := st.Targets[metadata.TARGETS].Signed.Delegations; d != nil {
		for _, dr := range d.Roles {
			if dr.Name == role {
				return dr.KeyIDs, dr.Threshold, nil
			}
		}
	}
	return nil, 0, fmt.Errorf("no role %q in this repository", role)
}

func (t *txn) commit(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// Sign everything before writing anything: a missing key must change nothing.
	type pending struct {
		role string
		keys []*Key
		data []byte
	}
	var todo []pending
	roles := []string{}
	for role := range t.changed {
		roles = append(roles, role)
	}
	sort.Strings(roles)
	keysFor := map[string][]*Key{}
	var shorts []*KeysShortError
	for _, role := range roles {
		if data, ok := t.presigned[role]; ok {
			todo = append(todo, pending{role: role, data: data})
			continue
		}
		k, err := t.roleKeys(role)
		if err != nil {
			// A role whose threshold is above 1 and above the keys at hand: the change
			// is staged for its holders (KeyRing.Stage), or refused. Never signed by
			// fewer and published.
			var short *KeysShortError
			if errors.As(err, &short) && short.Threshold > 1 && stageable(role) {
				shorts = append(shorts, short)
				keysFor[role] = short.Found
				continue
			}
			return err
		}
		keysFor[role] = k
		todo = append(todo, pending{role: role, keys: append(k, t.extraSig[role]...)})
	}
	if len(shorts) > 0 {
		if !t.mayStage || t.rootFile != "" || len(t.presigned) > 0 {
			s := shorts[0]
			return fmt.Errorf("%w: role %s needs %d signatures and the keys at hand make %d: nothing was published; make the change with 'edgeward' on the repository (publish, retire, repo renew, role keys), which stages it for the role's key holders to sign ('edgeward role sign') and then publish ('edgeward role publish'); see docs/REPOSITORY.md",
				ErrNeedsSignatures, s.Role, s.Threshold, len(s.Found))
		}
		return t.stage(ctx, roles, keysFor)
	}
	snapKeys, err := t.roleKeys(metadata.SNAPSHOT)
	if err != nil {
		return err
	}
	tsKeys, err := t.roleKeys(metadata.TIMESTAMP)
	if err != nil {
		return err
	}
	for i, p := range todo {
		m := t.st.Targets[p.role]
		file := fmt.Sprintf("%d.%s.json", m.Signed.Version, p.role)
		data := p.data
		if data == nil {
			if data, err = signMeta(file, m, p.keys); err != nil {
				return err
			}
		}
		if err := t.checkSize(p.role, len(data)); err != nil {
			return err
		}
		todo[i].data = data
	}
	for _, p := range todo {
		m := t.st.Targets[p.role]
		file := fmt.Sprintf("%d.%s.json", m.Signed.Version, p.role)
		t.create(filepath.Join(t.r.MetadataDir(), file))
		if err := t.r.writeMetaBytes(file, p.data); err != nil {
			return err
		}
		t.st.Snapshot.Signed.Meta[p.role+".json"] = metaFileOf(m.Signed.Version, p.data)
	}
	if len(todo) > 0 || t.newSnap {
		s := t.st.Snapshot
		for name, mf := range s.Signed.Meta {
			hashed, err := t.r.hashedMetaFile(strings.TrimSuffix(name, ".json"), mf)
			if err != nil {
				return err
			}
			s.Signed.Meta[name] = hashed
		}
		s.Signed.Version++
		s.Signed.Expires = t.r.expires(metadata.SNAPSHOT)
		file := fmt.Sprintf("%d.snapshot.json", s.Signed.Version)
		data, err := signMeta(file, s, append(snapKeys, t.extraSig[metadata.SNAPSHOT]...))
		if err != nil {
			return err
		}
		t.create(filepath.Join(t.r.MetadataDir(), file))
		if err := t.r.writeMetaBytes(file, data); err != nil {
			return err
		}
		t.st.Timestamp.Signed.Meta["snapshot.json"] = metaFileOf(s.Signed.Version, data)
	}
	if mf := t.st.Timestamp.Signed.Meta["snapshot.json"]; mf != nil {
		hashed, err := t.r.hashedMetaFile(metadata.SNAPSHOT, mf)
		if err != nil {
			return err
		}
		t.st.Timestamp.Signed.Meta["snapshot.json"] = hashed
	}
	// A new root is written under a name nobody fetches, and takes its own name only
	// once the change is recorded and the lock still held, right before timestamp.json:
	// written first, a publish that then failed (the audit log busy, the lock lost) or
	// was killed left a root that devices fetched and trusted, and under which the
	// repository's own timestamp no longer verified (found from outside, 2 Dec).
	pendingRoot := ""
	if t.rootFile != "" {
		pendingRoot = pendingRootName(int(t.st.Root.Signed.Version))
		t.create(filepath.Join(t.r.MetadataDir(), pendingRoot))
		if err := t.r.writeMetaBytes(pendingRoot, t.rootData); err != nil {
			return err
		}
	}
	// Still the lock's holder, checked before anything is recorded or made visible.
	if t.r.cfg.Lock != nil && t.r.cfg.Held != nil {
		if err := t.r.cfg.Held(ctx); err != nil {
			return fmt.Errorf("the repository lock was lost before the change became visible: %w", err)
		}
	}
	// Record before timestamp.json makes the change visible: a failure to record
	// leaves the repository as it was (rollback removes the new files).
	for _, ev := range t.events {
		if err := t.r.record(ctx, ev); err != nil {
			return err
		}
	}
	// And again once recorded (the audit log is a database; its writes may outlast the
	// lease): a change whose lease passed to another writer meanwhile must not put its
	// timestamp over the one the other may have written since. Its records then name a
	// change that did not become visible, as when the write below fails; the other
	// writer's metadata, which devices may have fetched, stays.
	if t.r.cfg.Lock != nil && t.r.cfg.Held != nil && len(t.events) > 0 {
		if err := t.r.cfg.Held(ctx); err != nil {
			return fmt.Errorf("the repository lock was lost while the change was recorded, before it became visible (the audit log records it; it did not happen): %w", err)
		}
	}
	if pendingRoot != "" {
		// A copy, not a rename: the pending copy stays until the timestamp is signed
		// under the new root, the evidence Load needs to tell a publish stopped here from
		// any other state in which the metadata does not verify under the newest root.
		t.create(filepath.Join(t.r.MetadataDir(), t.rootFile))
		if err := t.r.writeMetaBytes(t.rootFile, t.rootData); err != nil {
			return fmt.Errorf("put root %s in place: %w", t.rootFile, err)
		}
	}
	ts := t.st.Timestamp
	ts.Signed.Version++
	ts.Signed.Expires = t.r.expires(metadata.TIMESTAMP)
	t.tsWritten = true
	if err := writeMeta(t.r, "timestamp.json", ts, append(tsKeys, t.extraSig[metadata.TIMESTAMP]...)); err != nil {
		return err
	}
	if pendingRoot != "" {
		os.Remove(filepath.Join(t.r.MetadataDir(), pendingRoot)) // else the next change removes it (State.Pending)
	}
	return nil
}

// checkSize refuses a targets role that would grow past Limits.MaxRoleBytes. A role
// already past the bound (a lowered bound, an older repository) may still shrink, so
// that retiring targets is always possible.
func (t *txn) checkSize(role string, size int) error {
	max := t.r.limits.MaxRoleBytes
	if size <= max {
		return nil
	}
	if mf := t.st.Snapshot.Signed.Meta[role+".json"]; mf != nil {
		if fi, err := os.Stat(filepath.Join(t.r.MetadataDir(), fmt.Sprintf("%d.%s.json", mf.Version, role))); err == nil && int64(size) <= fi.Size() {
			return nil
		}
	}
	return fmt.Errorf("%w: %s.json would be %d bytes, more than this repository's bound of %d (limits.max_role_bytes in %s; devices accept at most %d): retire old versions with 'edgeward retire', or see docs/REPOSITORY.md on large catalogues",
		ErrTooLarge, role, size, max, t.r.path("edgeward-repo.json"), ClientMaxRoleBytes)
}

// Refresh re-signs the timestamp (and the snapshot) with the online keys when they expire
// within half of their lifetime, and reports what it renewed. Offline roles cannot be
// renewed here; their expiry is reported by Status.
func (r *Repo) Refresh(ctx context.Context) (renewed []string, err error) {
	err = r.update(ctx, nil, func(t *txn) error {
		now := r.now()
		if t.st.Snapshot.Signed.Expires.Sub(now) < r.expiry.Snapshot/2 {
			t.newSnap = true
			renewed = append(renewed, metadata.SNAPSHOT)
		}
		if t.newSnap || t.st.Timestamp.Signed.Expires.Sub(now) < r.expiry.Timestamp/2 {
			renewed = append(renewed, metadata.TIMESTAMP)
			t.record("refresh", "", map[string]any{"renewed": renewed})
			return nil
		}
		return errNothingToDo
	})
	if errors.Is(err, errNothingToDo) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return renewed, nil
}

var errNothingToDo = errors.New("nothing to do")

// Renew re-signs the offline targets roles named (targets, models, runtimes) with a
// new version and a fresh expiry, with their keys from keys, then the snapshot and the
// timestamp. Refresh renews only the online roles; an offline role left to expire
// stops every device's updates (go-tuf refuses expired targets metadata), so its
// holders renew it before then ('edgeward repo status' shows the time left). The root
// is renewed by the root ceremony ('edgeward root propose --expires').
func (r *Repo) Renew(ctx context.Context, roles []string, keys *KeyRing) (map[string]time.Time, error) {
	out, staged, err := r.RenewOrStage(ctx, roles, keys)
	if err == nil && staged != nil {
		// Not reached: a key ring that stages is given to RenewOrStage.
		return nil, fmt.Errorf("renew: %w: %s staged, not renewed", ErrNeedsSignatures, staged.Roles[0].Role)
	}
	return out, err
}

// RenewOrStage is Renew; with keys.Stage set, a role whose threshold the keys at hand
// do not meet is staged for its key holders instead, on its own: the roles named whose
// keys are at hand are renewed and published (all in one change when every role's are),
// and the staged roles are returned (their expiries in the map are the staged ones).
// Renewing several roles staged them all together, those whose keys were at hand too:
// 'repo renew --role targets --role models --role runtimes' with models 2 of 2 left
// targets and runtimes unrenewed until the models holders signed, and any change to
// them meanwhile made the staged change stale (found in review, 2 Dec).
func (r *Repo) RenewOrStage(ctx context.Context, roles []string, keys *KeyRing) (map[string]time.Time, *Staged, error) {
	if len(roles) == 0 {
		return nil, nil, errors.New("renew: name the roles (targets, models, runtimes)")
	}
	if keys == nil || !keys.Stage || len(roles) == 1 {
		out := map[string]time.Time{}
		staged, err := r.updateOrStage(ctx, keys, r.renewFn(roles, out))
		if err != nil {
			return nil, nil, err
		}
		return out, staged, nil
	}
	var uniq []string // a role named twice is renewed once
	for _, role := range roles {
		if !slices.Contains(uniq, role) {
			uniq = append(uniq, role)
		}
	}
	roles = uniq
	out := map[string]time.Time{}
	_, err := r.updateTxn(ctx, keys, false, r.renewFn(roles, out))
	if err == nil {
		return out, nil, nil
	}
	if !errors.Is(err, ErrNeedsSignatures) {
		return nil, nil, err
	}
	// Each role on its own: those whose keys are here are published, the others staged.
	out = map[string]time.Time{}
	var staged *Staged
	var done []string
	for _, role := range roles {
		one := map[string]time.Time{}
		s, err := r.updateOrStage(ctx, keys, r.renewFn([]string{role}, one))
		if err != nil {
			if len(done) > 0 {
				err = fmt.Errorf("%w (already done: %s)", err, strings.Join(done, ", "))
			}
			return nil, nil, err
		}
		maps.Copy(out, one)
		if s == nil {
			done = append(done, role+" renewed")
			continue
		}
		done = append(done, role+" staged")
		if staged == nil {
			staged = &Staged{}
		}
		staged.Roles = append(staged.Roles, s.Roles...)
	}
	return out, staged, nil
}

// renewFn is the change that renews roles, their new expiries put in out.
func (r *Repo) renewFn(roles []string, out map[string]time.Time) func(t *txn) error {
	return func(t *txn) error {
		for _, role := range roles {
			if role == metadata.ROOT || role == metadata.SNAPSHOT || role == metadata.TIMESTAMP {
				return fmt.Errorf("renew %s: %w", role, errNotRenewable)
			}
			if _, ok := t.st.Targets[role]; !ok {
				return fmt.Errorf("renew: no role %q in this repository", role)
			}
			t.touch(role)
			out[role] = t.st.Targets[role].Signed.Expires
			t.record("renew", role, map[string]any{"version": t.st.Targets[role].Signed.Version, "expires": out[role]})
		}
		return nil
	}
}

// RenewDue renews (Renew) the delegated roles (models, runtimes) past half their
// lifetime, with keys: what a server that holds their keys (--sign-delegated) does
// beside Refresh, so that a catalogue nobody publishes to for the delegated lifetime
// (90 days by default) does not expire under the devices. It returns the roles renewed.
// A role whose threshold the keys do not meet is not renewed, never signed by fewer:
// the error names it and wraps ErrNeedsSignatures, and the other role is still renewed.
func (r *Repo) RenewDue(ctx context.Context, keys *KeyRing) ([]string, error) {
	st, err := r.Load(ctx)
	if err != nil {
		return nil, err
	}
	now, life := r.now(), r.expiry.forRole(RoleModels)
	var due []string
	for _, role := range delegatedNames() {
		if m, ok := st.Targets[role]; ok && m.Signed.Expires.Sub(now) < life/2 {
			due = append(due, role)
		}
	}
	if len(due) == 0 {
		return nil, nil
	}
	// One role at a time: a role whose threshold the keys here do not meet is refused
	// (ErrNeedsSignatures: its holders renew it with 'edgeward repo renew') and the
	// other is still renewed.
	var renewed []string
	var errs []error
	for _, role := range due {
		if _, err := r.Renew(ctx, []string{role}, keys); err != nil {
			errs = append(errs, fmt.Errorf("renew %s: %w", role, err))
			continue
		}
		renewed = append(renewed, role)
	}
	return renewed, errors.Join(errs...)
}

// errNotRenewable names the roles Renew does not: the root (renewed by the ceremony)
// and the online ones (renewed by Refresh, which the server runs).
var errNotRenewable = errors.New("renewed by 'edgeward root propose --expires' (root) or by the server (snapshot, timestamp), not here")
