package repository

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// holder is a key holder with their own key file, away from the repository's key
// directories (the process test gives each their own passphrase too).
type holder struct {
	key  *Key
	file string
}

func newHolder(t *testing.T, role string) holder {
	t.Helper()
	k, err := GenerateKey(role, KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := WriteKeyFile(OSFS{}, t.TempDir(), k, []byte(testPass), KDFParams{N: 1 << 10})
	if err != nil {
		t.Fatal(err)
	}
	return holder{k, p}
}

// stagingKeys is the operator's key ring on the repository (its targets key, the
// delegated keys init made), staging what it cannot sign alone.
func (f *fixture) stagingKeys(files ...string) *KeyRing {
	kr := f.keyring(files...)
	kr.Stage = true
	return kr
}

// twoOfTwo makes models a 2-of-2 role of alice's and bob's keys (revoking the key init
// made), through a staged change both sign, and returns them.
func twoOfTwo(t *testing.T, f *fixture) (alice, bob holder) {
	t.Helper()
	ctx := context.Background()
	alice, bob = newHolder(t, RoleModels), newHolder(t, RoleModels)
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	old, _, _ := roleKeyIDs(st, RoleModels)
	staged, err := f.repo.ChangeDelegation(ctx, DelegationChange{Role: RoleModels, AddKeys: []*metadata.Key{alice.key.Public, bob.key.Public}, RevokeKeys: old, Threshold: 2}, f.stagingKeys())
	if err != nil {
		t.Fatalf("ChangeDelegation(models 2 of alice, bob) = %v", err)
	}
	// targets is signed by the operator's targets key; models, re-signed under the new
	// delegation, waits for both holders.
	if staged == nil || staged.Version(metadata.TARGETS) == 0 || staged.Version(RoleModels) == 0 {
		t.Fatalf("ChangeDelegation staged %+v; want targets and models", staged)
	}
	for _, h := range []holder{alice, bob} {
		if _, err := f.repo.SignStaged(ctx, RoleModels, h.key); err != nil {
			t.Fatalf("SignStaged(models) = %v", err)
		}
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); err != nil {
		t.Fatalf("PublishStaged(delegation change) = %v", err)
	}
	return alice, bob
}

// TestThresholdSigningOfDelegatedRole: models needs 2 of alice's and bob's keys. A
// publish by the operator, who holds neither, is staged (not served: a device does not
// see it), and published only once both have signed; a signature by a key not in the
// role does not count; a stale staged change (the role moved on meanwhile) is refused;
// the audit log names the signers.
func TestThresholdSigningOfDelegatedRole(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	c := f.newClient()
	c.mustRefresh()
	alice, bob := twoOfTwo(t, f)
	mallory := newHolder(t, RoleModels)
	c.mustRefresh()
	// One new key on the operator's machine does not replace the holders' keys.
	if _, err := f.repo.RotateKey(ctx, RoleModels, KeyEd25519, t.TempDir(), f.keyring()); err == nil || !strings.Contains(err.Error(), "role keys") {
		t.Fatalf("RotateKey(models, 2 of 2) = %v; want refused, naming 'role keys'", err)
	}

	res, err := f.publish(artifact.KindModel, "iris", "1.0.0", ".onnx", []byte("model one"), func(r *PublishRequest) {})
	if !errors.Is(err, ErrNeedsSignatures) {
		t.Fatalf("publish to a 2-of-2 role with a key ring that does not stage = %+v, %v; want ErrNeedsSignatures", res, err)
	}
	res, err = f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("model one"))}, f.stagingKeys())
	if err != nil || res.Staged == nil {
		t.Fatalf("publish with a staging key ring = %+v, %v; want staged", res, err)
	}
	if s := res.Staged.Roles[0]; s.Role != RoleModels || len(s.SignedBy) != 0 || s.Threshold != 2 || s.String() != fmt.Sprintf("models v%d: 0 of 2 signatures by its keys (2 more needed)", s.Version) {
		t.Fatalf("staged %+v (%s); want models, unsigned, 0 of 2", s, s)
	}
	up := c.mustRefresh()
	if _, err := up.GetTargetInfo("models/iris/1.0.0.onnx"); err == nil {
		t.Fatal("a device finds the staged model before it is published")
	}
	// Another change of models while one is staged is refused.
	if _, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "2.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("model two"))}, f.stagingKeys()); !errors.Is(err, ErrStagedPending) {
		t.Fatalf("a second staged publish = %v; want ErrStagedPending", err)
	}

	// A holder reviews it, on a copy away from the repository.
	sf, _, err := f.repo.Staged(ctx, RoleModels)
	if err != nil {
		t.Fatal(err)
	}
	desc := strings.Join(DescribeStaged(RoleModels, &sf.Current.Signed, &sf.Staged.Signed, f.clock.Now()), "\n")
	if !strings.Contains(desc, "ADDED models/iris/1.0.0.onnx: 9 bytes, sha256 ") || !strings.Contains(desc, `"name":"iris"`) {
		t.Fatalf("DescribeStaged does not show the target added with its hash and custom metadata:\n%s", desc)
	}
	cp := filepath.Join(t.TempDir(), "proposal.json")
	if err := os.WriteFile(cp, readFile(t, sf.Path), 0o644); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name    string
		signers []holder
		want    error // nil: published
	}{
		{"unsigned", nil, ErrThreshold},
		{"alice only", []holder{alice}, ErrThreshold},
		{"alice and a key not in the role", []holder{alice, mallory}, ErrThreshold},
		{"alice and bob", []holder{alice, mallory, bob}, nil},
	} {
		for _, h := range tc.signers {
			if _, err := SignStagedFile(nil, cp, h.key, f.clock.Now()); err != nil {
				t.Fatalf("%s: SignStagedFile = %v", tc.name, err)
			}
		}
		got, err := f.repo.PublishStaged(ctx, RoleModels, []string{cp})
		if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
			t.Fatalf("%s: PublishStaged = %+v, %v; want %v", tc.name, got, err, tc.want)
		}
		if err == nil && !slices.Equal(sorted(got.Roles[0].SignedBy), sorted([]string{alice.key.ID(), bob.key.ID()})) {
			t.Errorf("%s: published signed by %v; want alice and bob only (mallory's signature dropped)", tc.name, got.Roles[0].SignedBy)
		}
	}
	if _, err := SignStagedFile(nil, cp, mallory.key, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.SignStaged(ctx, RoleModels, mallory.key); !errors.Is(err, ErrNoStaged) {
		t.Errorf("SignStaged after publication = %v; want ErrNoStaged", err)
	}
	up = c.mustRefresh()
	if data, _, err := c.download(up, "models/iris/1.0.0.onnx"); err != nil || string(data) != "model one" {
		t.Fatalf("device download after publication = %q, %v", data, err)
	}
	if ev := strings.Join(f.events.all(), "\n"); !strings.Contains(ev, "repo.role.stage models v") || !strings.Contains(ev, "repo.publish models/iris/1.0.0.onnx") || !strings.Contains(ev, "repo.role.publish models v") {
		t.Errorf("events lack the staging, the target's publication and the role's:\n%s", ev)
	}

	// Stale: a renewal is staged, then models moves on (renewed by both holders at
	// once); the staged renewal is refused and can be discarded.
	if _, staged, err := f.repo.RenewOrStage(ctx, []string{RoleModels}, f.stagingKeys()); err != nil || staged == nil {
		t.Fatalf("RenewOrStage(models) = %v, %v; want staged", staged, err)
	}
	if _, err := f.repo.Renew(ctx, []string{RoleModels}, f.keyring(alice.file, bob.file)); err != nil {
		t.Fatalf("Renew with both holders' keys at hand = %v", err)
	}
	if _, err := f.repo.SignStaged(ctx, RoleModels, alice.key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.SignStaged(ctx, RoleModels, bob.key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); !errors.Is(err, ErrStaleStaged) {
		t.Fatalf("PublishStaged of a stale change = %v; want ErrStaleStaged", err)
	}
	if _, err := f.repo.DiscardStaged(ctx, RoleModels); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); !errors.Is(err, ErrNoStaged) {
		t.Fatalf("PublishStaged after discard = %v; want ErrNoStaged", err)
	}
	c.mustRefresh()
}

// TestThresholdOneRolesUnchanged: a role whose threshold is 1 is never staged, even by
// a key ring that stages: a missing key fails the publish as before, and nothing is
// staged.
func TestThresholdOneRolesUnchanged(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	moveAway(t, f.offDir, f.keys[RoleModels][0])
	_, err := f.repo.Publish(context.Background(), PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("x"))}, f.stagingKeys())
	var short *KeysShortError
	if !errors.As(err, &short) || !strings.Contains(err.Error(), "role models needs 1 of its keys") {
		t.Fatalf("publish without the models key = %v; want the missing key named", err)
	}
	if _, err := os.Stat(f.repo.path("staged", RoleModels)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was staged for a threshold-1 role: %v", err)
	}
}

// TestTargetsThresholdThroughRoot: the targets role's keys and threshold change by the
// root ceremony. Raising its threshold to 2 while the current targets carries one
// signature left a root under which the repository's own targets did not verify: the
// repository, and every device, failed to load it (found building threshold signing).
// Now root publish re-signs targets under the new root, with the keys at hand, or is
// refused, changing nothing. Then a delegation change (a targets change) is staged until
// the second targets holder signs.
func TestTargetsThresholdThroughRoot(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	c := f.newClient()
	c.mustRefresh()
	carol := newHolder(t, metadata.TARGETS)
	rootChange := func(ch RootChange, keys *KeyRing) error {
		t.Helper()
		prop, err := f.repo.ProposeRoot(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range f.rootKeyFiles(0, 1) {
			k, err := f.keyring().Load(file)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := SignRootFile(nil, prop, k, nil); err != nil {
				t.Fatal(err)
			}
		}
		_, err = f.repo.PublishRoot(ctx, prop, keys)
		return err
	}
	// Carol's key is added at threshold 1: targets is re-signed by one key.
	if err := rootChange(RootChange{AddKeys: map[string][]*metadata.Key{metadata.TARGETS: {carol.key.Public}}}, f.keyring()); err != nil {
		t.Fatalf("root v2 (add carol's targets key) = %v", err)
	}
	// Threshold 2 without carol's key at hand: refused, nothing changed.
	err := rootChange(RootChange{Thresholds: map[string]int{metadata.TARGETS: 2}, Replace: true}, f.keyring())
	if !errors.Is(err, ErrNeedsSignatures) {
		t.Fatalf("root v3 (targets threshold 2) without carol's key = %v; want ErrNeedsSignatures", err)
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatalf("Load after the refused root publish = %v", err)
	}
	// With both targets keys at hand (one passphrase here), targets is re-signed by both.
	if err := rootChange(RootChange{Thresholds: map[string]int{metadata.TARGETS: 2}, Replace: true}, f.keyring(carol.file)); err != nil {
		t.Fatalf("root v3 (targets threshold 2) with both keys = %v", err)
	}
	if _, err := f.repo.Load(ctx); err != nil {
		t.Fatalf("Load after root v3 = %v", err)
	}
	c.mustRefresh()

	// A targets change is staged for carol, then published.
	dave := newHolder(t, RoleRuntimes)
	staged, err := f.repo.ChangeDelegation(ctx, DelegationChange{Role: RoleRuntimes, AddKeys: []*metadata.Key{dave.key.Public}}, f.stagingKeys())
	if err != nil || staged == nil || staged.Version(metadata.TARGETS) == 0 || staged.Version(RoleRuntimes) != 0 {
		t.Fatalf("ChangeDelegation(add dave to runtimes) = %+v, %v; want targets staged alone", staged, err)
	}
	if _, err := f.repo.PublishStaged(ctx, metadata.TARGETS, nil); !errors.Is(err, ErrThreshold) {
		t.Fatalf("PublishStaged(targets, 1 of 2) = %v; want ErrThreshold", err)
	}
	if _, err := f.repo.SignStaged(ctx, metadata.TARGETS, carol.key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.PublishStaged(ctx, metadata.TARGETS, nil); err != nil {
		t.Fatalf("PublishStaged(targets, 2 of 2) = %v", err)
	}
	up := c.mustRefresh()
	for _, dr := range up.GetTrustedMetadataSet().Targets[metadata.TARGETS].Signed.Delegations.Roles {
		if dr.Name == RoleRuntimes && !slices.Contains(dr.KeyIDs, dave.key.ID()) {
			t.Errorf("device's runtimes delegation %v lacks dave's key", dr.KeyIDs)
		}
	}
}

// TestEveryChangeOfAThresholdRoleIsStaged: publish, retire and renew of a 2-of-2 role,
// with a key ring that holds neither key, each stage the role's next version and change
// nothing served; each is published once both holders have signed.
func TestEveryChangeOfAThresholdRoleIsStaged(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, bob := twoOfTwo(t, f)
	both := f.keyring(alice.file, bob.file)
	if _, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("one"))}, both); err != nil {
		t.Fatalf("publish with both holders' keys at hand = %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func() (*Staged, error)
		check  func(st *State) error
	}{
		{"publish", func() (*Staged, error) {
			res, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "2.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("two"))}, f.stagingKeys())
			if err != nil {
				return nil, err
			}
			return res.Staged, nil
		}, func(st *State) error {
			if _, ok := st.Targets[RoleModels].Signed.Targets["models/m/2.0.0.onnx"]; !ok {
				return errors.New("models/m/2.0.0.onnx not listed")
			}
			return nil
		}},
		{"retire", func() (*Staged, error) {
			res, err := f.repo.Retire(ctx, RetireRequest{Kind: artifact.KindModel, Name: "m", Versions: []string{"1.0.0"}}, f.stagingKeys())
			if err != nil {
				return nil, err
			}
			return res.Staged, nil
		}, func(st *State) error {
			if _, ok := st.Targets[RoleModels].Signed.Targets["models/m/1.0.0.onnx"]; ok {
				return errors.New("models/m/1.0.0.onnx still listed")
			}
			return nil
		}},
		{"renew", func() (*Staged, error) {
			_, staged, err := f.repo.RenewOrStage(ctx, []string{RoleModels}, f.stagingKeys())
			return staged, err
		}, func(*State) error { return nil }},
	} {
		before, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		staged, err := tc.change()
		if err != nil || staged == nil || staged.Version(RoleModels) != before.Targets[RoleModels].Signed.Version+1 {
			t.Fatalf("%s: staged %+v, %v; want models v%d staged", tc.name, staged, err, before.Targets[RoleModels].Signed.Version+1)
		}
		mid, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if mid.Timestamp.Signed.Version != before.Timestamp.Signed.Version || mid.Targets[RoleModels].Signed.Version != before.Targets[RoleModels].Signed.Version {
			t.Fatalf("%s: staging changed the served metadata", tc.name)
		}
		for _, h := range []holder{alice, bob} {
			if _, err := f.repo.SignStaged(ctx, RoleModels, h.key); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); err != nil {
			t.Fatalf("%s: PublishStaged = %v", tc.name, err)
		}
		after, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if after.Targets[RoleModels].Signed.Version != before.Targets[RoleModels].Signed.Version+1 {
			t.Errorf("%s: models v%d after publication; want v%d", tc.name, after.Targets[RoleModels].Signed.Version, before.Targets[RoleModels].Signed.Version+1)
		}
		if err := tc.check(after); err != nil {
			t.Errorf("%s: after publication: %v", tc.name, err)
		}
	}
	f.newClient().mustRefresh()
}

// TestRenewSeveralRolesStagesOnlyTheShortOne: 'repo renew --role targets --role models
// --role runtimes' (docs/REPOSITORY.md) with models 2 of 2 and the other keys at hand
// renews and publishes targets and runtimes, and stages models alone. It staged all
// three together: targets and runtimes waited for the models holders, and a runtimes
// publish meanwhile made the staged change stale, the holders' signatures lost. With
// every key at hand the roles are renewed in one change, as before.
func TestRenewSeveralRolesStagesOnlyTheShortOne(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, bob := twoOfTwo(t, f)
	version := func(role string) int64 {
		t.Helper()
		st, err := f.repo.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return st.Targets[role].Signed.Version
	}
	tg, md, rt := version(metadata.TARGETS), version(RoleModels), version(RoleRuntimes)
	all := []string{metadata.TARGETS, RoleModels, RoleRuntimes}
	out, staged, err := f.repo.RenewOrStage(ctx, append(all, RoleModels), f.stagingKeys()) // models named twice
	if err != nil || staged == nil || len(staged.Roles) != 1 || staged.Roles[0].Role != RoleModels || len(out) != 3 {
		t.Fatalf("RenewOrStage(targets, models, runtimes) = %v, %+v, %v; want models staged alone", out, staged, err)
	}
	if v := version(metadata.TARGETS); v != tg+1 {
		t.Errorf("targets v%d after the renewal; want v%d, renewed (its key is at hand)", v, tg+1)
	}
	if v := version(RoleRuntimes); v != rt+1 {
		t.Errorf("runtimes v%d after the renewal; want v%d, renewed (its key is at hand)", v, rt+1)
	}
	if v := version(RoleModels); v != md {
		t.Errorf("models v%d after the renewal; want v%d until its holders sign", v, md)
	}
	// A change of runtimes meanwhile does not make the staged models renewal stale.
	if _, err := f.publish(artifact.KindRuntime, "ort", "1.0.0", ".tar", []byte("runtime"), nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range []holder{alice, bob} {
		if _, err := f.repo.SignStaged(ctx, RoleModels, h.key); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); err != nil {
		t.Fatalf("PublishStaged(models renewal) after a runtimes publish = %v", err)
	}
	if v := version(RoleModels); v != md+1 {
		t.Errorf("models v%d after publication; want v%d", v, md+1)
	}
	f.newClient().mustRefresh()

	// Every key at hand: one change, one new snapshot.
	st, err := f.repo.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	snap := st.Snapshot.Signed.Version
	if _, staged, err := f.repo.RenewOrStage(ctx, all, f.stagingKeys(alice.file, bob.file)); err != nil || staged != nil {
		t.Fatalf("RenewOrStage with every key at hand = %+v, %v; want renewed", staged, err)
	}
	if st, err = f.repo.Load(ctx); err != nil || st.Snapshot.Signed.Version != snap+1 {
		t.Fatalf("snapshot after renewing three roles with every key at hand: %v, %v; want v%d (one change)", st.Snapshot.Signed.Version, err, snap+1)
	}
}

// TestRefusedSignatureIsNotRecorded: a signature SignStaged refuses (the staged version
// has expired) leaves no repo.role.sign record and the file as it was; one that cannot
// be recorded is not written. The record was made before signing, and the audit log
// named a signer who had signed nothing.
func TestRefusedSignatureIsNotRecorded(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, _ := twoOfTwo(t, f)
	res, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("one"))}, f.stagingKeys())
	if err != nil || res.Staged == nil {
		t.Fatalf("publish = %+v, %v; want staged", res, err)
	}
	path := res.Staged.Roles[0].Path
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	f.events.mu.Lock()
	f.events.fail = errors.New("audit log unavailable")
	f.events.mu.Unlock()
	if _, err := f.repo.SignStaged(ctx, RoleModels, alice.key); err == nil {
		t.Error("SignStaged with the audit log failing succeeded")
	}
	f.events.mu.Lock()
	f.events.fail = nil
	f.events.mu.Unlock()
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Error("a signature that could not be recorded was written to the staged file")
	}

	f.clock.Add(f.repo.Expiry().RoleLife(RoleModels) + time.Hour)
	n := len(f.events.all())
	if _, err := f.repo.SignStaged(ctx, RoleModels, alice.key); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Fatalf("SignStaged(expired) = %v; want refused as expired", err)
	}
	if got := f.events.all()[n:]; len(got) != 0 {
		t.Errorf("records for a refused signature: %q; want none", got)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Error("the staged file changed although the signature was refused")
	}
}

// TestCopyReencodedWithSortedKeysCounts: a holder's copy re-encoded by a JSON tool on
// the way (keys sorted, as 'jq -S' or Python's sort_keys do, also inside a target's
// custom metadata) signs the same canonical bytes: its signature counts. A copy whose
// content differs (a target added) is still refused.
func TestCopyReencodedWithSortedKeysCounts(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, bob := twoOfTwo(t, f)
	res, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("one"))}, f.stagingKeys())
	if err != nil || res.Staged == nil {
		t.Fatalf("publish = %+v, %v; want staged", res, err)
	}
	data, err := os.ReadFile(res.Staged.Roles[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatal(err)
	}
	sorted, _ := json.Marshal(m) // every object's keys sorted
	var compact bytes.Buffer
	if err := json.Compact(&compact, data); err != nil || bytes.Equal(compact.Bytes(), sorted) {
		t.Fatalf("sorting the keys changed nothing (%v): the test proves nothing", err)
	}
	dir := t.TempDir()
	cp, other := filepath.Join(dir, "copy.json"), filepath.Join(dir, "other.json")
	if err := os.WriteFile(cp, sorted, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := SignStagedFile(nil, cp, bob.key, f.clock.Now()); err != nil {
		t.Fatal(err)
	}
	md, err := readTargetsFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	md.Signed.Targets["models/m/9.0.0.onnx"] = md.Signed.Targets["models/m/1.0.0.onnx"]
	b, _ := md.ToBytes(true)
	if err := os.WriteFile(other, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.SignStaged(ctx, RoleModels, alice.key); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, []string{other}); err == nil || !strings.Contains(err.Error(), "signed content differs") {
		t.Fatalf("PublishStaged(a copy with a target added) = %v; want refused", err)
	}
	out, err := f.repo.PublishStaged(ctx, RoleModels, []string{cp})
	if err != nil {
		t.Fatalf("PublishStaged(bob's copy, re-encoded with sorted keys) = %v; want published", err)
	}
	if got := out.Roles[0].SignedBy; len(got) != 2 {
		t.Errorf("published signed by %v; want alice and bob", got)
	}
	up := f.newClient().mustRefresh()
	if _, err := up.GetTargetInfo("models/m/1.0.0.onnx"); err != nil {
		t.Errorf("a device does not find the published model: %v", err)
	}
}

// TestKeyListedTwiceCountsOnce: a delegation that lists one public key under two key
// IDs, the role signed once by it and the signature copied under the second ID. go-tuf
// counts one key, so progress must too: it said 2 of 2 ("enough") for a change that
// publication then refused.
func TestKeyListedTwiceCountsOnce(t *testing.T) {
	h := newHolder(t, RoleModels)
	twin := "0000000000000000000000000000000000000000000000000000000000000b0b"
	delegator := metadata.Targets(time.Now().Add(24 * time.Hour))
	delegator.Signed.Delegations = &metadata.Delegations{
		Keys: map[string]*metadata.Key{h.key.ID(): h.key.Public, twin: h.key.Public},
		Roles: []metadata.DelegatedRole{{Name: RoleModels, KeyIDs: []string{h.key.ID(), twin},
			Threshold: 2, Paths: []string{"models/*"}}},
	}
	md := metadata.Targets(time.Now().Add(24 * time.Hour))
	signer, err := h.key.Signer()
	if err != nil {
		t.Fatal(err)
	}
	sig, err := md.Sign(signer)
	if err != nil {
		t.Fatal(err)
	}
	md.Signatures = append(md.Signatures, metadata.Signature{KeyID: twin, Signature: sig.Signature})

	if got := validSigners(delegator, RoleModels, md); len(got) != 1 {
		t.Errorf("validSigners = %v; want one signer (one public key under two IDs)", got)
	}
	if err := delegator.VerifyDelegate(RoleModels, md); err == nil {
		t.Fatal("go-tuf accepted one key listed twice as 2 of 2; the test's premise is wrong")
	}
	if err := verifyRole(delegator, RoleModels, md); !errors.Is(err, ErrThreshold) || !strings.Contains(err.Error(), "needs 2 signatures by its keys, has 1 valid") {
		t.Errorf("verifyRole = %v; want ErrThreshold saying it has 1 valid of 2", err)
	}
}

// TestFailedStageLeavesNoRecord: a staged publish whose staged files cannot be written
// (a full disk) records nothing: the audit log used to say "role.stage" for a change
// that was never staged, because it was recorded before the files were written. And a
// stage whose record fails leaves no staged files behind.
func TestFailedStageLeavesNoRecord(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		setup func(f *fixture)
	}{
		{"the staged files cannot be written", func(f *fixture) { f.repo.fs = failingFS{match: ".models.change.json"} }},
		{"the record fails", func(f *fixture) {
			f.events.mu.Lock()
			f.events.fail = errors.New("database is locked")
			f.events.mu.Unlock()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, KeyEd25519)
			twoOfTwo(t, f)
			before := len(f.events.all())
			tc.setup(f)
			_, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("one"))}, f.stagingKeys())
			if err == nil {
				t.Fatal("staged publish with the failure = nil; want its error")
			}
			f.repo.fs = OSFS{}
			f.events.mu.Lock()
			f.events.fail = nil
			f.events.mu.Unlock()
			if got := f.events.all()[before:]; len(got) != 0 {
				t.Errorf("records of a change that was not staged: %q", got)
			}
			if vs := f.repo.stagedVersions(RoleModels); len(vs) != 0 {
				t.Errorf("staged models versions %v left behind", vs)
			}
			left, _ := os.ReadDir(f.repo.path("staged", RoleModels)) // temporary files too
			for _, e := range left {
				t.Errorf("staged file left behind: %s", e.Name())
			}
		})
	}
}

// TestAddStagedSignatures: copies of a staged version signed away from the repository
// bring their signatures to it one at a time (as they arrive through the server), only
// valid ones by the role's keys; a copy of other content or one adding nothing counts
// is refused and changes nothing; once the threshold is met, it publishes.
func TestAddStagedSignatures(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, bob := twoOfTwo(t, f)
	mallory := newHolder(t, RoleModels)
	res, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("model one"))}, f.stagingKeys())
	if err != nil || res.Staged == nil {
		t.Fatalf("staged publish = %+v, %v", res, err)
	}
	staged := res.Staged.Roles[0].Path
	signedCopy := func(h holder) []byte {
		t.Helper()
		c := filepath.Join(t.TempDir(), "copy.json")
		data, err := os.ReadFile(staged)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(c, data, 0o644)
		if _, err := SignStagedFile(nil, c, h.key, time.Now()); err != nil {
			t.Fatal(err)
		}
		out, _ := os.ReadFile(c)
		return out
	}
	before, _ := os.ReadFile(staged)
	for _, tc := range []struct {
		name string
		copy []byte
		says string
	}{
		{"a key not of the role", signedCopy(mallory), "no valid signature"},
		{"not JSON metadata", []byte("{"), "signed copy"},
		{"other content", otherContent(t, signedCopy(alice)), "signed content differs"},
	} {
		if _, _, err := f.repo.AddStagedSignatures(ctx, RoleModels, tc.copy); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.says) {
			t.Errorf("%s: AddStagedSignatures = %v; want ErrInvalid saying %q", tc.name, err, tc.says)
		}
	}
	if after, _ := os.ReadFile(staged); !bytes.Equal(before, after) {
		t.Fatal("a refused copy changed the staged file")
	}
	sf, added, err := f.repo.AddStagedSignatures(ctx, RoleModels, signedCopy(alice))
	if err != nil || len(added) != 1 || added[0] != alice.key.ID() {
		t.Fatalf("alice's copy: added %v, %v", added, err)
	}
	if have, threshold := sf.Progress(nil); have != 1 || threshold != 2 {
		t.Fatalf("after alice: %d of %d", have, threshold)
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); err == nil {
		t.Fatal("published with 1 of 2 signatures")
	}
	if _, _, err := f.repo.AddStagedSignatures(ctx, RoleModels, signedCopy(alice)); err == nil {
		t.Error("alice's signature again was taken as new")
	}
	if _, _, err := f.repo.AddStagedSignatures(ctx, RoleModels, signedCopy(bob)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.repo.PublishStaged(ctx, RoleModels, nil); err != nil {
		t.Fatalf("publish with both signatures: %v", err)
	}
	if got := f.events.all(); !slices.ContainsFunc(got, func(e string) bool { return strings.Contains(e, "repo.role.sign models") }) {
		t.Errorf("events %v; want repo.role.sign records", got)
	}
}

// otherContent is the metadata in data with its expiry moved (its signatures kept).
func otherContent(t *testing.T, data []byte) []byte {
	t.Helper()
	md, err := metadata.Targets().FromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	md.Signed.Expires = md.Signed.Expires.Add(time.Hour)
	out, err := md.ToBytes(true)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// A copy carrying a signature by a key of the role among thousands by keys outside it
// adds that one alone; an invalid one by the role's key adds nothing; two by one key
// are refused as the copy is read.
func TestAddStagedSignaturesKeepsOnlyWhatCounts(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, KeyEd25519)
	alice, _ := twoOfTwo(t, f)
	res, err := f.repo.Publish(ctx, PublishRequest{Meta: artifact.Meta{Kind: artifact.KindModel, Name: "iris", Version: "1.0.0", Format: "onnx"}, Ext: ".onnx", Content: bytes.NewReader([]byte("model one"))}, f.stagingKeys())
	if err != nil || res.Staged == nil {
		t.Fatalf("staged publish = %+v, %v", res, err)
	}
	c := filepath.Join(t.TempDir(), "copy.json")
	data, _ := os.ReadFile(res.Staged.Roles[0].Path)
	os.WriteFile(c, data, 0o644)
	if _, err := SignStagedFile(nil, c, alice.key, time.Now()); err != nil {
		t.Fatal(err)
	}
	signed, _ := os.ReadFile(c)
	md, err := metadata.Targets().FromBytes(signed)
	if err != nil {
		t.Fatal(err)
	}
	valid := md.Signatures[0]
	bad := valid
	bad.Signature = append([]byte(nil), valid.Signature...)
	bad.Signature[0] ^= 0xff
	copyWith := func(first metadata.Signature, more ...metadata.Signature) []byte {
		t.Helper()
		md.Signatures = append([]metadata.Signature{first}, more...)
		for i := range 5000 {
			md.Signatures = append(md.Signatures, metadata.Signature{KeyID: fmt.Sprintf("%064x", i), Signature: valid.Signature})
		}
		out, err := md.ToBytes(false)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	if _, _, err := f.repo.AddStagedSignatures(ctx, RoleModels, copyWith(bad, valid)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "multiple signatures") {
		t.Fatalf("a copy with two signatures by alice's key = %v; want refused", err)
	}
	if _, _, err := f.repo.AddStagedSignatures(ctx, RoleModels, copyWith(bad)); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "no valid signature") {
		t.Fatalf("a copy whose signature by alice's key is invalid = %v; want refused", err)
	}
	sf, added, err := f.repo.AddStagedSignatures(ctx, RoleModels, copyWith(valid))
	if err != nil {
		t.Fatal(err)
	}
	if len(added) != 1 || added[0] != alice.key.ID() || len(sf.Staged.Signatures) != 1 {
		t.Fatalf("added %v, staged signatures %d; want alice's alone", added, len(sf.Staged.Signatures))
	}
}
