package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/edgeward/edgeward/internal/durable"
)

// InitOptions configure a new repository. The zero value makes a 2-of-3 root with
// Ed25519 keys and default expiry; Passphrase is required.
type InitOptions struct {
	KeyType       KeyType
	RootKeys      int // number of root keys; 0: 3
	RootThreshold int // 0: 2
	// Passphrase encrypts the offline keys (root, targets, models, runtimes).
	Passphrase []byte
	// OfflineKeyDir receives the offline keys; "": DIR/keys/offline.
	OfflineKeyDir string
	Expiry        Expiry
	// Limits bound the metadata publishing may grow (see Limits); zero fields: defaults.
	Limits Limits
	// RootPublicKeys, if set, are the root keys: the public halves of keys the root
	// holders generated on their own machines. Init then makes no root key; it stages
	// root v1 unsigned at ProposalPath(1), and the holders sign it (SignRoot or
	// SignRootFile) and publish it (PublishRoot) like any other root change. RootKeys
	// must be 0 or len(RootPublicKeys).
	RootPublicKeys []*metadata.Key
}

// InitResult says what Init created.
type InitResult struct {
	Repo     *Repo
	KeyFiles map[string][]string // role → key files
	// RootProposal is the staged, unsigned root v1 when InitOptions.RootPublicKeys was
	// set ("" otherwise: root v1 is published, signed by the generated root keys).
	RootProposal string
}

// Init creates a repository in cfg.Dir: keys for every role, root (threshold
// RootThreshold of RootKeys), targets delegating models/* and probes/* to "models" and
// runtimes/* to "runtimes", empty delegated roles, snapshot and timestamp, all version 1,
// consistent snapshots on. It refuses a directory that already holds a repository.
func Init(ctx context.Context, cfg Config, opt InitOptions) (*InitResult, error) {
	if n := len(opt.RootPublicKeys); n > 0 {
		if opt.RootKeys != 0 && opt.RootKeys != n {
			return nil, fmt.Errorf("%d root keys asked for but %d holders' public keys given: drop the key count or give one public key per holder", opt.RootKeys, n)
		}
		opt.RootKeys = n
		seen := map[string]bool{}
		for _, k := range opt.RootPublicKeys {
			id, err := k.ID()
			if err != nil {
				return nil, fmt.Errorf("root public key: %w", err)
			}
			if seen[id] {
				return nil, fmt.Errorf("root public key %s given twice: each holder brings a distinct key", short(id))
			}
			seen[id] = true
		}
	}
	if opt.RootKeys == 0 {
		opt.RootKeys = 3
	}
	if opt.RootThreshold == 0 {
		opt.RootThreshold = 2
	}
	if opt.RootThreshold < 1 || opt.RootThreshold > opt.RootKeys {
		return nil, fmt.Errorf("root threshold %d of %d keys: want 1 <= threshold <= keys", opt.RootThreshold, opt.RootKeys)
	}
	if len(opt.Passphrase) == 0 {
		return nil, errors.New("a passphrase is needed to encrypt the offline keys")
	}
	r := newRepo(cfg)
	r.expiry = opt.Expiry.withDefaults()
	r.limits = opt.Limits.withDefaults()
	if err := r.limits.validate(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(r.path("edgeward-repo.json")); err == nil {
		return nil, fmt.Errorf("%s already holds a repository", cfg.Dir)
	}
	if unfinishedInit(r) {
		return nil, errUnfinishedInit(cfg.Dir)
	}
	offDir := opt.OfflineKeyDir
	if offDir == "" {
		offDir = r.OfflineKeyDir()
	}
	for _, d := range []string{offDir, r.OnlineKeyDir(), r.MetadataDir(), r.path("blobs", "sha256")} {
		if err := durable.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	if err := os.Chmod(r.MetadataDir(), 0o755); err != nil {
		return nil, err
	}

	res := &InitResult{Repo: r, KeyFiles: map[string][]string{}}
	keys := map[string][]*Key{}
	gen := func(role string, n int, online bool) error {
		for range n {
			k, err := GenerateKey(role, opt.KeyType, nil)
			if err != nil {
				return err
			}
			dir, pass := offDir, opt.Passphrase
			if online {
				dir, pass = r.OnlineKeyDir(), nil
			}
			path, err := WriteKeyFile(r.fs, dir, k, pass, cfg.KDF)
			if err != nil {
				return err
			}
			keys[role] = append(keys[role], k)
			res.KeyFiles[role] = append(res.KeyFiles[role], path)
		}
		return nil
	}
	steps := []struct {
		role   string
		n      int
		online bool
	}{
		{metadata.ROOT, rootToGenerate(opt), false},
		{metadata.TARGETS, 1, false},
		{RoleModels, 1, false},
		{RoleRuntimes, 1, false},
		{metadata.SNAPSHOT, 1, true},
		{metadata.TIMESTAMP, 1, true},
	}
	for _, s := range steps {
		if err := gen(s.role, s.n, s.online); err != nil {
			return nil, err
		}
	}
	// The audit log's checkpoint key is online too: the server signs checkpoints.
	auditKey, err := GenerateKey("audit", KeyEd25519, nil)
	if err != nil {
		return nil, err
	}
	if _, err := WriteKeyFile(r.fs, r.OnlineKeyDir(), auditKey, nil, KDFParams{}); err != nil {
		return nil, err
	}

	root := metadata.Root(r.expires(metadata.ROOT))
	root.Signed.ConsistentSnapshot = true
	for _, k := range opt.RootPublicKeys {
		if err := root.Signed.AddKey(k, metadata.ROOT); err != nil {
			return nil, fmt.Errorf("add a holder's root key: %w", err)
		}
	}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		for _, k := range keys[role] {
			if err := root.Signed.AddKey(k.Public, role); err != nil {
				return nil, fmt.Errorf("add %s key: %w", role, err)
			}
		}
	}
	root.Signed.Roles[metadata.ROOT].Threshold = opt.RootThreshold

	targets := metadata.Targets(r.expires(metadata.TARGETS))
	targets.Signed.Delegations = &metadata.Delegations{Keys: map[string]*metadata.Key{}}
	for _, role := range delegatedNames() {
		k := keys[role][0]
		targets.Signed.Delegations.Keys[k.ID()] = k.Public
		targets.Signed.Delegations.Roles = append(targets.Signed.Delegations.Roles, metadata.DelegatedRole{
			Name: role, KeyIDs: []string{k.ID()}, Threshold: 1, Terminating: true, Paths: delegatedPaths[role],
		})
	}
	snapshot := metadata.Snapshot(r.expires(metadata.SNAPSHOT))
	timestamp := metadata.Timestamp(r.expires(metadata.TIMESTAMP))

	if len(opt.RootPublicKeys) > 0 {
		// The holders sign root v1 offline; until they publish it the repository has no
		// root and Load says so.
		res.RootProposal = r.ProposalPath(1)
		data, err := root.ToBytes(true)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(res.RootProposal), 0o755); err != nil {
			return nil, err
		}
		if err := r.fs.WriteFile(res.RootProposal, data, 0o644); err != nil {
			return nil, fmt.Errorf("stage root v1: %w", err)
		}
	} else if err := writeMeta(r, "1.root.json", root, keys[metadata.ROOT]); err != nil {
		return nil, err
	}
	// The snapshot names each targets role by version, length and hash, the timestamp
	// the snapshot likewise (metaFileOf says why).
	data, err := signMeta("1.targets.json", targets, keys[metadata.TARGETS])
	if err != nil {
		return nil, err
	}
	if err := r.writeMetaBytes("1.targets.json", data); err != nil {
		return nil, err
	}
	snapshot.Signed.Meta[metadata.TARGETS+".json"] = metaFileOf(1, data)
	for _, role := range delegatedNames() {
		m := metadata.Targets(r.expires(role))
		file := "1." + role + ".json"
		data, err := signMeta(file, m, keys[role])
		if err != nil {
			return nil, err
		}
		if err := r.writeMetaBytes(file, data); err != nil {
			return nil, err
		}
		snapshot.Signed.Meta[role+".json"] = metaFileOf(1, data)
	}
	data, err = signMeta("1.snapshot.json", snapshot, keys[metadata.SNAPSHOT])
	if err != nil {
		return nil, err
	}
	if err := r.writeMetaBytes("1.snapshot.json", data); err != nil {
		return nil, err
	}
	timestamp.Signed.Meta["snapshot.json"] = metaFileOf(1, data)
	if err := writeMeta(r, "timestamp.json", timestamp, keys[metadata.TIMESTAMP]); err != nil {
		return nil, err
	}
	// Every role's key IDs: the log is where an auditor, after a theft, reads which key
	// signed what when; the models and runtimes keys were in no record until their first
	// rotation (found from outside, 2 Dec).
	keyIDs := map[string][]string{metadata.ROOT: root.Signed.Roles[metadata.ROOT].KeyIDs}
	for _, role := range append([]string{metadata.TARGETS, metadata.SNAPSHOT, metadata.TIMESTAMP}, delegatedNames()...) {
		for _, k := range keys[role] {
			keyIDs[role] = append(keyIDs[role], k.ID())
		}
	}
	// The settings file is written last: its presence means the repository is complete.
	if err := r.record(ctx, event{"init", cfg.Dir, map[string]any{
		"root_threshold": opt.RootThreshold, "root_keys": opt.RootKeys, "key_type": string(opt.KeyType),
		"root_key_ids": root.Signed.Roles[metadata.ROOT].KeyIDs, "root_keys_from_holders": len(opt.RootPublicKeys) > 0,
		"root_staged": res.RootProposal != "", "key_ids": keyIDs,
	}}); err != nil {
		return nil, err
	}
	data, _ = json.MarshalIndent(settings{Format: settingsFormat, Expiry: r.expiry, Limits: r.limits}, "", "  ")
	if err := r.fs.WriteFile(r.path("edgeward-repo.json"), data, 0o644); err != nil {
		return nil, err
	}
	return res, nil
}

// rootToGenerate is how many root keys Init makes itself: none when the holders brought
// their own.
func rootToGenerate(opt InitOptions) int {
	if len(opt.RootPublicKeys) > 0 {
		return 0
	}
	return opt.RootKeys
}

// unfinishedInit reports whether r's directory holds metadata without the settings file
// Init writes last (edgeward-repo.json): an Init that was killed or failed part way.
func unfinishedInit(r *Repo) bool {
	ents, _ := os.ReadDir(r.MetadataDir())
	return len(ents) > 0
}

// errUnfinishedInit says what to do with a directory an Init did not finish: neither
// the server nor Init would touch it, and neither said how out (found from outside,
// 2 Dec: 'repo init' killed after the metadata, before edgeward-repo.json).
func errUnfinishedInit(dir string) error {
	return fmt.Errorf("%s holds metadata but no edgeward-repo.json, which 'edgeward repo init' writes last: an init that did not finish (killed or failed part way). "+
		"Nothing can have been served or published from it: remove the directory (its metadata and keys; and --offline-keys' directory if one was given) and run 'edgeward repo init %s' again", dir, dir)
}
