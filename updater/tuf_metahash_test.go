package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// A mirror serves a targets role longer than the snapshot names it (the repository
// names every role's length and hash): the refresh fails as bytes that are not the ones
// signed (WrongBytes, retried, the mirror blamed), not as the catalogue outgrowing the
// device (ErrMetadataTooLarge, metadata_too_large, "retire old versions"), which is
// what it said when the snapshot's length became go-tuf's bound.
func TestTUFRoleLongerThanTheSnapshotNamesIt(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.NameHashes = true
	r.AddModel("iris", "1.0.0", 0)
	honest := t.TempDir()
	PinRoot(honest, r.RootBytes(1))
	if err := newClient(t, r, honest).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	var targets struct {
		Signed struct {
			Version int64 `json:"version"`
		} `json:"signed"`
	}
	b, err := os.ReadFile(filepath.Join(honest, "targets.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &targets); err != nil {
		t.Fatal(err)
	}
	// The same role, padded: valid JSON, a few hundred bytes longer, far below the
	// device's own bound.
	padded := strings.TrimSuffix(strings.TrimSpace(string(b)), "}") + fmt.Sprintf(`,"pad":%q}`, strings.Repeat("x", 500))
	r.Put(fmt.Sprintf("/metadata/%d.targets.json", targets.Signed.Version), []byte(padded))

	dir := t.TempDir()
	PinRoot(dir, r.RootBytes(1))
	err = newClient(t, r, dir).Refresh(ctx)
	if err == nil {
		t.Fatal("Refresh with a targets role longer than the snapshot names it succeeded")
	}
	if errors.Is(err, ErrMetadataTooLarge) || strings.Contains(err.Error(), "retire") {
		t.Errorf("Refresh = %v; want no ErrMetadataTooLarge and no advice to retire versions: the catalogue is small", err)
	}
	if !WrongBytes(err) || !strings.Contains(err.Error(), "not the file the repository signed") {
		t.Errorf("Refresh = %v; want WrongBytes saying the file is not the one signed", err)
	}
	if got := ClassifyError(err); got == wire.ErrorMetadataTooLarge {
		t.Errorf("ClassifyError(%v) = %s; want not %s", err, got, wire.ErrorMetadataTooLarge)
	}
}
