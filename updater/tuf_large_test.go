package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// A models.json larger than the device accepts (a repository that grew it past the
// device's bound) fails with ErrMetadataTooLarge, reported as metadata_too_large, naming
// the role and what to do; a role within the bound still resolves.
//
// The repository's snapshot names each role's length (since 2 Dec), and go-tuf then
// asks for that length instead of the device's bound: a role past the bound was
// downloaded whole and accepted (found in review, 2 Dec). Both namings are checked.
func TestTUFRefusesOversizedRole(t *testing.T) {
	for _, hashes := range []bool{false, true} {
		t.Run(fmt.Sprintf("snapshot names lengths %v", hashes), func(t *testing.T) { refusesOversizedRole(t, hashes) })
	}
}

func refusesOversizedRole(t *testing.T, hashes bool) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.NameHashes = hashes
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

// The timestamp names the snapshot's length, and go-tuf asks for that length: a
// timestamp signed by a stolen key could name any length, and the device read that much.
// The fetcher keeps the device's own bound on the snapshot, as on a targets role.
func TestTUFSnapshotLengthBoundedByDevice(t *testing.T) {
	big := strings.Repeat("x", 64<<10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, big) }))
	defer srv.Close()
	f := &metaFetcher{client: http.DefaultClient, ctx: context.Background(), timeout: time.Minute, targetsMax: 16 << 10, snapshotMax: 8 << 10}
	for _, c := range []struct {
		file string
		max  int64
	}{{"7.snapshot.json", 8 << 10}, {"7.models.json", 16 << 10}} {
		_, err := f.DownloadFile(srv.URL+"/metadata/"+c.file, 1<<30, 0)
		if !errors.Is(err, ErrMetadataTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("more than the %d", c.max)) {
			t.Errorf("DownloadFile(%s, 64 KiB served, 1 GiB asked) = %v; want ErrMetadataTooLarge at the device's bound %d", c.file, err, c.max)
		}
	}
	// root and timestamp keep go-tuf's bounds, as passed.
	if b, err := f.DownloadFile(srv.URL+"/metadata/timestamp.json", 1<<20, 0); err != nil || len(b) != len(big) {
		t.Errorf("DownloadFile(timestamp.json, 64 KiB, bound 1 MiB) = %d bytes, %v", len(b), err)
	}
}
