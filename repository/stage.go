package repository

// Threshold signing for the targets, models and runtimes roles (docs/REPOSITORY.md,
// "Threshold signing for targets, models and runtimes").
//
// A change (publish, retire, renew, a delegation change) to a role whose threshold is
// above 1 and above the keys at hand is not published: commit stages the new version of
// every role the change touches, each signed by the keys at hand, in
// DIR/staged/ROLE/N.ROLE.json, with the change's audit records beside it
// (N.ROLE.change.json). Nothing served changes; the content a publish stored stays in
// the blob store, named by no served metadata. Key holders sign the staged file (or a
// copy of it, away from the repository) with SignStagedFile; PublishStaged verifies the
// signatures with go-tuf against the role's keys (root's for targets, the targets
// delegation's for models and runtimes: the staged targets' one when the change moves
// the delegation) and publishes the staged versions, then snapshot and timestamp.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/secure-systems-lab/go-securesystemslib/cjson"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// ErrNeedsSignatures is returned when a change touches a role whose threshold is above
// the keys at hand and may not be staged (a server's key ring, KeyRing.Stage unset):
// nothing changed.
var ErrNeedsSignatures = errors.New("the role needs more signatures than the keys at hand make")

// ErrStagedPending refuses a change to a role while a change of it is staged: publish
// the staged one ('edgeward role publish') or discard it ('edgeward role discard').
var ErrStagedPending = errors.New("a staged change of the role is pending")

// ErrStaleStaged refuses to publish a staged change made from a version of a role that
// is no longer the current one: it would undo what was published since.
var ErrStaleStaged = errors.New("the staged change is stale")

// ErrNoStaged is returned when no change of the role is staged.
var ErrNoStaged = errors.New("no staged change")

// errStaged ends a commit that staged its change instead of publishing it.
var errStaged = errors.New("staged")

// stageable reports whether a change of role may be staged for its key holders.
func stageable(role string) bool {
	return role == metadata.TARGETS || role == RoleModels || role == RoleRuntimes
}

// Staged is a change staged for key holders: the staged new version of each role it
// touches (published together).
type Staged struct {
	Roles []StagedRole `json:"roles"`
}

// StagedRole is one staged role version and how far it is from its threshold.
type StagedRole struct {
	Role      string   `json:"role"`
	Version   int64    `json:"version"`
	Path      string   `json:"path"`
	SignedBy  []string `json:"signed_by"` // key IDs whose valid signatures count
	Threshold int      `json:"threshold"`
}

// Version is the staged version of role (0: not in this change).
func (s *Staged) Version(role string) int64 {
	for _, r := range s.Roles {
		if r.Role == role {
			return r.Version
		}
	}
	return 0
}

// String says it for the operator: "models v5: 1 of 2 signatures by its keys (1 more
// needed)".
func (r StagedRole) String() string {
	return progressLine(r.Role, r.Version, len(r.SignedBy), r.Threshold)
}

func progressLine(role string, v int64, have, want int) string {
	s := fmt.Sprintf("%s v%d: ", role, v)
	switch {
	case want <= 0:
		return s + fmt.Sprintf("%d signature(s); 'edgeward role publish' counts them against the role's keys", have)
	case have > want:
		return s + fmt.Sprintf("%d signatures by its keys, %d needed (enough)", have, want)
	case have == want:
		return s + fmt.Sprintf("%d of %d signatures by its keys (enough)", have, want)
	}
	return s + fmt.Sprintf("%d of %d signatures by its keys (%d more needed)", have, want, want-have)
}

// stagedChange is what is staged beside the role files (N.ROLE.change.json): the roles
// and versions published together, and the change's audit records, recorded when it
// is published.
type stagedChange struct {
	Roles  map[string]int64 `json:"roles"`
	Events []stagedEvent    `json:"events"`
}

type stagedEvent struct {
	Action  string         `json:"action"`
	Subject string         `json:"subject"`
	Data    map[string]any `json:"data"`
}

// StagedPath is where the staged version v of role is.
func (r *Repo) StagedPath(role string, v int64) string {
	return r.path("staged", role, fmt.Sprintf("%d.%s.json", v, role))
}

func (r *Repo) stagedChangePath(role string, v int64) string {
	return r.path("staged", role, fmt.Sprintf("%d.%s.change.json", v, role))
}

// stagedVersions lists the versions of role staged in the repository.
func (r *Repo) stagedVersions(role string) []int64 {
	matches, _ := filepath.Glob(filepath.Join(r.path("staged", role), "*."+role+".json"))
	var out []int64
	for _, m := range matches {
		if v, err := strconv.ParseInt(strings.TrimSuffix(filepath.Base(m), "."+role+".json"), 10, 64); err == nil && v > 0 {
			out = append(out, v)
		}
	}
	slices.Sort(out)
	return out
}

// stage writes the change as staged versions of roles, each signed by keysFor[role],
// records it, and returns errStaged: nothing served changes.
func (t *txn) stage(ctx context.Context, roles []string, keysFor map[string][]*Key) error {
	for _, role := range roles {
		if !stageable(role) {
			return fmt.Errorf("%w: this change also changes %s, which is never staged", ErrNeedsSignatures, role)
		}
		if vs := t.r.stagedVersions(role); len(vs) > 0 {
			return fmt.Errorf("%w: %s v%d is staged (%s): publish it first ('edgeward role publish --role %s') or discard it ('edgeward role discard --role %s'); nothing changed",
				ErrStagedPending, role, vs[0], t.r.StagedPath(role, vs[0]), role, role)
		}
	}
	ch := stagedChange{Roles: map[string]int64{}}
	for _, ev := range t.events {
		ch.Events = append(ch.Events, stagedEvent{ev.action, ev.subject, ev.data})
	}
	staged := &Staged{}
	data := map[string][]byte{}
	for _, role := range roles {
		m := t.st.Targets[role]
		v := m.Signed.Version
		path := t.r.StagedPath(role, v)
		b, err := signMeta(filepath.Base(path), m, keysFor[role])
		if err != nil {
			return err
		}
		if err := t.checkSize(role, len(b)); err != nil {
			return err
		}
		_, threshold, _ := roleKeyIDs(t.st, role)
		var ids []string
		for _, k := range keysFor[role] {
			ids = append(ids, k.ID())
		}
		ch.Roles[role], data[role] = v, b
		staged.Roles = append(staged.Roles, StagedRole{Role: role, Version: v, Path: path, SignedBy: ids, Threshold: threshold})
	}
	side, err := json.MarshalIndent(ch, "", "  ")
	if err != nil {
		return fmt.Errorf("stage: encode the change's records: %w", err)
	}
	if t.r.cfg.Lock != nil && t.r.cfg.Held != nil {
		if err := t.r.cfg.Held(ctx); err != nil {
			return fmt.Errorf("the repository lock was lost before the change was staged: %w", err)
		}
	}
	signedBy, thresholds := map[string][]string{}, map[string]int{}
	var subj []string
	for _, s := range staged.Roles {
		signedBy[s.Role], thresholds[s.Role] = s.SignedBy, s.Threshold
		subj = append(subj, fmt.Sprintf("%s v%d", s.Role, s.Version))
	}
	// The files first, then the record: a failure to write leaves no record of a change
	// that was never staged, and a failure to record removes the files (rollback).
	for _, s := range staged.Roles {
		cp := t.r.stagedChangePath(s.Role, s.Version)
		t.create(cp)
		if err := t.r.fs.WriteFile(cp, side, 0o644); err != nil {
			return fmt.Errorf("stage %s v%d: %w", s.Role, s.Version, err)
		}
		t.create(s.Path)
		if err := t.r.fs.WriteFile(s.Path, data[s.Role], 0o644); err != nil {
			return fmt.Errorf("stage %s v%d: %w", s.Role, s.Version, err)
		}
	}
	if err := t.r.record(ctx, event{"role.stage", strings.Join(subj, ", "), map[string]any{
		"roles": ch.Roles, "signed_by": signedBy, "thresholds": thresholds, "changes": ch.Events,
	}}); err != nil {
		return err
	}
	t.staged = staged
	return errStaged
}

// readStaged reads the staged change that contains role: the staged version of every
// role in it, and its records.
func (r *Repo) readStaged(role string) (*stagedChange, map[string]*metadata.Metadata[metadata.TargetsType], error) {
	if !stageable(role) {
		return nil, nil, fmt.Errorf("role %q: want targets, models or runtimes", role)
	}
	vs := r.stagedVersions(role)
	if len(vs) == 0 {
		return nil, nil, fmt.Errorf("%w of %s in %s", ErrNoStaged, role, r.path("staged", role))
	}
	v := vs[len(vs)-1]
	side, err := os.ReadFile(r.stagedChangePath(role, v))
	if err != nil {
		return nil, nil, fmt.Errorf("staged %s v%d: its change record: %w", role, v, err)
	}
	var ch stagedChange
	if err := json.Unmarshal(side, &ch); err != nil || ch.Roles[role] != v {
		return nil, nil, fmt.Errorf("staged %s v%d: bad change record %s: %v", role, v, r.stagedChangePath(role, v), err)
	}
	metas := map[string]*metadata.Metadata[metadata.TargetsType]{}
	for ro, rv := range ch.Roles {
		m, err := readTargetsFile(r.StagedPath(ro, rv))
		if err != nil {
			return nil, nil, err
		}
		if m.Signed.Version != rv {
			return nil, nil, &MetadataError{File: r.StagedPath(ro, rv), Err: fmt.Errorf("version %d, staged as %d", m.Signed.Version, rv)}
		}
		metas[ro] = m
	}
	return &ch, metas, nil
}

// readTargetsFile reads a targets-type metadata file (a staged role version or a copy).
func readTargetsFile(path string) (*metadata.Metadata[metadata.TargetsType], error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > maxMetadataBytes {
		return nil, &MetadataError{File: path, Err: fmt.Errorf("larger than %d bytes", maxMetadataBytes)}
	}
	m, err := metadata.Targets().FromBytes(data)
	if err != nil {
		return nil, &MetadataError{File: path, Err: err}
	}
	return m, nil
}

// sameSigned reports whether a and b sign the same content: the same canonical JSON of
// their signed part, the bytes a signature covers, so that a signature valid on one is
// valid on the other. (json.Marshal kept the order of keys inside a target's custom
// metadata: a copy that a JSON tool had re-encoded with its keys sorted, signed by its
// holder, was refused as another change, found in review, 2 Dec.)
func sameSigned(a, b *metadata.Metadata[metadata.TargetsType]) bool {
	x, err1 := cjson.EncodeCanonical(a.Signed)
	y, err2 := cjson.EncodeCanonical(b.Signed)
	return err1 == nil && err2 == nil && bytes.Equal(x, y)
}

// delegationOf returns role's key IDs, threshold and keys in delegator (root for
// targets, a targets role for models and runtimes).
func delegationOf(delegator any, role string) (ids []string, threshold int, keys map[string]*metadata.Key) {
	switch d := delegator.(type) {
	case *metadata.Metadata[metadata.RootType]:
		if rr := d.Signed.Roles[role]; rr != nil {
			return rr.KeyIDs, rr.Threshold, d.Signed.Keys
		}
	case *metadata.Metadata[metadata.TargetsType]:
		if dl := d.Signed.Delegations; dl != nil {
			for _, dr := range dl.Roles {
				if dr.Name == role {
					return dr.KeyIDs, dr.Threshold, dl.Keys
				}
			}
		}
	}
	return nil, 0, nil
}

// validSigners are the key IDs of role's keys in delegator whose signatures on md
// verify (go-tuf, one key at a time), each public key once: a key listed under two IDs
// counts once, as go-tuf's VerifyDelegate counts it (by the SHA-256 of its PKIX
// encoding), so that progress never says "enough" where publication would refuse. A
// signature by any other key does not count.
func validSigners(delegator any, role string, md *metadata.Metadata[metadata.TargetsType]) []string {
	ids, _, keys := delegationOf(delegator, role)
	var out []string
	seen := map[[32]byte]bool{}
	for _, s := range md.Signatures {
		k := keys[s.KeyID]
		if k == nil || !slices.Contains(ids, s.KeyID) || slices.Contains(out, s.KeyID) {
			continue
		}
		fp, ok := keyFingerprint(k)
		if !ok || seen[fp] {
			continue
		}
		var err error
		switch delegator.(type) {
		case *metadata.Metadata[metadata.RootType]:
			one := metadata.Root()
			one.Signed.Keys = map[string]*metadata.Key{s.KeyID: k}
			one.Signed.Roles[role] = &metadata.Role{KeyIDs: []string{s.KeyID}, Threshold: 1}
			err = one.VerifyDelegate(role, md)
		default:
			one := metadata.Targets()
			one.Signed.Delegations = &metadata.Delegations{
				Keys:  map[string]*metadata.Key{s.KeyID: k},
				Roles: []metadata.DelegatedRole{{Name: role, KeyIDs: []string{s.KeyID}, Threshold: 1, Paths: []string{"*"}}},
			}
			err = one.VerifyDelegate(role, md)
		}
		if err == nil {
			seen[fp] = true
			out = append(out, s.KeyID)
		}
	}
	return out
}

// keyFingerprint is the SHA-256 of k's public key in PKIX form, the identity go-tuf
// counts a threshold by; ok is false for a key go-tuf cannot read either.
func keyFingerprint(k *metadata.Key) (fp [32]byte, ok bool) {
	pub, err := k.ToPublicKey()
	if err != nil {
		return fp, false
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fp, false
	}
	return sha256.Sum256(der), true
}

// verifyRole checks md against role's threshold in delegator with go-tuf, and says how
// many valid signatures it has and needs when it falls short (ErrThreshold).
func verifyRole(delegator any, role string, md *metadata.Metadata[metadata.TargetsType]) error {
	var err error
	switch d := delegator.(type) {
	case *metadata.Metadata[metadata.RootType]:
		err = d.VerifyDelegate(role, md)
	case *metadata.Metadata[metadata.TargetsType]:
		err = d.VerifyDelegate(role, md)
	}
	if err == nil {
		return nil
	}
	_, threshold, _ := delegationOf(delegator, role)
	return fmt.Errorf("%w: %s v%d needs %d signatures by its keys, has %d valid ones (signatures by other keys do not count): %v",
		ErrThreshold, role, md.Signed.Version, threshold, len(validSigners(delegator, role, md)), err)
}

// PublishStaged publishes the staged change that contains role once every role in it
// is signed by its threshold (verified with go-tuf: targets against root's targets
// keys, models and runtimes against the targets delegation, the staged one when the
// change moves it): it writes the staged versions with their valid signatures (others
// are dropped), then snapshot and timestamp, and records the change's records and
// repo.role.publish naming the signers. copies are files signed away from the
// repository: each must sign the same content as a staged file, whose signatures it
// adds. A change staged from versions no longer current is refused (ErrStaleStaged).
func (r *Repo) PublishStaged(ctx context.Context, role string, copies []string) (*Staged, error) {
	out := &Staged{}
	err := r.update(ctx, nil, func(t *txn) error {
		ch, metas, err := r.readStaged(role)
		if err != nil {
			return err
		}
		for _, c := range copies {
			cm, err := readTargetsFile(c)
			if err != nil {
				return err
			}
			matched := false
			for _, m := range metas {
				if !sameSigned(cm, m) {
					continue
				}
				matched = true
				for _, s := range cm.Signatures {
					if !slices.ContainsFunc(m.Signatures, func(x metadata.Signature) bool { return x.KeyID == s.KeyID }) {
						m.Signatures = append(m.Signatures, s)
					}
				}
			}
			if !matched {
				return fmt.Errorf("%s is not a copy of a staged role version of this change (%s): its signed content differs; sign and publish the staged one", c, stagedList(ch))
			}
		}
		roles := slices.Sorted(maps.Keys(ch.Roles)) // "models" < "runtimes" < "targets"
		for _, ro := range roles {
			cur := t.st.Targets[ro]
			if cur == nil {
				return fmt.Errorf("staged %s: no role %q in this repository", ro, ro)
			}
			if v := ch.Roles[ro]; v != cur.Signed.Version+1 {
				return fmt.Errorf("%w: %s v%d was staged from v%d, but %s is now at v%d: discard it ('edgeward role discard --role %s') and make the change again",
					ErrStaleStaged, ro, v, v-1, ro, cur.Signed.Version, ro)
			}
			if exp := metas[ro].Signed.Expires; !exp.After(r.now()) {
				return fmt.Errorf("staged %s v%d expired at %s: discard it ('edgeward role discard --role %s') and make the change again", ro, ch.Roles[ro], exp.UTC().Format(time.RFC3339), ro)
			}
		}
		// targets first: the delegated roles verify under the targets being published.
		delegatorOf := func(ro string) any {
			if ro == metadata.TARGETS {
				return t.st.Root
			}
			if m, ok := metas[metadata.TARGETS]; ok {
				return m
			}
			return t.st.Targets[metadata.TARGETS]
		}
		var errs []error
		for _, ro := range roles {
			if err := verifyRole(delegatorOf(ro), ro, metas[ro]); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			return fmt.Errorf("publish the staged change (%s): %w", stagedList(ch), errors.Join(errs...))
		}
		if nt, ok := metas[metadata.TARGETS]; ok {
			// A delegation change must leave every delegated role it does not re-sign
			// verifiable, or every device fails.
			for _, ro := range delegatedNames() {
				if _, inChange := metas[ro]; inChange {
					continue
				}
				if err := nt.VerifyDelegate(ro, t.st.Targets[ro]); err != nil {
					return fmt.Errorf("the staged targets v%d does not verify the current %s v%d (%v): nothing was published; stage the delegation change again ('edgeward role keys'), which re-signs %s with it",
						nt.Signed.Version, ro, t.st.Targets[ro].Signed.Version, err, ro)
				}
			}
		}
		t.presigned = map[string][]byte{}
		signedBy := map[string][]string{}
		for _, ro := range roles {
			m := metas[ro]
			ids := validSigners(delegatorOf(ro), ro, m)
			m.Signatures = slices.DeleteFunc(m.Signatures, func(s metadata.Signature) bool { return !slices.Contains(ids, s.KeyID) })
			data, err := m.ToBytes(true)
			if err != nil {
				return fmt.Errorf("encode %s v%d: %w", ro, m.Signed.Version, err)
			}
			t.presigned[ro] = data
			t.st.Targets[ro] = m
			t.changed[ro] = true
			_, threshold, _ := delegationOf(delegatorOf(ro), ro)
			signedBy[ro] = ids
			out.Roles = append(out.Roles, StagedRole{Role: ro, Version: m.Signed.Version, Path: r.StagedPath(ro, m.Signed.Version), SignedBy: ids, Threshold: threshold})
		}
		for _, ev := range ch.Events {
			t.record(ev.Action, ev.Subject, ev.Data)
		}
		t.record("role.publish", stagedList(ch), map[string]any{"roles": ch.Roles, "signed_by": signedBy})
		t.after = func() error {
			for ro, v := range ch.Roles {
				os.Remove(r.StagedPath(ro, v))
				os.Remove(r.stagedChangePath(ro, v))
			}
			return nil
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func stagedList(ch *stagedChange) string {
	var s []string
	for _, ro := range slices.Sorted(maps.Keys(ch.Roles)) {
		s = append(s, fmt.Sprintf("%s v%d", ro, ch.Roles[ro]))
	}
	return strings.Join(s, ", ")
}

// DiscardStaged removes the staged change that contains role (every role in it) and
// records it. The content a staged publish stored stays in the blob store.
func (r *Repo) DiscardStaged(ctx context.Context, role string) (string, error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	ch, _, err := r.readStaged(role)
	if err != nil {
		return "", err
	}
	what := stagedList(ch)
	if err := r.record(ctx, event{"role.discard", what, map[string]any{"roles": ch.Roles}}); err != nil {
		return "", err
	}
	for ro, v := range ch.Roles {
		if err := os.Remove(r.StagedPath(ro, v)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("discard %s: %w", what, err)
		}
		os.Remove(r.stagedChangePath(ro, v))
	}
	return what, nil
}

// StagedFile is a staged role version as the repository sees it: the file, the role's
// current version, and its threshold under the delegation it is published with.
type StagedFile struct {
	Role    string
	Path    string
	Staged  *metadata.Metadata[metadata.TargetsType]
	Current *metadata.Metadata[metadata.TargetsType]
	// With describes the other roles of the change, published together with this one
	// (a delegation change: the staged targets against the current one).
	With []string
	// delegator is the root (targets) or targets role (delegated roles) whose keys
	// count.
	delegator any
}

// Progress is how many valid signatures the staged file (or the copy md, if not nil)
// has by the role's keys, of its threshold.
func (f *StagedFile) Progress(md *metadata.Metadata[metadata.TargetsType]) (have, threshold int) {
	if md == nil {
		md = f.Staged
	}
	_, threshold, _ = delegationOf(f.delegator, f.Role)
	return len(validSigners(f.delegator, f.Role, md)), threshold
}

// IsRoleKey reports whether key id is one of the role's keys under the delegation the
// staged version is published with, or under the current one.
func (f *StagedFile) IsRoleKey(st *State, id string) bool {
	ids, _, _ := delegationOf(f.delegator, f.Role)
	cur, _, _ := roleKeyIDs(st, f.Role)
	return slices.Contains(ids, id) || slices.Contains(cur, id)
}

// Staged reads the staged version of role with what a key holder needs to review and
// count it, and the repository's state.
func (r *Repo) Staged(ctx context.Context, role string) (*StagedFile, *State, error) {
	st, err := r.Load(ctx)
	if err != nil {
		return nil, nil, err
	}
	ch, metas, err := r.readStaged(role)
	if err != nil {
		return nil, nil, err
	}
	f := &StagedFile{Role: role, Path: r.StagedPath(role, ch.Roles[role]), Staged: metas[role], Current: st.Targets[role]}
	for _, ro := range slices.Sorted(maps.Keys(metas)) {
		if ro != role {
			f.With = append(f.With, DescribeStaged(ro, &st.Targets[ro].Signed, &metas[ro].Signed, r.now())...)
		}
	}
	switch {
	case role == metadata.TARGETS:
		f.delegator = st.Root
	case metas[metadata.TARGETS] != nil:
		f.delegator = metas[metadata.TARGETS]
	default:
		f.delegator = st.Targets[metadata.TARGETS]
	}
	return f, st, nil
}

// SignStaged adds key's signature to the staged version of role in the repository,
// refusing a key that is not one of the role's, and records it.
func (r *Repo) SignStaged(ctx context.Context, role string, key *Key) (*StagedFile, error) {
	unlock, err := r.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	f, st, err := r.Staged(ctx, role)
	if err != nil {
		return nil, err
	}
	if !f.IsRoleKey(st, key.ID()) {
		return nil, fmt.Errorf("key %s is not a key of %s: its signature would not count; sign with one of the role's keys ('edgeward repo status' lists them)", short(key.ID()), role)
	}
	// Signed first, recorded, then written: a signature refused (the staged version
	// expired, the key unusable) was recorded as made (found in review, 2 Dec).
	md, data, err := signStaged(f.Path, key, r.now())
	if err != nil {
		return nil, err
	}
	if err := r.record(ctx, event{"role.sign", fmt.Sprintf("%s v%d", role, f.Staged.Signed.Version), map[string]any{"role": role, "version": f.Staged.Signed.Version, "key": key.ID(), "staged": f.Path}}); err != nil {
		return nil, err
	}
	if err := r.fs.WriteFile(f.Path, data, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", f.Path, err)
	}
	f.Staged = md
	return f, nil
}

// AddStagedSignatures adds to the staged version of role the signatures of copy (a copy
// of it that key holders signed away from the repository, as JSON) that are valid and by
// keys of the role, and records them; it returns the staged file and the key IDs whose
// signatures it added. A copy of other content, or one that adds no valid signature, is
// refused and changes nothing: the staged file holds only signatures that count.
func (r *Repo) AddStagedSignatures(ctx context.Context, role string, copy []byte) (*StagedFile, []string, error) {
	cm, err := metadata.Targets().FromBytes(copy)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the signed copy of %s: %w", ErrInvalid, role, err)
	}
	unlock, err := r.lock(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer unlock()
	f, _, err := r.Staged(ctx, role)
	if err != nil {
		return nil, nil, err
	}
	if !sameSigned(cm, f.Staged) {
		return nil, nil, fmt.Errorf("%w: the copy is not of the staged %s v%d: its signed content differs; sign the staged one", ErrInvalid, role, f.Staged.Signed.Version)
	}
	if !f.Staged.Signed.Expires.After(r.now()) {
		return nil, nil, fmt.Errorf("staged %s v%d expired at %s: discard it and make the change again", role, f.Staged.Signed.Version, f.Staged.Signed.Expires.UTC().Format(time.RFC3339))
	}
	// The first signature of each key not yet signed is checked, and kept if it adds a
	// valid signer: an invalid signature, a key outside the role, or a second ID of a
	// key that signed already adds nothing.
	md := *f.Staged
	md.Signatures = slices.Clone(f.Staged.Signatures)
	var added []string
	tried := map[string]bool{} // one signature per key ID is checked: a copy cannot make the server verify thousands
	for _, s := range cm.Signatures {
		if tried[s.KeyID] || slices.ContainsFunc(md.Signatures, func(x metadata.Signature) bool { return x.KeyID == s.KeyID }) {
			continue
		}
		tried[s.KeyID] = true
		probe := md
		probe.Signatures = append(slices.Clone(md.Signatures), s)
		if len(validSigners(f.delegator, role, &probe)) > len(validSigners(f.delegator, role, &md)) {
			md.Signatures = probe.Signatures
			added = append(added, s.KeyID)
		}
	}
	if len(added) == 0 {
		return nil, nil, fmt.Errorf("%w: the copy adds no valid signature by a key of %s to the staged v%d", ErrInvalid, role, f.Staged.Signed.Version)
	}
	data, err := md.ToBytes(true)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s: %w", f.Path, err)
	}
	if err := r.record(ctx, event{"role.sign", fmt.Sprintf("%s v%d", role, md.Signed.Version), map[string]any{"role": role, "version": md.Signed.Version, "keys": added, "staged": f.Path}}); err != nil {
		return nil, nil, err
	}
	if err := r.fs.WriteFile(f.Path, data, 0o644); err != nil {
		return nil, nil, fmt.Errorf("write %s: %w", f.Path, err)
	}
	f.Staged = &md
	return f, added, nil
}

// SignStagedFile adds key's signature to the staged role version in path (replacing
// an earlier one by the same key), refusing one that has expired. It works on the file
// alone, so that a key holder signs a copy away from the repository; which keys count
// is checked when it is published. It returns the key IDs that have signed.
func SignStagedFile(fsys FS, path string, key *Key, now time.Time) ([]string, error) {
	if fsys == nil {
		fsys = OSFS{}
	}
	md, out, err := signStaged(path, key, now)
	if err != nil {
		return nil, err
	}
	if err := fsys.WriteFile(path, out, 0o644); err != nil {
		return nil, fmt.Errorf("write %s: %w", path, err)
	}
	var ids []string
	for _, s := range md.Signatures {
		ids = append(ids, s.KeyID)
	}
	return ids, nil
}

// signStaged reads the staged role version in path and adds key's signature (replacing
// an earlier one by the same key), refusing one that has expired; it writes nothing and
// returns the signed metadata and its encoding.
func signStaged(path string, key *Key, now time.Time) (*metadata.Metadata[metadata.TargetsType], []byte, error) {
	md, err := readTargetsFile(path)
	if err != nil {
		return nil, nil, err
	}
	if !md.Signed.Expires.After(now) {
		return nil, nil, fmt.Errorf("%s expired at %s: it cannot be published; have it staged again", path, md.Signed.Expires.UTC().Format(time.RFC3339))
	}
	id := key.ID()
	md.Signatures = slices.DeleteFunc(md.Signatures, func(s metadata.Signature) bool { return s.KeyID == id })
	signer, err := key.Signer()
	if err != nil {
		return nil, nil, err
	}
	if _, err := md.Sign(signer); err != nil {
		return nil, nil, fmt.Errorf("sign %s: %w", path, err)
	}
	out, err := md.ToBytes(true)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s: %w", path, err)
	}
	return md, out, nil
}

// DescribeStaged says what the staged version next of role is and changes from cur
// (nil: not known here), one line each, for a key holder to review before signing:
// version and expiry; each target added, removed or changed, with its length, sha256
// and custom metadata; and, for the targets role, each delegation's keys (ADDED,
// REVOKED), threshold (THRESHOLD LOWERED) and paths.
func DescribeStaged(role string, cur, next *metadata.TargetsType, now time.Time) []string {
	var out []string
	v := fmt.Sprintf("%s v%d", role, next.Version)
	switch {
	case cur != nil:
		v += fmt.Sprintf(", replacing v%d", cur.Version)
		if cur.Version+1 != next.Version {
			v += fmt.Sprintf(" (STALE: staged from v%d; it cannot be published)", next.Version-1)
		}
	default:
		v += fmt.Sprintf(" (v%d not known here: compare it with --current FILE)", next.Version-1)
	}
	out = append(out, v)
	var was time.Time
	if cur != nil {
		was = cur.Expires
	}
	out = append(out, expiryLine(next.Expires, was, now))
	var old map[string]*metadata.TargetFiles
	if cur != nil {
		old = cur.Targets
	}
	describe := func(tf *metadata.TargetFiles) string {
		s := fmt.Sprintf("%d bytes, sha256 %s", tf.Length, hex.EncodeToString(tf.Hashes["sha256"]))
		if tf.Custom != nil {
			var b bytes.Buffer
			if json.Compact(&b, *tf.Custom) == nil {
				s += ", custom " + b.String()
			}
		}
		return s
	}
	changes := 0
	for _, p := range slices.Sorted(maps.Keys(next.Targets)) {
		tf := next.Targets[p]
		o, had := old[p]
		switch {
		case cur != nil && !had:
			out = append(out, fmt.Sprintf("ADDED %s: %s", p, describe(tf)))
			changes++
		case cur != nil && (!tf.Equal(*o) || customJSON(tf) != customJSON(o)):
			out = append(out, fmt.Sprintf("CHANGED %s: %s (was %s)", p, describe(tf), describe(o)))
			changes++
		case cur == nil:
			out = append(out, fmt.Sprintf("target %s: %s", p, describe(tf)))
		}
	}
	for _, p := range slices.Sorted(maps.Keys(old)) {
		if _, ok := next.Targets[p]; !ok {
			out = append(out, fmt.Sprintf("REMOVED %s: %s", p, describe(old[p])))
			changes++
		}
	}
	if cur != nil && changes == 0 {
		out = append(out, "targets: no change")
	}
	out = append(out, describeDelegations(cur, next)...)
	return out
}

func customJSON(tf *metadata.TargetFiles) string {
	if tf.Custom == nil {
		return ""
	}
	return string(*tf.Custom)
}

// describeDelegations lists the delegations of next, each against cur's.
func describeDelegations(cur, next *metadata.TargetsType) []string {
	if next.Delegations == nil {
		return nil
	}
	var out []string
	find := func(t *metadata.TargetsType, name string) *metadata.DelegatedRole {
		if t == nil || t.Delegations == nil {
			return nil
		}
		for i := range t.Delegations.Roles {
			if t.Delegations.Roles[i].Name == name {
				return &t.Delegations.Roles[i]
			}
		}
		return nil
	}
	for _, dr := range next.Delegations.Roles {
		od := find(cur, dr.Name)
		line := fmt.Sprintf("delegation %s: %d of %d keys", dr.Name, dr.Threshold, len(dr.KeyIDs))
		if od != nil && (od.Threshold != dr.Threshold || len(od.KeyIDs) != len(dr.KeyIDs)) {
			line += fmt.Sprintf(" (was %d of %d)", od.Threshold, len(od.KeyIDs))
		}
		if od != nil && dr.Threshold < od.Threshold {
			line += " THRESHOLD LOWERED"
		}
		var keys []string
		for _, id := range dr.KeyIDs {
			k := short(id)
			if kk := next.Delegations.Keys[id]; kk != nil {
				k += " " + kk.Type
			}
			if cur != nil && (od == nil || !slices.Contains(od.KeyIDs, id)) {
				k += " ADDED"
			}
			keys = append(keys, k)
		}
		if od != nil {
			for _, id := range od.KeyIDs {
				if !slices.Contains(dr.KeyIDs, id) {
					keys = append(keys, short(id)+" REVOKED")
				}
			}
		}
		line += ": " + strings.Join(keys, ", ") + "; paths " + strings.Join(dr.Paths, " ")
		if od != nil && !slices.Equal(od.Paths, dr.Paths) {
			line += " (was " + strings.Join(od.Paths, " ") + ")"
		}
		out = append(out, line)
	}
	if cur != nil && cur.Delegations != nil {
		for _, od := range cur.Delegations.Roles {
			if find(next, od.Name) == nil {
				out = append(out, fmt.Sprintf("delegation %s: REMOVED", od.Name))
			}
		}
	}
	return out
}

// DelegationChange changes the keys and threshold of a delegated role (models,
// runtimes): a change of the targets role.
type DelegationChange struct {
	Role       string
	AddKeys    []*metadata.Key
	RevokeKeys []string // key IDs
	Threshold  int      // 0: unchanged
}

// ChangeDelegation applies ch to the targets role's delegation and, when the role's
// current version no longer verifies under it (keys revoked, threshold raised),
// re-signs the role with the new delegation's keys in the same change, so that devices
// never meet a role their targets does not verify. Both are signed by the keys at hand
// (the targets keys, the delegated role's new keys); with keys.Stage set, a role whose
// threshold they do not meet stages the change (both roles, published together) for
// the holders. It returns the staged change, or nil when it was published.
func (r *Repo) ChangeDelegation(ctx context.Context, ch DelegationChange, keys *KeyRing) (*Staged, error) {
	if ch.Role != RoleModels && ch.Role != RoleRuntimes {
		return nil, fmt.Errorf("role keys: %q is not a delegated role: want models or runtimes (the targets role's keys and threshold change through 'edgeward root propose')", ch.Role)
	}
	if len(ch.AddKeys) == 0 && len(ch.RevokeKeys) == 0 && ch.Threshold == 0 {
		return nil, errors.New("role keys: nothing to change: give keys to add or revoke, or a threshold")
	}
	return r.updateOrStage(ctx, keys, func(t *txn) error {
		tg := t.st.Targets[metadata.TARGETS]
		before, _ := json.Marshal(tg.Signed.Delegations)
		for _, id := range ch.RevokeKeys {
			if err := tg.Signed.RevokeKey(id, ch.Role); err != nil {
				return fmt.Errorf("revoke %s key %s: %w", ch.Role, short(id), err)
			}
		}
		var added []string
		for _, k := range ch.AddKeys {
			id, err := k.ID()
			if err != nil {
				return err
			}
			if err := tg.Signed.AddKey(k, ch.Role); err != nil {
				return fmt.Errorf("add %s key %s: %w", ch.Role, short(id), err)
			}
			added = append(added, id)
		}
		d := tg.Signed.Delegations
		idx := slices.IndexFunc(d.Roles, func(dr metadata.DelegatedRole) bool { return dr.Name == ch.Role })
		if ch.Threshold != 0 {
			d.Roles[idx].Threshold = ch.Threshold
		}
		dr := d.Roles[idx]
		if dr.Threshold < 1 || dr.Threshold > len(dr.KeyIDs) {
			return fmt.Errorf("role keys: %s would need %d of %d keys: want 1 <= threshold <= keys", ch.Role, dr.Threshold, len(dr.KeyIDs))
		}
		if after, _ := json.Marshal(d); string(after) == string(before) {
			return fmt.Errorf("role keys: the %s delegation already is as asked (%d of %d keys): nothing changed", ch.Role, dr.Threshold, len(dr.KeyIDs))
		}
		t.touch(metadata.TARGETS)
		if err := tg.VerifyDelegate(ch.Role, t.st.Targets[ch.Role]); err != nil {
			t.touch(ch.Role) // re-signed by the new keys
		}
		t.record("role.keys", ch.Role, map[string]any{"role": ch.Role, "keys_added": added, "keys_revoked": ch.RevokeKeys,
			"threshold": dr.Threshold, "keys": dr.KeyIDs})
		return nil
	})
}
