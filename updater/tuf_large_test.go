package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// A models.json larger than the device accepts (a repository that grew it past the
// device's bound) fails with ErrMetadataTooLarge, reported as metadata_too_large, naming
// the role and what to do; a role within the bound still resolves.
func TestTUFRefusesOversizedRole(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.Delegate("models", "models/*/*", "probes/*/*")
	r.Delegate("runtimes", "runtimes/*/*")
	pad := json.RawMessage(fmt.Sprintf("%q", strings.Repeat("x", 4<<10)))
	for i := range 40 {
		p := artifact.TargetPath(artifact.KindModel, "m", fmt.Sprintf("1.0.%d", i), ".onnx")
		r.AddTarget(p, []byte(p), artifact.Meta{Kind: artifact.KindModel, Name: "m", Version: fmt.Sprintf("1.0.%d", i),
			Extra: map[string]json.RawMessage{"pad": pad}})
	}
	r.Publish()

	for _, c := range []struct {
		max     int64
		wantErr bool
	}{{64 << 10, true}, {1 << 20, false}} {
		dir := t.TempDir()
		PinRoot(dir, r.RootBytes(1))
		cl, err := NewTUF(TUFConfig{MetadataDir: dir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(), Downloader: testDownloader(nil), MaxTargetsBytes: c.max})
		if err != nil {
			t.Fatal(err)
		}
		if err := cl.Refresh(ctx); err != nil {
			t.Fatalf("Refresh (targets.json is small) = %v", err)
		}
		_, _, err = cl.Resolve(ctx, artifact.KindModel, "models/m/1.0.3.onnx")
		if !c.wantErr {
			if err != nil {
				t.Errorf("Resolve with a %d-byte bound = %v", c.max, err)
			}
			continue
		}
		if !errors.Is(err, ErrMetadataTooLarge) || !strings.Contains(err.Error(), "models.json") || !strings.Contains(err.Error(), "edgeward retire") {
			t.Fatalf("Resolve with models.json over %d bytes = %v; want ErrMetadataTooLarge naming models.json and the remedy", c.max, err)
		}
		if k := ClassifyError(err); k != wire.ErrorMetadataTooLarge {
			t.Errorf("ClassifyError = %q; want %q", k, wire.ErrorMetadataTooLarge)
		}
	}
}
