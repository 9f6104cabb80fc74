package reposerver

import (
	"context"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/disktest"
	"github.com/edgeward/edgeward/repository"
)

// smallDisk mounts a tmpfs of size at dir and returns functions that fill it and free
// it again (disktest).
func smallDisk(t *testing.T, dir, size string) (fill, free func()) {
	t.Helper()
	disktest.Mount(t, dir, size)
	return disktest.Filler(t, dir)
}

// startRun starts Run with cfg (its Ready set here) and returns the plain listener's
// base URL and a function that stops the server as SIGTERM does (ctx cancelled, Run
// returns, every store closed); or Run's error if it returned before serving.
func startRun(t *testing.T, cfg Config) (base string, stop func(), err error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	cfg.Ready = func(h, _ net.Addr) { ready <- h }
	go func() { done <- Run(ctx, cfg) }()
	select {
	case addr := <-ready:
		stop = func() {
			cancel()
			if err := <-done; err != nil && err != context.Canceled {
				t.Errorf("Run after cancel = %v", err)
			}
		}
		return "http://" + addr.String(), stop, nil
	case err := <-done:
		cancel()
		return "", nil, err
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("Run did not start serving in 60 s")
	}
	return "", nil, nil
}

// TestRunStartsOnAFullDisk: a server stopped cleanly (as by SIGTERM) starts again after
// its disk filled up while it was down, and serves TUF metadata. Before, sqlite deleted
// fleet.db's -wal and -shm at the clean stop and could not create them again, and the
// start failed with "fleet store: open sqlite …/fleet.db: disk I/O error (4874)":
// nothing was served.
//
// With TLSListen (the embedded step-ca) too: WriteConfig rewrote stepca/ca.json at every
// start, and the start failed "embedded step-ca: stepca: write …/ca.json: no space left
// on device".
func TestRunStartsOnAFullDisk(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole server twice")
	}
	t.Run("plain", func(t *testing.T) { testRunStartsOnAFullDisk(t, Config{Listen: "127.0.0.1:0"}) })
	t.Run("tls", func(t *testing.T) {
		testRunStartsOnAFullDisk(t, Config{Listen: "127.0.0.1:0", TLSListen: "127.0.0.1:0"})
	})
}

func testRunStartsOnAFullDisk(t *testing.T, cfg Config) {
	dir := t.TempDir()
	fill, free := smallDisk(t, dir, "16m")
	repoDir := filepath.Join(dir, "repo")
	if _, err := repository.Init(context.Background(), repository.Config{Dir: repoDir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: repoDir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	cfg.Dir = repoDir
	_, stop, err := startRun(t, cfg)
	if err != nil {
		t.Fatalf("first start: %v", err)
	}
	stop()
	fill()
	defer free()
	base, stop, err := startRun(t, cfg)
	if err != nil {
		t.Fatalf("start on a full disk after a clean stop: %v; want it serving", err)
	}
	defer stop()
	for _, path := range []string{"/healthz", "/metadata/timestamp.json"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s on a full disk = %d; want 200", path, resp.StatusCode)
		}
	}
}
