package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
	"github.com/theupdateframework/go-tuf/v2/metadata/config"
	"github.com/theupdateframework/go-tuf/v2/metadata/updater"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/rollback"
)

// RootFile is the name of the pinned root in the metadata directory.
const RootFile = "root.json"

// PinRoot writes the root the device trusts, obtained at enrollment, as root.json in
// dir. It makes no request. Later refreshes rotate it only along the chain of roots each
// signed by its predecessor's threshold.
func PinRoot(dir string, root []byte) error {
	if err := durable.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pin root: %w", err)
	}
	if err := durable.WriteFile(filepath.Join(dir, RootFile), root, 0o600); err != nil {
		return fmt.Errorf("pin root: %w", err)
	}
	return nil
}

// TUFConfig configures a TUF client. MetadataDir and MetadataURL are required.
type TUFConfig struct {
	// MetadataDir holds the trusted metadata under unversioned names (root.json,
	// timestamp.json, snapshot.json, targets.json, delegated roles).
	MetadataDir string
	// MetadataURL is the repository's metadata base URL.
	MetadataURL string
	// TargetsURL is the repository's targets base URL. Empty means MetadataURL's sibling
	// "targets" directory.
	TargetsURL string
	// HTTPClient fetches metadata; nil means http.DefaultClient. Whatever its own
	// Timeout (the default client has none), each metadata request is bounded by
	// MetadataTimeout.
	HTTPClient *http.Client
	// MetadataTimeout bounds each metadata request, from connecting to the last byte of
	// the body: a server that accepts the connection and never answers fails the
	// refresh with ErrMetadataTimeout instead of hanging it. 0: DefaultMetadataTimeout.
	MetadataTimeout time.Duration
	// Now is the reference time for expiry checks, read once per refresh; nil means time.Now.
	Now func() time.Time
	// Downloader fetches targets; nil means a Downloader using HTTPClient.
	Downloader *Downloader
	// RootBackup, if set, is a file outside MetadataDir where the trusted root is kept
	// (synced) after each refresh, and from which a damaged root.json is restored.
	RootBackup string
	// Hardware is this device's class as targets list it ("x86_64", "aarch64"); a target
	// listing others is refused. Empty means the class of the running binary.
	Hardware string
	// MaxTargetsBytes bounds each targets role's metadata the device downloads
	// (targets.json, models.json, runtimes.json); a larger one fails the refresh with
	// ErrMetadataTooLarge. 0: go-tuf's default, 5,000,000 bytes (the repository refuses
	// to publish past its own, lower bound).
	MaxTargetsBytes int64
	// NoDeltas makes the slot fetcher always download full targets. By default it
	// builds a target from a delta when TUF lists one from the committed slot's content
	// (see SlotFetcher).
	NoDeltas bool
	// Logger receives what the client repairs on its own: a damaged local metadata file
	// discarded, a root restored from RootBackup or not written back. Nil: slog.Default().
	Logger *slog.Logger
}

// MaxRootBytes bounds a root.json read from a local file (the one pinned at
// enrollment): go-tuf's own bound on root metadata.
const MaxRootBytes = 512_000

// DefaultMetadataTimeout bounds a metadata request when TUFConfig.MetadataTimeout is 0.
const DefaultMetadataTimeout = 2 * time.Minute

// ErrMetadataTooLarge is returned when a metadata file is larger than the device
// accepts. For a targets role (targets.json, models.json, runtimes.json) the
// repository's catalogue has outgrown the device, and old versions must be retired
// before it can update again; root, timestamp and snapshot do not grow with the
// versions published, so an oversized one comes from a broken or hostile server.
var ErrMetadataTooLarge = errors.New("TUF metadata larger than this device accepts")

// ErrMetadataTimeout is returned when a metadata request got no complete answer within
// TUFConfig.MetadataTimeout. It also wraps context.DeadlineExceeded: the failure is
// Transient (the server, not the version).
var ErrMetadataTimeout = errors.New("TUF metadata server did not answer in time")

// TUF is the device's TUF client: go-tuf's updater, with targets streamed through
// Downloader and checked against what the trusted targets metadata says. It is not safe
// for concurrent use.
type TUF struct {
	cfg     TUFConfig
	up      *updater.Updater
	fetcher *metaFetcher
	dl      *Downloader

	// unreported holds, by target path, how a fetch made through the slot manager
	// directly came (its Recover resuming an interrupted install at start): nobody
	// asked, and the install's report takes it (takeFetched). A delta fallback after a
	// kill was reported as a plain full download (found from outside, 2 Dec).
	mu         sync.Mutex
	unreported map[string]FetchInfo

	// wrapApply, when set (tests), wraps the file a delta's apply writes its result to.
	wrapApply func(io.Writer) io.Writer
}

// noteFetched keeps info for the report of path's install (see unreported).
func (c *TUF) noteFetched(path string, info FetchInfo) {
	if info == (FetchInfo{}) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.unreported == nil {
		c.unreported = map[string]FetchInfo{}
	}
	c.unreported[path] = info
}

// takeFetched returns and forgets what noteFetched kept for path.
func (c *TUF) takeFetched(path string) (FetchInfo, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	info, ok := c.unreported[path]
	delete(c.unreported, path)
	return info, ok
}

// NewTUF loads the trusted root from cfg.MetadataDir. It makes no request and needs no
// write: a device whose disk is full (or read-only) still opens its state and serves.
// The one write it tries, restoring a damaged root.json from RootBackup, is logged
// when it fails and tried again at the next Refresh.
func NewTUF(cfg TUFConfig) (*TUF, error) {
	if cfg.MetadataDir == "" || cfg.MetadataURL == "" {
		return nil, errors.New("tuf: MetadataDir and MetadataURL are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	root, err := readRoot(cfg)
	if err != nil {
		return nil, err
	}
	if cfg.TargetsURL == "" {
		u, err := url.Parse(strings.TrimSuffix(cfg.MetadataURL, "/"))
		if err != nil {
			return nil, fmt.Errorf("tuf: metadata URL: %w", err)
		}
		u.Path = path.Join(path.Dir(u.Path), "targets")
		cfg.TargetsURL = u.String()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Hardware == "" {
		cfg.Hardware = artifact.HostHardware()
	}
	if cfg.MetadataTimeout <= 0 {
		cfg.MetadataTimeout = DefaultMetadataTimeout
	}
	client := cfg.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	dl := cfg.Downloader
	if dl == nil {
		dl = &Downloader{Client: client}
	}
	c := &TUF{cfg: cfg, fetcher: &metaFetcher{client: client, ctx: context.Background(), timeout: cfg.MetadataTimeout}, dl: dl}
	if err := c.load(root); err != nil {
		return nil, err
	}
	return c, nil
}

// load starts a new go-tuf updater from the trusted root: go-tuf's trusted set is built
// once per refresh, in the specification's order. It writes nothing.
//
// go-tuf's updater.New persists the root it is given, a write at every start that fails
// on a full disk (and kept the agent from starting there). root is what root.json holds
// (or what readRoot restored it from), so New runs with the local cache disabled and the
// cache is enabled once it returns: the updater keeps the *UpdaterConfig it was given,
// and persists every root, timestamp, snapshot and targets file Refresh verifies as
// before (TestTUFRefreshDownloadAndCache checks they are written).
func (c *TUF) load(root []byte) error {
	ucfg, err := config.New(c.cfg.MetadataURL, root)
	if err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	ucfg.Fetcher = c.fetcher
	ucfg.LocalMetadataDir = c.cfg.MetadataDir
	ucfg.LocalTargetsDir = c.cfg.MetadataDir // unused: targets never go through go-tuf's in-memory download
	ucfg.RemoteTargetsURL = c.cfg.TargetsURL
	if c.cfg.MaxTargetsBytes > 0 {
		ucfg.TargetsMaxLength = c.cfg.MaxTargetsBytes
	}
	c.fetcher.targetsMax, c.fetcher.snapshotMax = ucfg.TargetsMaxLength, ucfg.SnapshotMaxLength
	ucfg.DisableLocalCache = true // see above: New must not rewrite root.json
	up, err := updater.New(ucfg)
	if err != nil {
		return fmt.Errorf("tuf: trusted root in %s: %w", c.cfg.MetadataDir, err)
	}
	ucfg.DisableLocalCache = false
	c.up = up
	return nil
}

// Refresh updates the top-level metadata following the TUF client workflow (root
// rotations, timestamp, snapshot, targets), persisting each verified file.
func (c *TUF) Refresh(ctx context.Context) error {
	c.fetcher.ctx = ctx
	defer func() { c.fetcher.ctx = context.Background() }()
	root, err := readRoot(c.cfg)
	if err != nil {
		return err
	}
	if err := c.load(root); err != nil {
		return err
	}
	if err := c.discardDamaged([]string{metadata.TIMESTAMP, metadata.SNAPSHOT, metadata.TARGETS}); err != nil {
		return err
	}
	c.up.UnsafeSetRefTime(c.cfg.Now())
	if err := c.up.Refresh(); err != nil {
		return fmt.Errorf("tuf refresh from %s: %w", c.cfg.MetadataURL, err)
	}
	// The delegated roles (models, runtimes) are loaded later, by Target: the trusted
	// snapshot names them.
	var delegated []string
	for name := range c.up.GetTrustedMetadataSet().Snapshot.Signed.Meta {
		role := strings.TrimSuffix(name, ".json")
		switch role {
		case name, metadata.ROOT, metadata.TIMESTAMP, metadata.SNAPSHOT, metadata.TARGETS:
			// not a delegated role: the snapshot of some repositories (sigstore's) lists
			// root.json, which must never be parsed as targets and discarded.
			continue
		}
		delegated = append(delegated, role)
	}
	if err := c.discardDamaged(delegated); err != nil {
		return err
	}
	return c.persist()
}

// RootVersion is the version of the trusted root after the last refresh (0 before
// any).
func (c *TUF) RootVersion() int64 {
	if c.up == nil {
		return 0
	}
	ts := c.up.GetTrustedMetadataSet()
	if ts.Root == nil {
		return 0
	}
	return ts.Root.Signed.Version
}

// discardDamaged removes the local metadata files of roles that do not parse as their
// role's metadata (emptied or truncated by a crash, overwritten): go-tuf, which reads
// them before it downloads, treats a file that parses but does not verify as absent
// and fetches it again, but fails on one that does not parse, so a single damaged file
// failed every later refresh. Each file discarded is logged; it is fetched again,
// verified and persisted by the refresh that needs it.
//
// The trusted root is never discarded (readRoot restores it from RootBackup). What go-tuf
// protects with the local files is the rollback check of timestamp and snapshot (a newer
// file's version may not be lower): a file that does not parse has no version to
// protect, so discarding it loses nothing the damage had not already lost, and leaves
// the other files, and their versions, as they are. The anti-rollback floors of the
// installed versions are not TUF's: the slots keep them (TPM NV counters, mirrored in
// state.db) and refuse a target below them whatever the metadata says.
func (c *TUF) discardDamaged(roles []string) error {
	for _, role := range roles {
		p := filepath.Join(c.cfg.MetadataDir, url.PathEscape(role)+".json") // go-tuf's name for it
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err == nil {
			switch role {
			case metadata.TIMESTAMP:
				_, err = metadata.Timestamp().FromBytes(b)
			case metadata.SNAPSHOT:
				_, err = metadata.Snapshot().FromBytes(b)
			default:
				_, err = metadata.Targets().FromBytes(b)
			}
			if err == nil {
				continue
			}
		}
		c.cfg.Logger.Warn("discarding damaged TUF metadata; it is fetched again", "file", p, "role", role, "bytes", len(b), "err", err)
		if rerr := os.Remove(p); rerr != nil {
			return fmt.Errorf("tuf: discard damaged %s (%v): %w", p, err, rerr)
		}
	}
	return nil
}

// persist makes what go-tuf wrote durable (it renames without syncing) and, with
// RootBackup, keeps a synced copy of the trusted root outside the metadata directory.
func (c *TUF) persist() error {
	entries, err := os.ReadDir(c.cfg.MetadataDir)
	if err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		f, err := os.Open(filepath.Join(c.cfg.MetadataDir, e.Name()))
		if err != nil {
			return fmt.Errorf("tuf: %w", err)
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("tuf: sync %s: %w", e.Name(), err)
		}
	}
	if err := durable.SyncDir(c.cfg.MetadataDir); err != nil {
		return err
	}
	if c.cfg.RootBackup == "" {
		return nil
	}
	root, err := os.ReadFile(filepath.Join(c.cfg.MetadataDir, RootFile))
	trusted := c.up.GetTrustedMetadataSet().Root.Signed.Version
	if err == nil {
		var m *metadata.Metadata[metadata.RootType]
		if m, err = metadata.Root().FromBytes(root); err == nil && m.Signed.Version != trusted {
			err = fmt.Errorf("version %d", m.Signed.Version)
		}
	}
	if err != nil {
		// root.json is not the trusted root: it is damaged and could not be restored (a
		// full disk), and the trusted root is the backup's. Never copy it over the backup.
		c.cfg.Logger.Warn("root.json is not the trusted root; the root backup is kept as it is",
			"file", filepath.Join(c.cfg.MetadataDir, RootFile), "backup", c.cfg.RootBackup, "trusted_version", trusted, "err", err)
		return nil
	}
	if old, err := os.ReadFile(c.cfg.RootBackup); err == nil && string(old) == string(root) {
		return nil
	}
	return durable.WriteFile(c.cfg.RootBackup, root, 0o600)
}

// readRoot reads the trusted root, falling back to RootBackup when root.json is missing
// or damaged (a crash while go-tuf rewrote it). It writes the backup back to root.json;
// when that fails (a full disk) it logs it and returns the backup all the same, and the
// next call tries again.
func readRoot(cfg TUFConfig) ([]byte, error) {
	root, err := os.ReadFile(filepath.Join(cfg.MetadataDir, RootFile))
	if err == nil {
		if _, perr := metadata.Root().FromBytes(root); perr == nil {
			return root, nil
		} else {
			err = perr
		}
	}
	if cfg.RootBackup != "" {
		if b, berr := os.ReadFile(cfg.RootBackup); berr == nil {
			if _, perr := metadata.Root().FromBytes(b); perr == nil {
				p := filepath.Join(cfg.MetadataDir, RootFile)
				if werr := durable.WriteFile(p, b, 0o600); werr != nil {
					cfg.Logger.Warn("trusted root restored from its backup in memory only; root.json is written back at the next refresh",
						"file", p, "backup", cfg.RootBackup, "damage", err, "err", werr)
				}
				return b, nil
			}
		}
	}
	return nil, fmt.Errorf("tuf: read trusted root in %s (was the device enrolled?): %w", cfg.MetadataDir, err)
}

// Target returns the trusted targets entry for path, walking delegations as needed.
// Refresh must have succeeded first.
func (c *TUF) Target(ctx context.Context, targetPath string) (*metadata.TargetFiles, error) {
	c.fetcher.ctx = ctx
	defer func() { c.fetcher.ctx = context.Background() }()
	// go-tuf keeps each delegated role it loaded by name and returns it to later lookups
	// without verifying it against the delegator of the current search path (go-tuf
	// loadTargets): with two delegators of one role name, a role signed for the first
	// was trusted for the second's paths (tuf-conformance
	// test_cached_role_is_verified_against_current_delegator, which go-tuf's own client
	// lists as failing). A loaded role is kept from one lookup to the next only while
	// exactly one loaded role delegates to it: it was verified against that delegator,
	// which has not changed since (the set lives as long as the refresh). When a lookup
	// leaves some role with two delegators, or with none, the lookup runs again with
	// every delegated role forgotten, so that each is verified against the delegator of
	// its path, from the local files (fetched only when they do not verify). Forgetting
	// them at every lookup instead re-parsed and re-verified each role per lookup: 0.2 s
	// per lookup for a 1.2 MB role of 10,000 targets on the bench VM, 2-12 µs now after
	// the first. The map is the updater's own
	// (GetTrustedMetadataSet copies the struct, not the map);
	// TestDelegatedRoleVerifiedAgainstItsDelegator and TestDelegatedRolesKeptBetweenLookups
	// pin that.
	trusted := c.up.GetTrustedMetadataSet().Targets
	clean := len(trusted) <= 1 || !singlyDelegated(trusted) // nothing kept, or kept in doubt
	if clean {
		forgetDelegated(trusted)
	}
	tf, err := c.up.GetTargetInfo(targetPath)
	if !clean && !singlyDelegated(trusted) {
		forgetDelegated(trusted)
		tf, err = c.up.GetTargetInfo(targetPath)
	}
	if err != nil {
		var typed interface{ Is(error) bool }
		if !errors.As(err, &typed) && strings.HasSuffix(err.Error(), " not found") {
			// go-tuf says so in an untyped error; every other failure it types.
			return nil, fmt.Errorf("tuf target %s: %w: %w", targetPath, ErrNotListed, err)
		}
		return nil, fmt.Errorf("tuf target %s: %w", targetPath, err)
	}
	return tf, nil
}

// singlyDelegated reports whether every delegated role in the trusted set is delegated
// to by exactly one entry of the roles loaded with it (top-level targets included): a
// role kept from an earlier lookup is then the one its only delegator verified.
func singlyDelegated(trusted map[string]*metadata.Metadata[metadata.TargetsType]) bool {
	for role := range trusted {
		if role == metadata.TARGETS {
			continue
		}
		n := 0
		for _, delegator := range trusted {
			d := delegator.Signed.Delegations
			if d == nil {
				continue
			}
			for _, r := range d.Roles {
				if r.Name == role {
					n++
				}
			}
			if d.SuccinctRoles != nil && d.SuccinctRoles.IsDelegatedRole(role) {
				n++
			}
		}
		if n != 1 {
			return false
		}
	}
	return true
}

// forgetDelegated removes every delegated role from the trusted set, so that the next
// lookup loads and verifies each along its own path.
func forgetDelegated(trusted map[string]*metadata.Metadata[metadata.TargetsType]) {
	for role := range trusted {
		if role != metadata.TARGETS {
			delete(trusted, role)
		}
	}
}

// ErrNotListed wraps the error of a target that the verified metadata does not list.
// The metadata fetched may be behind the server that asked for it (a mirror not yet
// refreshed), so it is NotCurrent: retried, not burnt.
var ErrNotListed = errors.New("not listed in the repository's verified metadata")

// URL is where the target's bytes are fetched: with consistent snapshots, its file name
// is prefixed with a hash (sha256 when listed).
func (c *TUF) URL(tf *metadata.TargetFiles) string {
	return c.url(tf.Path, tf.Hashes)
}

func (c *TUF) url(targetPath string, hashes metadata.Hashes) string {
	remote := targetPath
	if c.up.GetTrustedMetadataSet().Root.Signed.ConsistentSnapshot && len(hashes) > 0 {
		h := map[string][]byte{}
		for k, v := range hashes {
			h[k] = v
		}
		prefix := hex.EncodeToString(hashes[sortedHashes(h)[0]])
		dir, base := path.Split(targetPath)
		remote = dir + prefix + "." + base
	}
	return strings.TrimSuffix(c.cfg.TargetsURL, "/") + "/" + remote
}

// WantOf is what TUF says about a target.
func WantOf(tf *metadata.TargetFiles) Want {
	w := Want{Length: tf.Length, Hashes: map[string][]byte{}}
	for k, v := range tf.Hashes {
		w.Hashes[k] = v
	}
	return w
}

// Download makes dst hold the target tf describes. If dst already holds it (length and
// every supported hash match), nothing is fetched and cached is true.
func (c *TUF) Download(ctx context.Context, tf *metadata.TargetFiles, dst string) (cached bool, err error) {
	want := WantOf(tf)
	if ok, err := fileMatches(dst, want); err == nil && ok {
		return true, nil
	}
	return false, c.dl.Download(ctx, c.URL(tf), want, dst)
}

// fileMatches reports whether the file at p has want's length and hashes, reading it
// with a fixed buffer.
func fileMatches(p string, want Want) (bool, error) {
	_, ok, err := matchFile(p, want)
	return ok, err
}

// fileMatchesStat is fileMatches that also returns the file's os.FileInfo, taken before
// it was read (a file changed while it was read does not match it any more).
func fileMatchesStat(p string, want Want) (os.FileInfo, bool) {
	fi, ok, err := matchFile(p, want)
	return fi, ok && err == nil
}

func matchFile(p string, want Want) (os.FileInfo, bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, false, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, false, err
	}
	hs, err := newHashers(want)
	if err != nil {
		return nil, false, err
	}
	ws := make([]io.Writer, 0, len(hs))
	for _, h := range hs {
		ws = append(ws, h)
	}
	n, err := io.CopyBuffer(io.MultiWriter(ws...), io.LimitReader(f, want.Length+1), make([]byte, 64<<10))
	if err != nil || n != want.Length {
		return nil, false, err
	}
	for alg, h := range hs {
		if !equalBytes(h.Sum(nil), want.Hashes[alg]) {
			return nil, false, nil
		}
	}
	return fi, true, nil
}

// Resolve turns a target path into what the slots install: it looks the target up in
// trusted metadata, reads its Edgeward metadata (kind, version) and requires a sha256.
// The returned Target carries the anti-rollback floor of its version.
func (c *TUF) Resolve(ctx context.Context, kind artifact.Kind, targetPath string) (rollback.Target, artifact.Meta, error) {
	tf, err := c.Target(ctx, targetPath)
	if err != nil {
		return rollback.Target{}, artifact.Meta{}, err
	}
	t, meta, err := TargetOf(kind, tf)
	if err != nil {
		return t, meta, err
	}
	if hw := c.cfg.Hardware; len(meta.Hardware) > 0 && !slices.Contains(meta.Hardware, hw) {
		return t, meta, fmt.Errorf("target %s is built for %v, not for this device (%s)", targetPath, meta.Hardware, hw)
	}
	return t, meta, nil
}

// TargetOf checks a trusted targets entry against the slot kind and returns what the
// slots install.
func TargetOf(kind artifact.Kind, tf *metadata.TargetFiles) (rollback.Target, artifact.Meta, error) {
	var meta artifact.Meta
	if tf.Custom == nil {
		return rollback.Target{}, meta, fmt.Errorf("target %s: no Edgeward metadata in its custom field", tf.Path)
	}
	if err := json.Unmarshal(*tf.Custom, &meta); err != nil {
		return rollback.Target{}, meta, fmt.Errorf("target %s: custom metadata: %w", tf.Path, err)
	}
	if err := meta.Validate(); err != nil {
		return rollback.Target{}, meta, fmt.Errorf("target %s: %w", tf.Path, err)
	}
	if meta.Kind != kind {
		return rollback.Target{}, meta, fmt.Errorf("target %s is a %s, not a %s", tf.Path, meta.Kind, kind)
	}
	pk, pn, pv, err := artifact.ParseTargetPath(tf.Path)
	if err != nil {
		return rollback.Target{}, meta, err
	}
	if pk != meta.Kind || pn != meta.Name || pv != meta.Version {
		return rollback.Target{}, meta, fmt.Errorf("target %s: path says %s %s %s, metadata says %s %s %s", tf.Path, pk, pn, pv, meta.Kind, meta.Name, meta.Version)
	}
	v, _ := artifact.ParseVersion(meta.Version)
	floor, err := v.Floor()
	if err != nil {
		return rollback.Target{}, meta, err
	}
	sum, ok := tf.Hashes["sha256"]
	if !ok || len(sum) != sha256.Size {
		return rollback.Target{}, meta, fmt.Errorf("target %s: no sha256 hash", tf.Path)
	}
	return rollback.Target{Path: tf.Path, Version: meta.Version, Floor: floor, Length: tf.Length, SHA256: hex.EncodeToString(sum)}, meta, nil
}

// SlotFetcher returns the rollback.Fetcher that streams a resolved Target into a slot.
// It trusts only the Target's length and sha256, which Resolve took from TUF and the
// slot state persisted, so an interrupted install resumes even before the next refresh.
//
// When the other slot of the kind (the committed one) hashes to the base of a delta TUF
// lists for the target (artifact.DeltaPath), it downloads the delta instead (resumable,
// with Range) and builds the target from it and the base, checked against the target's
// sha256 and length before it is renamed into the slot. Any failure of that path (no
// base, a corrupt delta, a result that does not hash, an apply interrupted by a crash)
// falls back to the full target.
func (c *TUF) SlotFetcher() rollback.Fetcher { return slotFetcher{c} }

type slotFetcher struct{ c *TUF }

func (f slotFetcher) Fetch(ctx context.Context, t rollback.Target, dst string) error {
	info, _, err := f.fetch(ctx, t, dst)
	f.c.noteFetched(t.Path, info)
	return err
}

// FetchProven is Fetch with the proof that it hashed every byte of dst in this call,
// downloading or building it from a delta (none for a download resumed from a
// checkpoint an earlier process wrote).
func (f slotFetcher) FetchProven(ctx context.Context, t rollback.Target, dst string) (rollback.Proof, error) {
	info, p, err := f.fetch(ctx, t, dst)
	f.c.noteFetched(t.Path, info)
	return p, err
}

// fetchInfo is FetchProven that also says how the target came (see FetchInfo).
func (f slotFetcher) fetchInfo(ctx context.Context, t rollback.Target, dst string) (FetchInfo, rollback.Proof, error) {
	return f.fetch(ctx, t, dst)
}

// metaFetcher implements go-tuf's fetcher.Fetcher with a context, a deadline on every
// request and bounded reads.
type metaFetcher struct {
	client *http.Client
	ctx    context.Context
	// timeout bounds each request when go-tuf gives none (it passes 0).
	timeout time.Duration
	// targetsMax is the device's own bound on a targets role (go-tuf's
	// TargetsMaxLength). go-tuf asks for less when the snapshot names the role's
	// length: a longer file is then not the one signed, however small.
	targetsMax int64
	// snapshotMax is the device's bound on the snapshot (go-tuf's SnapshotMaxLength).
	snapshotMax int64
}

// bound is the device's own bound on the metadata file at urlPath: targetsMax for a
// targets role, snapshotMax for the snapshot, 0 (go-tuf's, passed as it is) for root
// and timestamp.
func (f *metaFetcher) bound(urlPath string) int64 {
	switch metadataRole(path.Base(urlPath)) {
	case metadata.ROOT, metadata.TIMESTAMP:
		return 0
	case metadata.SNAPSHOT:
		return f.snapshotMax
	}
	return f.targetsMax
}

// DownloadFile fetches urlPath, at most maxLength bytes, within timeout (the fetcher's
// own when timeout is 0): the request and the whole body must arrive before it.
func (f *metaFetcher) DownloadFile(urlPath string, maxLength int64, timeout time.Duration) ([]byte, error) {
	if timeout <= 0 {
		timeout = f.timeout
	}
	// go-tuf asks for a targets role at the length the snapshot names, and for the
	// snapshot at the length the timestamp names, with no bound of its own: a role
	// larger than the device's bound was downloaded whole, and a stolen online key
	// could name any length (found in review, 2 Dec). The device's bound holds still.
	if b := f.bound(urlPath); b > 0 && maxLength > b {
		maxLength = b
	}
	timedOut := fmt.Errorf("%w: %s: no complete answer within %v: %w", ErrMetadataTimeout, urlPath, timeout, context.DeadlineExceeded)
	ctx, cancel := context.WithTimeoutCause(f.ctx, timeout, timedOut)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, urlPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
		if context.Cause(ctx) == timedOut {
			return nil, timedOut
		}
		if u := untrusted(err); u != err {
			// Kept as a chain (go-tuf passes fetch errors through) so callers can test it.
			return nil, fmt.Errorf("%s: %w", urlPath, u)
		}
		return nil, &metadata.ErrDownload{Msg: err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &metadata.ErrDownloadHTTP{StatusCode: resp.StatusCode, URL: urlPath}
	}
	if resp.ContentLength > maxLength {
		return nil, f.tooLarge(urlPath, resp.ContentLength, maxLength)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		if context.Cause(ctx) == timedOut {
			return nil, timedOut
		}
		return nil, &metadata.ErrDownload{Msg: fmt.Sprintf("%s: %v", urlPath, err)}
	}
	if int64(len(b)) > maxLength {
		return nil, f.tooLarge(urlPath, -1, maxLength)
	}
	return b, nil
}

// tooLarge is the error for a metadata file at urlPath longer than max: tooLarge's, or,
// for a targets role asked for with less than the device's bound, a length mismatch:
// the snapshot names the role's length (Edgeward's repository does since 2 Dec), so
// the file is not the one signed, whatever its size. It was reported as the catalogue
// outgrowing the device (metadata_too_large, "retire old versions"), which sent
// operators to retire versions for a mirror's tampering (found from outside, 2 Dec).
func (f *metaFetcher) tooLarge(urlPath string, announced, max int64) error {
	name := path.Base(urlPath)
	switch metadataRole(name) {
	case metadata.ROOT, metadata.TIMESTAMP, metadata.SNAPSHOT:
	default:
		if f.targetsMax > 0 && max < f.targetsMax {
			got := fmt.Sprintf("announces %d bytes", announced)
			if announced < 0 {
				got = fmt.Sprintf("sends more than %d bytes", max)
			}
			return &metadata.ErrLengthOrHashMismatch{Msg: fmt.Sprintf(
				"%s %s but the snapshot names it with %d: it is not the file the repository signed, so the server or mirror sending it is broken or hostile; the device keeps the metadata it trusts and tries again (%s)",
				name, got, max, urlPath)}
		}
	}
	return tooLarge(urlPath, announced, max)
}

// tooLarge is go-tuf's length error, also ErrMetadataTooLarge, saying what to do about
// the file at urlPath: announced is the length its server announced, -1 when the body
// ran past max. Only a targets role grows with the catalogue; an oversized root,
// timestamp or snapshot comes from a broken or hostile server.
func tooLarge(urlPath string, announced, max int64) error {
	name := path.Base(urlPath)
	what := fmt.Sprintf("%s announces %d bytes, more than the %d allowed", name, announced, max)
	if announced < 0 {
		what = fmt.Sprintf("%s sends more than the %d bytes allowed", name, max)
	}
	advice := "the repository must retire old versions ('edgeward retire') before this device can update"
	switch role := metadataRole(name); role {
	case metadata.ROOT, metadata.TIMESTAMP, metadata.SNAPSHOT:
		advice = fmt.Sprintf("%s.json does not grow with the versions published, so the server or mirror sending it is broken or hostile; the device keeps the metadata it trusts and tries again", role)
	}
	return fmt.Errorf("%w: %s; %s: %w", ErrMetadataTooLarge, what, advice, &metadata.ErrDownloadLengthMismatch{Msg: urlPath})
}

// metadataRole is the role of a metadata file name: "timestamp" for timestamp.json,
// "models" for 12.models.json (a consistent snapshot's version prefix).
func metadataRole(name string) string {
	name = strings.TrimSuffix(name, ".json")
	if v, rest, ok := strings.Cut(name, "."); ok && v != "" && strings.Trim(v, "0123456789") == "" {
		return rest
	}
	return name
}
