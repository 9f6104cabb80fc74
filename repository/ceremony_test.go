package repository

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestFirstRootIsTheStagedOne: root v1 is the one Init staged from the holders' public
// keys, whatever file brings its signatures. A copy whose signed part was changed on its
// way (another root key, threshold 1) and signed by that key is refused; it was
// published before, the root every device then pins (found from outside, 2 Dec). The
// genuine copy, signed by two holders, is published, and the operator's file stays.
func TestFirstRootIsTheStagedOne(t *testing.T) {
	ctx := context.Background()
	var holders []*Key
	var pubs []*metadata.Key
	for range 3 {
		k, err := GenerateKey(metadata.ROOT, KeyEd25519, nil)
		if err != nil {
			t.Fatal(err)
		}
		holders, pubs = append(holders, k), append(pubs, k.Public)
	}
	clock := &fakeClock{t: time.Now().UTC().Truncate(time.Second)}
	res, err := Init(ctx, Config{Dir: t.TempDir(), Now: clock.Now, KDF: KDFParams{N: 1 << 10}, Recorder: &events{}}, InitOptions{
		KeyType: KeyEd25519, Passphrase: []byte(testPass), RootPublicKeys: pubs})
	if err != nil {
		t.Fatal(err)
	}
	repo := res.Repo
	staged, err := os.ReadFile(repo.ProposalPath(1))
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()

	// Mallory's copy: the holders' root keys replaced by hers, threshold 1, signed by her.
	mallory, err := GenerateKey(metadata.ROOT, KeyEd25519, nil)
	if err != nil {
		t.Fatal(err)
	}
	evil, err := metadata.Root().FromBytes(staged)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range slicesClone(evil.Signed.Roles[metadata.ROOT].KeyIDs) {
		if err := evil.Signed.RevokeKey(id, metadata.ROOT); err != nil {
			t.Fatal(err)
		}
	}
	if err := evil.Signed.AddKey(mallory.Public, metadata.ROOT); err != nil {
		t.Fatal(err)
	}
	evil.Signed.Roles[metadata.ROOT].Threshold = 1
	evilFile := filepath.Join(work, "evil.json")
	data, _ := evil.ToBytes(true)
	if err := os.WriteFile(evilFile, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := SignRootFile(nil, evilFile, mallory); err != nil {
		t.Fatal(err)
	}
	if _, err := repo.PublishRoot(ctx, evilFile, nil); err == nil || !strings.Contains(err.Error(), "not the root v1") {
		t.Fatalf("PublishRoot(a changed root v1 signed by its own key) = %v; want refused", err)
	}
	if _, err := os.Stat(filepath.Join(repo.MetadataDir(), "1.root.json")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a root v1 is in place after the refusal: %v", err)
	}

	// The genuine copy, carried around and signed by two holders.
	copyFile := filepath.Join(work, "copy.json")
	if err := os.WriteFile(copyFile, staged, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, h := range holders[:2] {
		if _, err := SignRootFile(nil, copyFile, h); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := repo.PublishRoot(ctx, copyFile, nil); err != nil || v != 1 {
		t.Fatalf("PublishRoot(the staged root v1, signed by 2 of 3) = %d, %v", v, err)
	}
	if _, err := os.Stat(copyFile); err != nil {
		t.Errorf("the operator's proposal file after the publish: %v; want it kept", err)
	}
}

// TestPendingProposalIsNotReplaced: while a root proposal is staged (a threshold change
// with a holder's signature), a key rotation or another proposal is refused rather than
// writing over it (which lost the change and its signatures, and a holder signing
// later endorsed what they had not reviewed); --replace discards it on purpose.
// Publishing a proposal from another file removes the staged one and keeps the file.
func TestPendingProposalIsNotReplaced(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	ctx := context.Background()
	if _, err := f.repo.ProposeRoot(ctx, RootChange{Thresholds: map[string]int{metadata.ROOT: 3}}); err != nil {
		t.Fatal(err)
	}
	f.signStagedRoot(0)
	if _, err := f.repo.RotateKey(ctx, metadata.TIMESTAMP, KeyEd25519, "", &KeyRing{}); !errors.Is(err, ErrProposalPending) {
		t.Fatalf("RotateKey while a proposal is pending = %v; want ErrProposalPending", err)
	}
	if _, err := f.repo.ProposeRoot(ctx, RootChange{}); !errors.Is(err, ErrProposalPending) {
		t.Fatalf("ProposeRoot while one is pending = %v; want ErrProposalPending", err)
	}
	prog, err := f.repo.RootProgress(ctx, "")
	if err != nil || prog.Threshold != 3 || prog.Signed+prog.CurrentSigned == 0 {
		t.Fatalf("the pending proposal after the refusals: %+v, %v; want the threshold change with its signature", prog, err)
	}
	// Replaced on purpose, then published from a copy: the copy stays, the staged file goes.
	path, err := f.repo.ProposeRoot(ctx, RootChange{Thresholds: map[string]int{metadata.ROOT: 3}, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(path)
	copyFile := filepath.Join(t.TempDir(), "copy.json")
	os.WriteFile(copyFile, data, 0o644)
	kr := f.keyring(f.rootKeyFiles(0, 1, 2)...)
	for _, file := range kr.Files {
		k, err := kr.Load(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := SignRootFile(nil, copyFile, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.repo.PublishRoot(ctx, copyFile, nil); err != nil {
		t.Fatalf("PublishRoot(copy): %v", err)
	}
	if _, err := os.Stat(copyFile); err != nil {
		t.Errorf("the operator's file after the publish: %v; want it kept", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the staged proposal after the publish: %v; want it removed", err)
	}
}

func slicesClone(s []string) []string { return append([]string(nil), s...) }
