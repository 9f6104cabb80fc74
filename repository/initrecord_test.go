package repository

import (
	"context"
	"strings"
	"testing"

	"github.com/theupdateframework/go-tuf/v2/metadata"
)

// dataRecorder keeps each event's data.
type dataRecorder struct{ data map[string]any }

func (d *dataRecorder) Record(ctx context.Context, actor, kind, subject string, data any) error {
	if kind == "repo.init" {
		d.data, _ = data.(map[string]any)
	}
	return nil
}

// TestInitRecordsEveryRolesKeys: repo.init names the key IDs of every role, the
// delegated models and runtimes among them, so that the log says which key signed what
// from the start (before, only the root keys were named, and the models key appeared in
// no record until its first rotation).
func TestInitRecordsEveryRolesKeys(t *testing.T) {
	rec := &dataRecorder{}
	res, err := Init(context.Background(), Config{Dir: t.TempDir(), KDF: KDFParams{N: 1 << 10}, Recorder: rec}, InitOptions{KeyType: KeyEd25519, Passphrase: []byte(testPass)})
	if err != nil {
		t.Fatal(err)
	}
	st, err := res.Repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ids, _ := rec.data["key_ids"].(map[string][]string)
	for _, role := range []string{metadata.ROOT, metadata.TARGETS, RoleModels, RoleRuntimes, metadata.SNAPSHOT, metadata.TIMESTAMP} {
		want, _, err := roleKeyIDs(st, role)
		if err != nil {
			t.Fatal(err)
		}
		if got := ids[role]; len(got) == 0 || strings.Join(got, ",") != strings.Join(want, ",") {
			t.Errorf("repo.init key_ids[%s] = %v; want %v", role, got, want)
		}
	}
}
