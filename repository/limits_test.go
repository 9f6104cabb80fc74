package repository

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// setLimits writes limits into the repository's settings and reopens it, as an operator
// editing edgeward-repo.json would.
func (f *fixture) setLimits(t *testing.T, l Limits) {
	t.Helper()
	p := f.repo.path("edgeward-repo.json")
	var s settings
	if err := json.Unmarshal(readFile(t, p), &s); err != nil {
		t.Fatal(err)
	}
	s.Limits = l
	b, _ := json.Marshal(s)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Open(f.repo.cfg)
	if err != nil {
		t.Fatal(err)
	}
	f.repo = r
}

func bigExtra(n int) map[string]json.RawMessage {
	return map[string]json.RawMessage{"notes": json.RawMessage(fmt.Sprintf("%q", strings.Repeat("x", n)))}
}

// The attack of issue 15: a release manager publishes versions with huge custom
// metadata until models.json is past what devices accept. Each such publish is refused
// with ErrTooLarge, before its content is stored, and the repository is unchanged.
func TestCustomMetadataIsBounded(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	if got := f.repo.Limits(); got.MaxCustomBytes != DefaultMaxCustomBytes || got.MaxRoleBytes != DefaultMaxRoleBytes {
		t.Fatalf("Limits() = %+v; want the defaults", got)
	}
	before := snapshotFiles(t, f)
	for i := range 83 {
		_, err := f.publish(artifact.KindModel, "m", fmt.Sprintf("1.0.%d", i), ".onnx", []byte("model"), func(r *PublishRequest) {
			r.Meta.Extra = bigExtra(63 << 10)
		})
		if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "max_custom_bytes") {
			t.Fatalf("publish with 63 KiB of custom metadata = %v; want ErrTooLarge naming max_custom_bytes", err)
		}
	}
	if after := snapshotFiles(t, f); after != before {
		t.Errorf("refused publishes changed the repository:\n%s\nwant\n%s", after, before)
	}
	// Just under the bound is fine.
	if _, err := f.publish(artifact.KindModel, "m", "1.0.0", ".onnx", []byte("model"), func(r *PublishRequest) {
		r.Meta.Extra = bigExtra(DefaultMaxCustomBytes - 200)
	}); err != nil {
		t.Errorf("publish with custom metadata under the bound = %v", err)
	}
}

// A publish that would push a role past limits.max_role_bytes is refused with a clear
// error and changes nothing; the role on disk stays under the bound, and devices can
// still fetch it.
func TestRoleMetadataIsBounded(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	f.setLimits(t, Limits{MaxRoleBytes: 32 << 10})
	var err error
	published := 0
	for i := range 100 {
		_, err = f.publish(artifact.KindModel, "m", fmt.Sprintf("1.0.%d", i), ".onnx", []byte(fmt.Sprint("model ", i)), func(r *PublishRequest) {
			r.Meta.Extra = bigExtra(3 << 10)
		})
		if err != nil {
			break
		}
		published++
	}
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "models.json") || !strings.Contains(err.Error(), "edgeward retire") {
		t.Fatalf("publish past the role bound = %v; want ErrTooLarge naming models.json and 'edgeward retire'", err)
	}
	if published < 5 {
		t.Fatalf("only %d publishes before the bound; want several", published)
	}
	before := snapshotFiles(t, f)
	if _, err := f.publish(artifact.KindModel, "m", "9.0.0", ".onnx", []byte("one more"), func(r *PublishRequest) { r.Meta.Extra = bigExtra(3 << 10) }); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("publish again = %v; want ErrTooLarge", err)
	}
	if after := snapshotFiles(t, f); after != before {
		t.Errorf("the refused publish changed the repository")
	}
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(f.repo.path("repository", "metadata", fmt.Sprintf("%d.models.json", st.Targets[RoleModels].Signed.Version)))
	if err != nil || fi.Size() > 32<<10 {
		t.Errorf("models.json = %v, %v; want at most %d bytes", fi.Size(), err, 32<<10)
	}
	if len(st.Targets[RoleModels].Signed.Targets) != published {
		t.Errorf("models lists %d targets; want the %d published", len(st.Targets[RoleModels].Signed.Targets), published)
	}
	c := f.newClient()
	up := c.mustRefresh()
	if _, err := up.GetTargetInfo("models/m/1.0.0.onnx"); err != nil {
		t.Errorf("a device fetching models.json: %v", err)
	}
}

func TestLimitsAboveTheClientsAreRefused(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	p := f.repo.path("edgeward-repo.json")
	var s settings
	json.Unmarshal(readFile(t, p), &s)
	s.Limits = Limits{MaxRoleBytes: ClientMaxRoleBytes + 1}
	b, _ := json.Marshal(s)
	os.WriteFile(p, b, 0o644)
	if _, err := Open(f.repo.cfg); err == nil || !strings.Contains(err.Error(), "max_role_bytes") {
		t.Errorf("Open with max_role_bytes above the client's = %v; want an error", err)
	}
}
