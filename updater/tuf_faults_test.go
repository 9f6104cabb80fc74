package updater

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/theupdateframework/go-tuf/v2/metadata"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// hangingServer accepts every request and never answers it (until the test ends), as a
// metadata server stuck behind a load balancer does.
func hangingServer(t *testing.T) *httptest.Server {
	t.Helper()
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs first: Close waits for the handlers
	return srv
}

// refreshWithin runs c.Refresh and fails the test if it has not returned within d.
func refreshWithin(t *testing.T, c *TUF, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- c.Refresh(context.Background()) }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		t.Fatalf("Refresh against a server that never answers has not returned after %v", d)
		return nil
	}
}

// A metadata server that accepts the connection and never answers fails the refresh
// with ErrMetadataTimeout within MetadataTimeout, whatever the HTTP client (the
// default one has no timeout), and the failure is an infrastructure one (retried).
func TestTUFRefreshTimesOut(t *testing.T) {
	r := tuftest.New(t)
	srv := hangingServer(t)
	for _, client := range []*http.Client{nil, {}, {Timeout: time.Hour}} {
		dir := t.TempDir()
		PinRoot(dir, r.RootBytes(1))
		c, err := NewTUF(TUFConfig{MetadataDir: dir, MetadataURL: srv.URL + "/metadata", HTTPClient: client,
			MetadataTimeout: 200 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		err = refreshWithin(t, c, 10*time.Second)
		if !errors.Is(err, ErrMetadataTimeout) || !strings.Contains(err.Error(), "2.root.json") || !strings.Contains(err.Error(), "200ms") {
			t.Fatalf("Refresh (client %+v) = %v; want ErrMetadataTimeout naming 2.root.json and the timeout", client, err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Refresh took %v with a 200ms metadata timeout", d)
		}
		if !Transient(err) || ClassifyError(err) != wire.ErrorDownload {
			t.Errorf("Transient(%v) = %v, ClassifyError = %q; want true, %q (the server, not the version)", err, Transient(err), ClassifyError(err), wire.ErrorDownload)
		}
	}
}

// go-tuf's own timeout argument, when it gives one, bounds the request too.
func TestMetaFetcherHonoursTimeoutArgument(t *testing.T) {
	srv := hangingServer(t)
	f := &metaFetcher{client: http.DefaultClient, ctx: context.Background(), timeout: time.Hour}
	done := make(chan error, 1)
	go func() {
		_, err := f.DownloadFile(srv.URL+"/metadata/timestamp.json", 1<<10, 100*time.Millisecond)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, ErrMetadataTimeout) {
			t.Fatalf("DownloadFile(timeout 100ms) = %v; want ErrMetadataTimeout", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("DownloadFile ignored its timeout argument")
	}
}

// A local non-root metadata file that does not parse (emptied or truncated by a crash,
// overwritten) is discarded and fetched again: the refresh succeeds and the file holds
// the repository's bytes again. It used to fail every later refresh with "unexpected
// end of JSON input".
func TestTUFDiscardsDamagedMetadata(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	r.Delegate("models", "models/*/*")
	p, _ := r.AddModel("iris", "1.0.0", 0)
	r.Publish()
	for _, file := range []string{"timestamp.json", "snapshot.json", "targets.json", "models.json"} {
		for name, damaged := range map[string][]byte{"empty": nil, "truncated": []byte(`{"signed": {"_type": "ti`),
			"not TUF": []byte(`[1, 2, 3]`), "another role": r.RootBytes(1)} {
			t.Run(file+"/"+name, func(t *testing.T) {
				dir := t.TempDir()
				PinRoot(dir, r.RootBytes(1))
				c := newClient(t, r, dir)
				if err := c.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
				if _, _, err := c.Resolve(ctx, artifact.KindModel, p); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(filepath.Join(dir, file), damaged, 0o600); err != nil {
					t.Fatal(err)
				}
				for i := range 2 {
					c := newClient(t, r, dir)
					if err := c.Refresh(ctx); err != nil {
						t.Fatalf("Refresh #%d with a damaged %s = %v; want it fetched again", i, file, err)
					}
					if _, _, err := c.Resolve(ctx, artifact.KindModel, p); err != nil {
						t.Fatalf("Resolve #%d with a damaged %s = %v", i, file, err)
					}
				}
				b, err := os.ReadFile(filepath.Join(dir, file))
				if err != nil || len(b) == 0 {
					t.Fatalf("%s after the refresh: %d bytes, %v; want it fetched again", file, len(b), err)
				}
				if root, _ := os.ReadFile(filepath.Join(dir, RootFile)); string(root) != string(r.RootBytes(1)) {
					t.Errorf("root.json changed while %s was repaired", file)
				}
			})
		}
	}
}

// Discarding a damaged file discards only that file: the versions of the files that
// parse remain floors, so a mirror replaying an older timestamp is still refused while
// the snapshot is being fetched again.
func TestTUFDamagedSnapshotKeepsTimestampFloor(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	old := get(t, r.MetadataURL()+"/timestamp.json")
	r.AddModel("iris", "1.0.0", 0)
	dir := t.TempDir()
	PinRoot(dir, r.RootBytes(1))
	if err := newClient(t, r, dir).Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "snapshot.json"), nil, 0o600)
	r.Put("/metadata/timestamp.json", old)
	err := newClient(t, r, dir).Refresh(ctx)
	if !errors.Is(err, &metadata.ErrBadVersionNumber{}) {
		t.Fatalf("Refresh with an older timestamp served and snapshot.json damaged = %v; want ErrBadVersionNumber (rollback refused)", err)
	}
}

func get(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return b
}

// An oversized timestamp.json is not the catalogue outgrowing the device (it does not
// grow with it): the error says the server is broken or hostile and does not ask for
// versions to be retired; an oversized targets role does.
func TestTooLargeWording(t *testing.T) {
	for _, c := range []struct {
		url        string
		size, max  int64
		want, dont []string
	}{
		{"https://u/metadata/timestamp.json", 52429236, 16384,
			[]string{"timestamp.json announces 52429236 bytes, more than the 16384 allowed", "broken or hostile"}, []string{"retire"}},
		{"https://u/metadata/3.root.json", 900000, 512000,
			[]string{"3.root.json announces 900000 bytes", "broken or hostile"}, []string{"retire"}},
		{"https://u/metadata/7.snapshot.json", -1, 2000000,
			[]string{"7.snapshot.json sends more than the 2000000 bytes allowed", "broken or hostile"}, []string{"retire"}},
		{"https://u/metadata/12.models.json", 6000000, 5000000,
			[]string{"12.models.json announces 6000000 bytes, more than the 5000000 allowed", "edgeward retire"}, []string{"hostile"}},
		{"https://u/metadata/targets.json", -1, 5000000,
			[]string{"targets.json sends more than", "edgeward retire"}, nil},
	} {
		err := tooLarge(c.url, c.size, c.max)
		if !errors.Is(err, ErrMetadataTooLarge) || !errors.Is(err, &metadata.ErrDownloadLengthMismatch{}) {
			t.Errorf("tooLarge(%q) = %v; want ErrMetadataTooLarge and go-tuf's length error", c.url, err)
		}
		for _, w := range c.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("tooLarge(%q) = %q; want it to say %q", c.url, err, w)
			}
		}
		for _, d := range c.dont {
			if strings.Contains(err.Error(), d) {
				t.Errorf("tooLarge(%q) = %q; must not say %q", c.url, err, d)
			}
		}
	}
}

// A mirror serving a huge timestamp.json fails the refresh with the timestamp's wording.
func TestTUFRefusesOversizedTimestamp(t *testing.T) {
	r := tuftest.New(t)
	r.Put("/metadata/timestamp.json", []byte(fmt.Sprintf(`{"pad": %q}`, strings.Repeat("x", 20000))))
	dir := t.TempDir()
	PinRoot(dir, r.RootBytes(1))
	err := newClient(t, r, dir).Refresh(context.Background())
	if !errors.Is(err, ErrMetadataTooLarge) || !strings.Contains(err.Error(), "timestamp.json announces") || strings.Contains(err.Error(), "retire") {
		t.Fatalf("Refresh with a 20 kB timestamp.json = %v; want ErrMetadataTooLarge blaming the mirror", err)
	}
}

// TestTUFOnFullDisk puts the metadata directory on a full file system: the client opens
// (go-tuf's updater.New used to rewrite root.json there and fail with ENOSPC), a refresh
// with nothing new succeeds, one that must persist new metadata fails with ENOSPC (an
// infrastructure failure, retried) and succeeds once space is freed. A root.json damaged
// on the full disk is restored from the backup in memory (the write back fails and is
// logged) and the backup is never overwritten with it.
func TestTUFOnFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatal("mounting a tmpfs needs root and EDGEWARD_REQUIRE_DEPS=1")
		}
		t.Skip("mounting a tmpfs needs root")
	}
	ctx := context.Background()
	r := tuftest.New(t)
	p, _ := r.AddModel("iris", "1.0.0", 0)
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("mount tmpfs: %v: %s (EDGEWARD_REQUIRE_DEPS=1)", err, out)
		}
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	backup := filepath.Join(t.TempDir(), "root.pinned")
	os.WriteFile(backup, r.RootBytes(1), 0o600)
	PinRoot(dir, r.RootBytes(1))
	open := func() *TUF {
		t.Helper()
		c, err := NewTUF(TUFConfig{MetadataDir: dir, MetadataURL: r.MetadataURL(), TargetsURL: r.TargetsURL(),
			Downloader: testDownloader(nil), RootBackup: backup})
		if err != nil {
			t.Fatalf("NewTUF on a full disk = %v; want it opened without writing", err)
		}
		return c
	}
	if err := open().Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	fill := func() {
		t.Helper()
		f, _ := os.OpenFile(filepath.Join(dir, "filler"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		defer f.Close()
		for _, chunk := range [][]byte{make([]byte, 64<<10), make([]byte, 256)} {
			for {
				if _, err := f.Write(chunk); err != nil {
					break
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "probe"), []byte("x"), 0o600); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("a write to the filled disk = %v; want ENOSPC", err)
		}
	}
	fill()

	c := open()
	if err := c.Refresh(ctx); err != nil {
		t.Errorf("Refresh on a full disk with nothing new = %v; want nil (nothing to write)", err)
	}
	if _, _, err := c.Resolve(ctx, artifact.KindModel, p); err != nil {
		t.Errorf("Resolve on a full disk = %v", err)
	}
	r.AddModel("iris", "1.1.0", 0)
	err := open().Refresh(ctx)
	if !errors.Is(err, syscall.ENOSPC) || !Transient(err) || ClassifyError(err) != wire.ErrorNoSpace {
		t.Errorf("Refresh on a full disk with new metadata = %v; want ENOSPC, no_space, transient", err)
	}

	os.Remove(filepath.Join(dir, "filler"))
	if err := open().Refresh(ctx); err != nil {
		t.Fatalf("Refresh once space is freed = %v", err)
	}

	os.Truncate(filepath.Join(dir, RootFile), 0) // a crash while it was rewritten
	fill()
	c = open()
	if err := c.Refresh(ctx); err != nil {
		t.Errorf("Refresh with root.json damaged on a full disk, nothing new = %v; want nil (the backup is the trusted root)", err)
	}
	if b, _ := os.ReadFile(backup); string(b) != string(r.RootBytes(1)) {
		t.Fatalf("the root backup was overwritten with %d bytes", len(b))
	}

	os.Remove(filepath.Join(dir, "filler"))
	if err := open().Refresh(ctx); err != nil {
		t.Fatalf("Refresh once space is freed = %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, RootFile)); string(b) != string(r.RootBytes(1)) {
		t.Errorf("root.json not restored from the backup once space is freed")
	}
}
