package updater

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
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
	if err := os.MkdirAll(dir, 0o700); err != nil {
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
	// HTTPClient fetches metadata; nil means http.DefaultClient.
	HTTPClient *http.Client
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
}

// ErrMetadataTooLarge is returned when a metadata file is larger than the device
// accepts: the repository's catalogue has outgrown it, and old versions must be retired
// before this device can update again.
var ErrMetadataTooLarge = errors.New("TUF metadata larger than this device accepts")

// TUF is the device's TUF client: go-tuf's updater, with targets streamed through
// Downloader and checked against what the trusted targets metadata says. It is not safe
// for concurrent use.
type TUF struct {
	cfg     TUFConfig
	up      *updater.Updater
	fetcher *metaFetcher
	dl      *Downloader
}

// NewTUF loads the trusted root from cfg.MetadataDir. It makes no request.
func NewTUF(cfg TUFConfig) (*TUF, error) {
	if cfg.MetadataDir == "" || cfg.MetadataURL == "" {
		return nil, errors.New("tuf: MetadataDir and MetadataURL are required")
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
	client := cfg.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	dl := cfg.Downloader
	if dl == nil {
		dl = &Downloader{Client: client}
	}
	c := &TUF{cfg: cfg, fetcher: &metaFetcher{client: client, ctx: context.Background()}, dl: dl}
	if err := c.load(root); err != nil {
		return nil, err
	}
	return c, nil
}

// load starts a new go-tuf updater from the trusted root: go-tuf's trusted set is built
// once per refresh, in the specification's order.
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
	up, err := updater.New(ucfg)
	if err != nil {
		return fmt.Errorf("tuf: trusted root in %s: %w", c.cfg.MetadataDir, err)
	}
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
	c.up.UnsafeSetRefTime(c.cfg.Now())
	if err := c.up.Refresh(); err != nil {
		return fmt.Errorf("tuf refresh from %s: %w", c.cfg.MetadataURL, err)
	}
	return c.persist()
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
	if err != nil {
		return fmt.Errorf("tuf: %w", err)
	}
	if old, err := os.ReadFile(c.cfg.RootBackup); err == nil && string(old) == string(root) {
		return nil
	}
	return durable.WriteFile(c.cfg.RootBackup, root, 0o600)
}

// readRoot reads the trusted root, falling back to RootBackup when root.json is missing
// or damaged (a crash while go-tuf rewrote it).
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
				if werr := durable.WriteFile(filepath.Join(cfg.MetadataDir, RootFile), b, 0o600); werr != nil {
					return nil, fmt.Errorf("tuf: restore trusted root: %w", werr)
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
	tf, err := c.up.GetTargetInfo(targetPath)
	if err != nil {
		return nil, fmt.Errorf("tuf target %s: %w", targetPath, err)
	}
	return tf, nil
}

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
	_, _, err := f.fetch(ctx, t, dst)
	return err
}

// FetchProven is Fetch with the proof that it hashed every byte of dst in this call,
// downloading or building it from a delta (none for a download resumed from a
// checkpoint an earlier process wrote).
func (f slotFetcher) FetchProven(ctx context.Context, t rollback.Target, dst string) (rollback.Proof, error) {
	_, p, err := f.fetch(ctx, t, dst)
	return p, err
}

// fetchInfo is FetchProven that also says how the target came (see FetchInfo).
func (f slotFetcher) fetchInfo(ctx context.Context, t rollback.Target, dst string) (FetchInfo, rollback.Proof, error) {
	return f.fetch(ctx, t, dst)
}

// metaFetcher implements go-tuf's fetcher.Fetcher with a context and bounded reads.
type metaFetcher struct {
	client *http.Client
	ctx    context.Context
}

func (f *metaFetcher) DownloadFile(urlPath string, maxLength int64, _ time.Duration) ([]byte, error) {
	req, err := http.NewRequestWithContext(f.ctx, http.MethodGet, urlPath, nil)
	if err != nil {
		return nil, err
	}
	resp, err := f.client.Do(req)
	if err != nil {
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
		return nil, tooLarge(urlPath, fmt.Sprintf("%d bytes announced", resp.ContentLength), maxLength)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxLength+1))
	if err != nil {
		return nil, &metadata.ErrDownload{Msg: fmt.Sprintf("%s: %v", urlPath, err)}
	}
	if int64(len(b)) > maxLength {
		return nil, tooLarge(urlPath, "longer", maxLength)
	}
	return b, nil
}

// tooLarge is go-tuf's length error, also ErrMetadataTooLarge, saying what to do.
func tooLarge(urlPath, what string, max int64) error {
	return fmt.Errorf("%w: %s: %s than the %d bytes allowed; the repository must retire old versions ('edgeward retire') before this device can update: %w",
		ErrMetadataTooLarge, path.Base(urlPath), what, max, &metadata.ErrDownloadLengthMismatch{Msg: urlPath})
}
