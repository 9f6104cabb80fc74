package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrThreshold is returned when a proposed root lacks the signatures it needs.
var ErrThreshold = errors.New("signature threshold not met")

// ErrRootPending is returned by Load while root v1, made from the holders' public keys
// by Init, waits for their signatures.
var ErrRootPending = errors.New("the first root is not published yet")

// RootChange describes a new root version. Zero fields change nothing.
type RootChange struct {
	AddKeys    map[string][]*metadata.Key // role → keys to add
	RevokeKeys map[string][]string        // role → key IDs to remove
	Thresholds map[string]int             // role → new threshold
	Expires    time.Duration              // lifetime of the new root; 0: the repository's
	// Replace discards a proposal already staged for the next version (and any
	// signatures it gathered); without it ProposeRoot refuses (ErrProposalPending).
	Replace bool
}

// ErrProposalPending refuses a new root proposal (or a key rotation, which proposes one)
// while another for the same version is staged: writing over it lost the change and the
// signatures it gathered, and a holder signing later endorsed what they did not review
// (found from outside, 2 Dec).
var ErrProposalPending = errors.New("a root proposal is pending")

// pendingProposal refuses with ErrProposalPending when a proposal for root version v
// is staged.
func (r *Repo) pendingProposal(v int64) error {
	path := r.ProposalPath(v)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the staged proposal: %w", err)
	}
	sigs := 0
	if m, err := metadata.Root().FromBytes(data); err == nil {
		sigs = len(m.Signatures)
	}
	return fmt.Errorf("%w for root v%d (%s, %d signature(s)): publish it with 'edgeward root publish', or discard it with 'edgeward root propose --replace …'", ErrProposalPending, v, path, sigs)
}

// ProposalPath is where the proposal for root version v is staged.
func (r *Repo) ProposalPath(v int64) string {
	return r.path("staged", "root", fmt.Sprintf("%d.root.json", v))
}

// ProposeRoot writes an unsigned root, one version above the current one, with the
// change applied, to the staging area, and returns its path. Key holders then sign it
// with SignRoot (each on their own machine, passing the file around) and PublishRoot
// makes it current once the old and the new root's thresholds are both met.
func (r *Repo) ProposeRoot(ctx context.Context, ch RootChange) (string, error) {
	st, err := r.Load(ctx)
	if err != nil {
		return "", err
	}
	next, err := metadata.Root().FromBytes(mustBytes(st.Root))
	if err != nil {
		return "", err
	}
	next.ClearSignatures()
	next.Signed.Version++
	life := ch.Expires
	if life == 0 {
		life = r.expiry.Root
	}
	if life < 0 {
		return "", fmt.Errorf("a root that expires %s ago: want a positive lifetime", -life)
	}
	next.Signed.Expires = r.now().UTC().Add(life).Truncate(time.Second)
	for role, ids := range ch.RevokeKeys {
		for _, id := range ids {
			if err := next.Signed.RevokeKey(id, role); err != nil {
				return "", fmt.Errorf("revoke %s key %s: %w", role, short(id), err)
			}
		}
	}
	for role, keys := range ch.AddKeys {
		for _, k := range keys {
			if err := next.Signed.AddKey(k, role); err != nil {
				return "", fmt.Errorf("add %s key: %w", role, err)
			}
		}
	}
	for role, n := range ch.Thresholds {
		rr, ok := next.Signed.Roles[role]
		if !ok {
			return "", fmt.Errorf("threshold for unknown role %q", role)
		}
		rr.Threshold = n
	}
	for name, rr := range next.Signed.Roles {
		if rr.Threshold < 1 || rr.Threshold > len(rr.KeyIDs) {
			return "", fmt.Errorf("role %s would need %d of %d keys: want 1 <= threshold <= keys", name, rr.Threshold, len(rr.KeyIDs))
		}
	}
	path := r.ProposalPath(next.Signed.Version)
	if !ch.Replace {
		if err := r.pendingProposal(next.Signed.Version); err != nil {
			return "", err
		}
	}
	data, err := next.ToBytes(true)
	if err != nil {
		return "", err
	}
	data2 := rootChangeData(&st.Root.Signed, &next.Signed)
	data2["proposal"] = path
	data2["expires"] = next.Signed.Expires
	if err := r.record(ctx, event{"root.propose", fmt.Sprintf("root v%d", next.Signed.Version), data2}); err != nil {
		return "", err
	}
	if err := r.fs.WriteFile(path, data, 0o644); err != nil {
		return "", fmt.Errorf("write proposal (recorded as proposed): %w", err)
	}
	return path, nil
}

func mustBytes[T metadata.Roles](m *metadata.Metadata[T]) []byte {
	b, err := m.ToBytes(false)
	if err != nil {
		panic(err) // metadata that was just parsed always encodes
	}
	return b
}

// SignRootFile adds key's signature to the proposed root in file. The key must be a root
// key of the proposal or of current, the root before it (old keys sign a rotation away
// from them); a key that is neither is refused and the file left as it was: its
// signature would count toward no threshold while the holder believed it did. current
// nil means the root before it is not at hand: then only the proposal's own root keys
// sign (a root v1 has none before it). It works on the file alone: a key holder needs
// nothing else of the repository. It returns the key IDs that have signed.
func SignRootFile(fsys FS, path string, key *Key, current *metadata.RootType) ([]string, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	prop, err := ReadProposal(path)
	if err != nil {
		return nil, err
	}
	id := key.ID()
	next := prop.Signed.Version
	if current != nil && current.Version != next-1 {
		return nil, fmt.Errorf("the current root given is v%d; the proposal is root v%d, which follows v%d", current.Version, next, next-1)
	}
	if !slices.Contains(prop.Signed.Roles[metadata.ROOT].KeyIDs, id) {
		switch {
		case current != nil && !slices.Contains(current.Roles[metadata.ROOT].KeyIDs, id):
			return nil, fmt.Errorf("key %s is not a root key of v%d or v%d: its signature would count for neither", short(id), next-1, next)
		case current == nil && next == 1:
			return nil, fmt.Errorf("key %s is not a root key of root v1", short(id))
		case current == nil:
			return nil, fmt.Errorf("key %s is not a root key of the proposed root v%d; a key of v%d that v%d drops signs with the root now in force at hand (--current FILE, a copy of %d.root.json, or in the repository)", short(id), next, next-1, next, next-1)
		}
	}
	sigs := prop.Signatures[:0]
	for _, s := range prop.Signatures {
		if s.KeyID != id {
			sigs = append(sigs, s)
		}
	}
	prop.Signatures = sigs
	signer, err := key.Signer()
	if err != nil {
		return nil, err
	}
	if _, err := prop.Sign(signer); err != nil {
		return nil, fmt.Errorf("sign proposal: %w", err)
	}
	out, err := prop.ToBytes(true)
	if err != nil {
		return nil, err
	}
	if err := fsys.WriteFile(path, out, 0o644); err != nil {
		return nil, fmt.Errorf("write proposal: %w", err)
	}
	var ids []string
	for _, s := range prop.Signatures {
		ids = append(ids, s.KeyID)
	}
	return ids, nil
}

// SignRoot signs the staged proposal for the next root version with key, refusing a key
// that is a root key of neither the current root nor the proposal.
func (r *Repo) SignRoot(ctx context.Context, key *Key) (string, []string, error) {
	cur, err := r.currentRoot(ctx)
	if err != nil {
		return "", nil, err
	}
	var curVersion int64
	var curKeys []string
	if cur != nil {
		curVersion, curKeys = cur.Signed.Version, cur.Signed.Roles[metadata.ROOT].KeyIDs
	}
	path := r.ProposalPath(curVersion + 1)
	data, err := os.ReadFile(path)
	if err != nil {
		return "", nil, fmt.Errorf("no proposal for root v%d (run 'edgeward root propose'): %w", curVersion+1, err)
	}
	prop, err := metadata.Root().FromBytes(data)
	if err != nil {
		return "", nil, &MetadataError{File: path, Err: err}
	}
	id := key.ID()
	if !slices.Contains(curKeys, id) && !slices.Contains(prop.Signed.Roles[metadata.ROOT].KeyIDs, id) {
		return "", nil, fmt.Errorf("key %s is not a root key of v%d or v%d", short(id), curVersion, prop.Signed.Version)
	}
	if err := r.record(ctx, event{"root.sign", fmt.Sprintf("root v%d", prop.Signed.Version), map[string]any{"version": prop.Signed.Version, "key": id, "proposal": path}}); err != nil {
		return "", nil, err
	}
	var curRoot *metadata.RootType
	if cur != nil {
		curRoot = &cur.Signed
	}
	ids, err := SignRootFile(r.fs, path, key, curRoot)
	return path, ids, err
}

// currentRoot is the published root, verified by Load, or nil while root v1 is staged
// for its holders (ErrRootPending).
func (r *Repo) currentRoot(ctx context.Context) (*metadata.Metadata[metadata.RootType], error) {
	st, err := r.Load(ctx)
	if errors.Is(err, ErrRootPending) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return st.Root, nil
}

// rootChangeData describes, for the audit log, what going from cur (nil: nothing) to
// next changes: the keys added and revoked per role and every role's threshold.
func rootChangeData(cur, next *metadata.RootType) map[string]any {
	added, revoked := map[string][]string{}, map[string][]string{}
	thresholds := map[string]int{}
	for role, rr := range next.Roles {
		thresholds[role] = rr.Threshold
		var old []string
		if cur != nil && cur.Roles[role] != nil {
			old = cur.Roles[role].KeyIDs
		}
		for _, id := range rr.KeyIDs {
			if !slices.Contains(old, id) {
				added[role] = append(added[role], id)
			}
		}
		for _, id := range old {
			if !slices.Contains(rr.KeyIDs, id) {
				revoked[role] = append(revoked[role], id)
			}
		}
	}
	d := map[string]any{"version": next.Version, "keys_added": added, "keys_revoked": revoked, "thresholds": thresholds}
	if cur != nil {
		old := map[string]int{}
		for role, rr := range cur.Roles {
			old[role] = rr.Threshold
		}
		d["previous_thresholds"] = old
	}
	return d
}

// rootSigners are the key IDs whose signatures on prop verify and that are root keys of
// prop or of cur (nil for root v1).
func rootSigners(cur, prop *metadata.Metadata[metadata.RootType]) []string {
	var out []string
	for _, s := range prop.Signatures {
		var k *metadata.Key
		if cur != nil && slices.Contains(cur.Signed.Roles[metadata.ROOT].KeyIDs, s.KeyID) {
			k = cur.Signed.Keys[s.KeyID]
		} else if slices.Contains(prop.Signed.Roles[metadata.ROOT].KeyIDs, s.KeyID) {
			k = prop.Signed.Keys[s.KeyID]
		}
		if k == nil || slices.Contains(out, s.KeyID) {
			continue
		}
		one := metadata.Root()
		one.Signed.Keys = map[string]*metadata.Key{s.KeyID: k}
		one.Signed.Roles[metadata.ROOT] = &metadata.Role{KeyIDs: []string{s.KeyID}, Threshold: 1}
		if one.VerifyDelegate(metadata.ROOT, prop) == nil {
			out = append(out, s.KeyID)
		}
	}
	return out
}

// thresholdMet counts the proposal's valid signatures by the root keys of signer and
// returns an ErrThreshold error saying how many are missing.
func thresholdMet(which string, signer, prop *metadata.Metadata[metadata.RootType]) error {
	err := signer.VerifyDelegate(metadata.ROOT, prop)
	if err == nil {
		return nil
	}
	role := signer.Signed.Roles[metadata.ROOT]
	have := 0
	for _, s := range prop.Signatures {
		if slices.Contains(role.KeyIDs, s.KeyID) {
			have++
		}
	}
	return fmt.Errorf("%w: root v%d needs %d signatures by the %s root's keys (v%d), has %d: %v",
		ErrThreshold, prop.Signed.Version, role.Threshold, which, signer.Signed.Version, have, err)
}

// PublishRoot makes the proposal at path (default: the staged one) the current root,
// after checking it is the next version and is signed by a threshold of the current
// root's keys and of its own. When it changes the online keys, the next snapshot and
// timestamp are signed by both the old and the new keys and written before the root, so
// that clients on either root keep working; when it changes the targets keys, targets is
// re-signed (the new targets key must be found by keys).
func (r *Repo) PublishRoot(ctx context.Context, path string, keys *KeyRing) (int64, error) {
	cur, err := r.currentRoot(ctx)
	if err != nil {
		return 0, err
	}
	if cur == nil {
		return r.publishFirstRoot(ctx, path)
	}
	return r.publishRoot(ctx, path, keys, nil)
}

// publishFirstRoot publishes root v1 that Init staged from the holders' public keys,
// once a threshold of them has signed it. The rest of the metadata was signed at Init,
// so it checks the whole repository loads with the new root and takes it back if not.
func (r *Repo) publishFirstRoot(ctx context.Context, path string) (int64, error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return 0, err
	}
	defer unlock()
	if path == "" {
		path = r.ProposalPath(1)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read proposal: %w", err)
	}
	prop, err := metadata.Root().FromBytes(data)
	if err != nil {
		return 0, &MetadataError{File: path, Err: err}
	}
	if prop.Signed.Version != 1 {
		return 0, fmt.Errorf("proposal is root v%d but the repository has no root yet: publish the staged root v1 (%s)", prop.Signed.Version, r.ProposalPath(1))
	}
	// Root v1 is the one Init staged from the holders' public keys, whatever file brings
	// its signatures: a copy whose signed part was changed on its way (another root
	// key, a threshold of 1) signed itself and was published, the root every device then
	// pins (found from outside, 2 Dec).
	staged, err := os.ReadFile(r.ProposalPath(1))
	if err != nil {
		return 0, fmt.Errorf("the root v1 'repo init' staged (%s) cannot be read, so the proposal cannot be checked against it: %w", r.ProposalPath(1), err)
	}
	want, err := metadata.Root().FromBytes(staged)
	if err != nil {
		return 0, &MetadataError{File: r.ProposalPath(1), Err: err}
	}
	if a, b := signedJSON(&prop.Signed), signedJSON(&want.Signed); !bytes.Equal(a, b) {
		return 0, fmt.Errorf("%s is not the root v1 that 'repo init' staged (%s): its keys, thresholds or expiry differ; sign and publish that one", path, r.ProposalPath(1))
	}
	if err := thresholdMet("new", prop, prop); err != nil {
		return 0, err
	}
	if prop.Signed.Expires.Before(r.now()) {
		return 0, fmt.Errorf("proposal expired at %s: run 'edgeward repo init' again", prop.Signed.Expires)
	}
	ev := rootChangeData(nil, &prop.Signed)
	ev["signed_by"] = rootSigners(nil, prop)
	if err := r.record(ctx, event{"root.publish", "root v1", ev}); err != nil {
		return 0, err
	}
	final := filepath.Join(r.MetadataDir(), "1.root.json")
	if err := r.fs.WriteFile(final, data, 0o644); err != nil {
		return 0, fmt.Errorf("write root v1: %w", err)
	}
	if _, err := r.Load(ctx); err != nil {
		os.Remove(final)
		return 0, fmt.Errorf("root v1 does not verify the repository's metadata (taken back): %w", err)
	}
	if path == r.ProposalPath(1) {
		os.Remove(path)
	}
	return 1, nil
}

// publishRoot is PublishRoot; also records extra (if not nil) with the root's publication.
func (r *Repo) publishRoot(ctx context.Context, path string, keys *KeyRing, extra *event) (int64, error) {
	var version int64
	err := r.update(ctx, keys, func(t *txn) error {
		cur := t.st.Root
		if path == "" {
			path = r.ProposalPath(cur.Signed.Version + 1)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read proposal: %w", err)
		}
		prop, err := metadata.Root().FromBytes(data)
		if err != nil {
			return &MetadataError{File: path, Err: err}
		}
		if prop.Signed.Version != cur.Signed.Version+1 {
			return fmt.Errorf("proposal is root v%d but the current root is v%d: propose again", prop.Signed.Version, cur.Signed.Version)
		}
		if err := thresholdMet("current", cur, prop); err != nil {
			return err
		}
		if err := thresholdMet("new", prop, prop); err != nil {
			return err
		}
		if prop.Signed.Expires.Before(r.now()) {
			return fmt.Errorf("proposal expired at %s", prop.Signed.Expires)
		}
		var lost []string // online roles whose old keys are not here
		for _, role := range []string{metadata.SNAPSHOT, metadata.TIMESTAMP} {
			if !slices.Equal(sorted(cur.Signed.Roles[role].KeyIDs), sorted(prop.Signed.Roles[role].KeyIDs)) {
				// The old keys sign too when they are here, for a client that gets the
				// new timestamp before it can fetch the new root. When they are lost, or
				// wiped after a theft, the rotation goes on without them: clients fetch
				// the new root before the timestamp (TUF 5.3) and verify the new key's
				// signature alone. It was refused, and a lost online key could never be
				// rotated away: the repository stopped for good (found from outside, 2 Dec).
				// Only keys that are not here (no file, or a damaged one) count as lost: a
				// key file that is there and does not open (a wrong passphrase) refuses
				// the rotation, as before (it was taken for a lost key, found in review).
				old, err := t.roleKeys(role)
				var short *KeysShortError
				switch {
				case err == nil:
					t.extraSig[role] = old
				case errors.As(err, &short):
					lost = append(lost, role)
					if r.log != nil {
						r.log.Warn("rotating away from online keys that are not here: the new metadata is signed by the new keys only", "role", role, "err", err)
					}
				default:
					return fmt.Errorf("sign %s with its old key during the rotation: %w (its key file is there but does not open); the root was not published: give the passphrase it is sealed with, or, if the key is lost, move the file away, then publish the root ('edgeward root publish')", role, err)
				}
				if role == metadata.SNAPSHOT {
					t.newSnap = true
				}
			}
		}
		// targets is re-signed (by the new root's targets keys at hand) when its keys
		// change, and when the current targets does not verify under the new root: a
		// raised targets threshold, with keys unchanged, published a root under which
		// the repository's own targets failed to verify, and the repository and every
		// device with it failed to load (found building threshold signing). Short of
		// keys, the commit refuses (ErrNeedsSignatures) and nothing changes.
		if !slices.Equal(sorted(cur.Signed.Roles[metadata.TARGETS].KeyIDs), sorted(prop.Signed.Roles[metadata.TARGETS].KeyIDs)) ||
			prop.VerifyDelegate(metadata.TARGETS, t.st.Targets[metadata.TARGETS]) != nil {
			defer t.touch(metadata.TARGETS)
		}
		t.st.Root = prop
		version = prop.Signed.Version
		ev := rootChangeData(&cur.Signed, &prop.Signed)
		ev["signed_by"] = rootSigners(cur, prop)
		if len(lost) > 0 {
			ev["old_keys_missing"] = lost
		}
		t.record("root.publish", fmt.Sprintf("root v%d", version), ev)
		if extra != nil {
			t.events = append(t.events, *extra)
		}
		out, err := prop.ToBytes(true)
		if err != nil {
			return err
		}
		t.rootFile, t.rootData = fmt.Sprintf("%d.root.json", version), out
		staged := r.ProposalPath(version)
		t.after = func() error {
			// The staged proposal is done with; a file the operator named (--proposal)
			// is theirs, and stays.
			os.Remove(staged)
			return nil
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return version, nil
}

func sorted(s []string) []string {
	c := slices.Clone(s)
	slices.Sort(c)
	return c
}

// RotateResult says what a key rotation did.
type RotateResult struct {
	Role     string
	NewKeyID string
	NewKey   string   // path of the new key file
	Revoked  []string // key IDs removed
	Proposal string   // for online roles: the staged root proposal
	// RootVersion is, for online roles, the version of the root the proposal stages:
	// the old keys are revoked when it is published.
	RootVersion int64
	Published   bool // the rotation is live (for online roles: the root was published)
}

// RotateKey replaces the keys of role with one new key.
//
// For the delegated roles (models, runtimes) it is immediate: the new key is written,
// encrypted with the keyring's passphrase, to keyDir (default DIR/keys/offline), targets
// is re-signed with the targets key and the role with the new key.
//
// For the online roles (snapshot, timestamp) the keys are listed in root, so a rotation
// is a root change: the new key is written to DIR/keys/online, a root proposal is staged,
// and if keys holds a threshold of root keys it is signed and published at once;
// otherwise the proposal waits for 'edgeward root sign' and 'edgeward root publish'.
func (r *Repo) RotateKey(ctx context.Context, role string, kt KeyType, keyDir string, keys *KeyRing) (*RotateResult, error) {
	if keys == nil {
		keys = &KeyRing{}
	}
	res := &RotateResult{Role: role}
	switch role {
	case metadata.SNAPSHOT, metadata.TIMESTAMP:
		st, err := r.Load(ctx)
		if err != nil {
			return nil, err
		}
		k, err := GenerateKey(role, kt, nil)
		if err != nil {
			return nil, err
		}
		res.NewKeyID, res.RootVersion = k.ID(), st.Root.Signed.Version+1
		if err := r.pendingProposal(res.RootVersion); err != nil {
			return nil, fmt.Errorf("rotate %s: %w", role, err)
		}
		res.Revoked = slices.Clone(st.Root.Signed.Roles[role].KeyIDs)
		if res.NewKey, err = WriteKeyFile(r.fs, r.OnlineKeyDir(), k, nil, KDFParams{}); err != nil {
			return nil, err
		}
		res.Proposal, err = r.ProposeRoot(ctx, RootChange{
			AddKeys:    map[string][]*metadata.Key{role: {k.Public}},
			RevokeKeys: map[string][]string{role: res.Revoked},
		})
		if err != nil {
			os.Remove(res.NewKey) // no proposal names it
			return nil, err
		}
		rootKeys, err := keys.Find(metadata.ROOT, st.Root.Signed.Roles[metadata.ROOT].KeyIDs, st.Root.Signed.Roles[metadata.ROOT].Threshold, nil)
		if err != nil {
			return res, nil // the ceremony continues with root sign / root publish
		}
		for _, rk := range rootKeys {
			if _, err := SignRootFile(r.fs, res.Proposal, rk, &st.Root.Signed); err != nil {
				return nil, err
			}
		}
		rotated := event{"keys.rotate", role, map[string]any{"role": role, "new": res.NewKeyID, "revoked": res.Revoked}}
		if _, err := r.publishRoot(ctx, res.Proposal, keys, &rotated); err != nil {
			// The signed proposal and the new key it names stay: the ceremony resumes
			// from them (a lost key's file moved away, say), and a next rotation is
			// refused while the proposal is pending.
			return nil, fmt.Errorf("%w (the root v%d proposal %s, signed by the root keys at hand, and the new %s key %s stay: once that is fixed, 'edgeward root publish' publishes it; 'edgeward root propose --replace' drops it)",
				err, res.RootVersion, res.Proposal, role, res.NewKey)
		}
		res.Published = true
	case RoleModels, RoleRuntimes:
		if keys.Passphrase == nil {
			return nil, errors.New("a passphrase is needed to encrypt the new key")
		}
		pass, err := keys.Passphrase()
		if err != nil {
			return nil, err
		}
		if keyDir == "" {
			keyDir = r.OfflineKeyDir()
		}
		k, err := GenerateKey(role, kt, nil)
		if err != nil {
			return nil, err
		}
		res.NewKeyID = k.ID()
		err = r.update(ctx, keys, func(t *txn) error {
			d := t.st.Targets[metadata.TARGETS].Signed.Delegations
			idx := slices.IndexFunc(d.Roles, func(dr metadata.DelegatedRole) bool { return dr.Name == role })
			if idx < 0 {
				return fmt.Errorf("no delegated role %q", role)
			}
			if d.Roles[idx].Threshold > 1 {
				// Its keys are held by different people: one new key on this machine
				// would quietly take the role from all of them.
				return fmt.Errorf("rotate %s: it needs %d of %d keys, held by their holders: change them with 'edgeward role keys --role %s --add-key NEW.pub --revoke-key ID' (see docs/REPOSITORY.md)",
					role, d.Roles[idx].Threshold, len(d.Roles[idx].KeyIDs), role)
			}
			res.Revoked = d.Roles[idx].KeyIDs
			d.Roles[idx].KeyIDs = []string{k.ID()}
			d.Roles[idx].Threshold = 1
			d.Keys[k.ID()] = k.Public
			for _, old := range res.Revoked {
				used := false
				for _, dr := range d.Roles {
					used = used || slices.Contains(dr.KeyIDs, old)
				}
				if !used {
					delete(d.Keys, old)
				}
			}
			t.touch(metadata.TARGETS)
			t.touch(role)
			// The new key is written before anything is signed with it, and is found
			// by roleKeys in keyDir.
			if res.NewKey, err = WriteKeyFile(r.fs, keyDir, k, pass, r.cfg.KDF); err != nil {
				return err
			}
			keys.Dirs = append(keys.Dirs, keyDir)
			t.record("keys.rotate", role, map[string]any{"role": role, "new": res.NewKeyID, "revoked": res.Revoked})
			return nil
		})
		if err != nil {
			if res.NewKey != "" {
				os.Remove(res.NewKey)
			}
			return nil, err
		}
		res.Published = true
	default:
		return nil, fmt.Errorf("rotate %q: want timestamp, snapshot, models or runtimes (root and targets keys change through 'edgeward root propose')", role)
	}
	return res, nil
}

// RootProgress is how far a proposed root is from publication: its valid signatures by
// the keys of the proposal's own root and of the current root, and both thresholds.
type RootProgress struct {
	Version   int64 // the proposal's version
	Signed    int   // valid signatures by the proposal's root keys
	Threshold int   // the proposal's root threshold
	// Current is the current root's version: 0 when the proposal is root v1, -1 when
	// the current root is not known here (a copy signed away from the repository).
	Current          int64
	CurrentSigned    int
	CurrentThreshold int
}

// Missing is how many more signatures publication needs: by the new root's keys and by
// the current root's (0 when unknown or none).
func (p RootProgress) Missing() (byNew, byCurrent int) {
	byNew = max(p.Threshold-p.Signed, 0)
	if p.Current > 0 {
		byCurrent = max(p.CurrentThreshold-p.CurrentSigned, 0)
	}
	return byNew, byCurrent
}

// String says it for a key holder, e.g. "root v2: 1 of 2 signatures by its own root
// keys (1 more needed); 2 of 2 by the keys of root v1 (enough)"; past a threshold,
// "3 signatures by its own root keys, 2 needed (enough)".
func (p RootProgress) String() string {
	count := func(have, want int, by string) string {
		switch {
		case have > want:
			return fmt.Sprintf("%d %s, %d needed (enough)", have, by, want)
		case have == want:
			return fmt.Sprintf("%d of %d %s (enough)", have, want, by)
		}
		return fmt.Sprintf("%d of %d %s (%d more needed)", have, want, by, want-have)
	}
	s := fmt.Sprintf("root v%d: %s", p.Version, count(p.Signed, p.Threshold, "signatures by its own root keys"))
	switch {
	case p.Current > 0:
		s += "; " + count(p.CurrentSigned, p.CurrentThreshold, fmt.Sprintf("by the keys of root v%d", p.Current))
	case p.Current < 0:
		s += fmt.Sprintf("; it also needs the threshold of root v%d's keys, which 'edgeward root publish' checks", p.Version-1)
	}
	return s
}

// ProposalProgress counts the valid signatures of the proposed root in file. cur is the
// current root (nil: unknown, unless the proposal is root v1, which has none).
func ProposalProgress(cur *metadata.Metadata[metadata.RootType], path string) (RootProgress, error) {
	prop, err := ReadProposal(path)
	if err != nil {
		return RootProgress{}, err
	}
	p := RootProgress{Version: prop.Signed.Version, Signed: validRootSignatures(prop, prop), Current: -1}
	if r := prop.Signed.Roles[metadata.ROOT]; r != nil {
		p.Threshold = r.Threshold
	}
	switch {
	case prop.Signed.Version == 1:
		p.Current = 0
	case cur != nil:
		p.Current = cur.Signed.Version
		p.CurrentSigned = validRootSignatures(cur, prop)
		if r := cur.Signed.Roles[metadata.ROOT]; r != nil {
			p.CurrentThreshold = r.Threshold
		}
	}
	return p, nil
}

// RootProgress is ProposalProgress against this repository's current root; path ""
// is the staged proposal.
func (r *Repo) RootProgress(ctx context.Context, path string) (RootProgress, error) {
	cur, err := r.currentRoot(ctx)
	if err != nil {
		return RootProgress{}, err
	}
	if path == "" {
		v := int64(1)
		if cur != nil {
			v = cur.Signed.Version + 1
		}
		path = r.ProposalPath(v)
	}
	return ProposalProgress(cur, path)
}

// validRootSignatures counts prop's signatures that verify under signer's root keys,
// each key once.
func validRootSignatures(signer, prop *metadata.Metadata[metadata.RootType]) int {
	role := signer.Signed.Roles[metadata.ROOT]
	if role == nil {
		return 0
	}
	var seen []string
	for _, s := range prop.Signatures {
		k := signer.Signed.Keys[s.KeyID]
		if k == nil || !slices.Contains(role.KeyIDs, s.KeyID) || slices.Contains(seen, s.KeyID) {
			continue
		}
		one := metadata.Root()
		one.Signed.Keys = map[string]*metadata.Key{s.KeyID: k}
		one.Signed.Roles[metadata.ROOT] = &metadata.Role{KeyIDs: []string{s.KeyID}, Threshold: 1}
		if one.VerifyDelegate(metadata.ROOT, prop) == nil {
			seen = append(seen, s.KeyID)
		}
	}
	return len(seen)
}

// signedJSON is the JSON of a root's signed part, to compare two roots' content.
func signedJSON(r *metadata.RootType) []byte {
	b, _ := json.Marshal(r)
	return b
}

// ReadProposal reads a proposed (or any) root from file.
func ReadProposal(path string) (*metadata.Metadata[metadata.RootType], error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read proposal: %w", err)
	}
	prop, err := metadata.Root().FromBytes(data)
	if err != nil {
		return nil, &MetadataError{File: path, Err: err}
	}
	return prop, nil
}

// DescribeRoot says what root next is and what it changes from cur (nil: the current
// root is not known here), one line each, for a key holder to review before signing:
// its version and expiry, then per role its threshold and keys, each key marked added
// or revoked against cur. A key holder signed a proposal told only how many signatures
// it had: one that added a key and lowered the root threshold to 1 read like any other
// (found from outside, 2 Dec).
func DescribeRoot(cur, next *metadata.RootType, now time.Time) []string {
	var out []string
	v := fmt.Sprintf("root v%d", next.Version)
	switch {
	case cur != nil:
		v += fmt.Sprintf(", replacing v%d", cur.Version)
	case next.Version > 1:
		v += fmt.Sprintf(" (root v%d not known here: compare it with --current FILE)", next.Version-1)
	}
	out = append(out, v)
	var was time.Time
	if cur != nil {
		was = cur.Expires
	}
	out = append(out, expiryLine(next.Expires, was, now))
	if cur != nil && cur.ConsistentSnapshot != next.ConsistentSnapshot {
		out = append(out, fmt.Sprintf("consistent snapshots: %v, was %v", next.ConsistentSnapshot, cur.ConsistentSnapshot))
	}
	roles := slices.Sorted(maps.Keys(next.Roles))
	if cur != nil {
		for role := range cur.Roles {
			if next.Roles[role] == nil {
				roles = append(roles, role)
			}
		}
	}
	for _, role := range roles {
		rr := next.Roles[role]
		var old *metadata.Role
		if cur != nil {
			old = cur.Roles[role]
		}
		if rr == nil {
			out = append(out, fmt.Sprintf("%s: REMOVED", role))
			continue
		}
		line := fmt.Sprintf("%s: %d of %d keys", role, rr.Threshold, len(rr.KeyIDs))
		if old != nil && (old.Threshold != rr.Threshold || len(old.KeyIDs) != len(rr.KeyIDs)) {
			line += fmt.Sprintf(" (was %d of %d)", old.Threshold, len(old.KeyIDs))
		}
		if old != nil && rr.Threshold < old.Threshold {
			line += " THRESHOLD LOWERED"
		}
		var keys []string
		for _, id := range rr.KeyIDs {
			k := short(id)
			if kk := next.Keys[id]; kk != nil {
				k += " " + kk.Type
			}
			if cur != nil && (old == nil || !slices.Contains(old.KeyIDs, id)) {
				k += " ADDED"
			}
			keys = append(keys, k)
		}
		if old != nil {
			for _, id := range old.KeyIDs {
				if !slices.Contains(rr.KeyIDs, id) {
					keys = append(keys, short(id)+" REVOKED")
				}
			}
		}
		out = append(out, line+": "+strings.Join(keys, ", "))
	}
	return out
}

// roundDays is d in days (hours under two days).
// expiryLine describes, for a holder about to sign, when a proposed version expires
// (or that it has, and so cannot be published) and, when was is set and differs, the
// expiry of the version it replaces.
func expiryLine(expires, was, now time.Time) string {
	exp := "expires " + expires.UTC().Format(time.RFC3339)
	if left := expires.Sub(now); left <= 0 {
		exp += " (ALREADY EXPIRED: it cannot be published)"
	} else {
		exp += fmt.Sprintf(" (in %s)", roundDays(left))
	}
	if !was.IsZero() && !was.Equal(expires) {
		exp += ", was " + was.UTC().Format(time.RFC3339)
	}
	return exp
}

func roundDays(d time.Duration) string {
	if d < 48*time.Hour {
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%d days", int(d.Hours()/24))
}

// DescribeProposal is DescribeRoot of the proposal in path ("": the staged one)
// against this repository's current root.
func (r *Repo) DescribeProposal(ctx context.Context, path string) ([]string, error) {
	cur, err := r.currentRoot(ctx)
	if err != nil {
		return nil, err
	}
	if path == "" {
		v := int64(1)
		if cur != nil {
			v = cur.Signed.Version + 1
		}
		path = r.ProposalPath(v)
	}
	prop, err := ReadProposal(path)
	if err != nil {
		return nil, err
	}
	var c *metadata.RootType
	if cur != nil {
		c = &cur.Signed
	}
	return DescribeRoot(c, &prop.Signed, r.now()), nil
}
