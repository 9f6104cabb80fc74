package repository

import (
	"bytes"
	"context"
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// TestAgentTargets: the agent's own builds are targets (agents/NAME/VERSION) signed by
// the runtimes role, which a TUF client verifies like any other; a repository created
// before agent targets gets the delegation added, signed with the targets key, at its
// first agent publish, and without that key (or through a key ring for the online
// roles only) nothing changes.
func TestAgentTargets(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	c := f.newClient()
	res, err := f.publish(artifact.KindAgent, artifact.AgentBinary, "1.4.0", "", []byte("agent build"), nil)
	if err != nil {
		t.Fatalf("publish agent: %v", err)
	}
	if res.Role != RoleRuntimes || res.Path != "agents/edgeward-agent/1.4.0" {
		t.Fatalf("publish agent = %+v; want agents/edgeward-agent/1.4.0 signed by runtimes", res)
	}
	if _, err := f.publish(artifact.KindAgent, "edgeward-runtime.aarch64", "1.4.0", "", []byte("runtime build"), nil); err != nil {
		t.Fatalf("publish runtime binary for aarch64: %v", err)
	}
	if _, err := f.publish(artifact.KindAgent, "busybox", "1.0.0", "", []byte("x"), nil); !errors.Is(err, ErrInvalid) {
		t.Fatalf("publish agent target named busybox = %v; want ErrInvalid", err)
	}
	up := c.mustRefresh()
	if data, _, err := c.download(up, "agents/edgeward-agent/1.4.0"); err != nil || string(data) != "agent build" {
		t.Fatalf("client download of the agent target = %q, %v", data, err)
	}

	// An older repository: runtimes is delegated runtimes/*/* only.
	err = f.repo.update(context.Background(), f.keyring(), func(tx *txn) error {
		for i, r := range tx.st.Targets[metadata.TARGETS].Signed.Delegations.Roles {
			if r.Name == RoleRuntimes {
				tx.st.Targets[metadata.TARGETS].Signed.Delegations.Roles[i].Paths = []string{"runtimes/*/*"}
			}
		}
		tx.touch(metadata.TARGETS)
		delete(tx.st.Targets[RoleRuntimes].Signed.Targets, "agents/edgeward-agent/1.4.0")
		delete(tx.st.Targets[RoleRuntimes].Signed.Targets, "agents/edgeward-runtime.aarch64/1.4.0")
		tx.touch(RoleRuntimes)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c.mustRefresh()
	targetsKey := f.keys[metadata.TARGETS][0]
	moved := t.TempDir() + "/targets.key"
	if err := os.Rename(targetsKey, moved); err != nil {
		t.Fatal(err)
	}
	before := snapshotFiles(t, f)
	if _, err := f.publish(artifact.KindAgent, artifact.AgentBinary, "1.5.0", "", []byte("agent 1.5"), nil); err == nil {
		t.Fatal("publish agent into an older repository without the targets key succeeded")
	}
	if after := snapshotFiles(t, f); after != before {
		t.Fatalf("a refused agent publish changed the metadata:\n%s\nthen\n%s", before, after)
	}
	if err := os.Rename(moved, targetsKey); err != nil {
		t.Fatal(err)
	}
	// An online signer (the server's --sign-delegated ring) never opens the targets
	// key, though it lies in the directory searched under the same passphrase.
	online := f.keyring()
	online.Roles = DelegatedAndOnlineRoles()
	req := PublishRequest{Meta: artifact.Meta{Kind: artifact.KindAgent, Name: artifact.AgentBinary, Version: "1.5.0"}, Content: bytes.NewReader([]byte("agent 1.5"))}
	if _, err := f.repo.Publish(context.Background(), req, online); !errors.Is(err, ErrRoleNotHeld) {
		t.Fatalf("publish needing the targets key through an online key ring = %v; want ErrRoleNotHeld", err)
	}
	if after := snapshotFiles(t, f); after != before {
		t.Fatalf("a publish refused by the online key ring changed the metadata:\n%s\nthen\n%s", before, after)
	}
	if _, err := f.publish(artifact.KindAgent, artifact.AgentBinary, "1.5.0", "", []byte("agent 1.5"), nil); err != nil {
		t.Fatalf("publish agent into an older repository with the targets key: %v", err)
	}
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range st.Targets[metadata.TARGETS].Signed.Delegations.Roles {
		if r.Name == RoleRuntimes && !slices.Contains(r.Paths, "agents/*/*") {
			t.Fatalf("runtimes delegation = %v; want agents/*/* added", r.Paths)
		}
	}
	up = c.mustRefresh()
	if data, _, err := c.download(up, "agents/edgeward-agent/1.5.0"); err != nil || string(data) != "agent 1.5" {
		t.Fatalf("client download after the delegation was extended = %q, %v", data, err)
	}
}

// TestKeyRingRoles: a key ring limited to some roles refuses the others before it
// reads a key file or asks for the passphrase.
func TestKeyRingRoles(t *testing.T) {
	asked := 0
	kr := &KeyRing{
		Files:      []string{t.TempDir() + "/absent.key"},
		Passphrase: func() ([]byte, error) { asked++; return []byte(testPass), nil },
		Roles:      DelegatedAndOnlineRoles(),
	}
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, "someone-else"} {
		if _, err := kr.Find(role, []string{"abc"}, 1, nil); !errors.Is(err, ErrRoleNotHeld) {
			t.Errorf("Find(%s) = %v; want ErrRoleNotHeld", role, err)
		}
	}
	if asked != 0 {
		t.Errorf("the passphrase was asked for %d times; want never", asked)
	}
	// A role it holds goes on to look for the key (and here finds its file missing).
	if _, err := kr.Find(RoleModels, []string{"abc"}, 1, nil); err == nil || errors.Is(err, ErrRoleNotHeld) {
		t.Errorf("Find(models) = %v; want the missing key file named", err)
	}
}
