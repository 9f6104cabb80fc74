package reposerver

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repository"
)

const publishHolderEnv = "EDGEWARD_TEST_PUBLISH_REPO"

// TestPublishHolder is not a test: run by TestAbandonedIncomingFilesRemoved in a child
// process, it publishes its stdin into the repository named by the environment, and is
// killed while it streams.
func TestPublishHolder(t *testing.T) {
	dir := os.Getenv(publishHolderEnv)
	if dir == "" {
		t.Skip("run by TestAbandonedIncomingFilesRemoved")
	}
	r, err := repository.Open(repository.Config{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	_, err = r.Publish(context.Background(), repository.PublishRequest{
		Meta:    artifact.Meta{Kind: artifact.KindModel, Name: "killed", Version: "1.0.0", Format: "onnx"},
		Ext:     ".onnx",
		Content: os.Stdin,
	}, &repository.KeyRing{})
	t.Fatalf("Publish returned %v; it should have been killed", err)
}

// incomingFiles lists blobs/incoming without its lock file.
func incomingFiles(t *testing.T, r *repository.Repo) []string {
	t.Helper()
	entries, err := os.ReadDir(r.IncomingDir())
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		if e.Name() != repository.IncomingLock {
			names = append(names, e.Name())
		}
	}
	return names
}

// killPublish starts a publish in a child process, waits until it has streamed into
// blobs/incoming, and SIGKILLs it.
func killPublish(t *testing.T, r *repository.Repo) {
	t.Helper()
	before := len(incomingFiles(t, r))
	cmd := exec.Command(os.Args[0], "-test.run=^TestPublishHolder$")
	cmd.Env = append(os.Environ(), publishHolderEnv+"="+r.Dir())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	if _, err := stdin.Write(bytes.Repeat([]byte("m"), 3<<20)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(incomingFiles(t, r)) == before {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("the child publish wrote nothing into blobs/incoming")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cmd.Process.Kill()
	cmd.Wait()
}

func hexSum(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// TestAbandonedIncomingFilesRemoved: the temporary files of publishes killed mid-stream
// (issue 14: 686 MiB left) are removed after a failed publish and when the server
// starts, and a publish in progress in another goroutine or process keeps its files.
func TestAbandonedIncomingFilesRemoved(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	f := newFixture(t, repository.KeyEd25519)
	ctx := context.Background()

	killPublish(t, f.repo)
	// Content a killed publish streamed completely but never moved into the store.
	if err := os.WriteFile(filepath.Join(f.repo.IncomingDir(), "0123456789abcdef"), []byte("orphan"), 0o644); err != nil {
		t.Fatal(err)
	}
	left := incomingFiles(t, f.repo)
	if len(left) != 2 || !strings.Contains(strings.Join(left, " "), ".tmp-") {
		t.Fatalf("after a killed publish incoming holds %q; want a .tmp- file and the orphan", left)
	}

	// A publish in progress (blocked on its client) is never swept.
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := f.publish(artifact.KindModel, "slow", "1.0.0", ".onnx", nil, func(r *repository.PublishRequest) { r.Content = pr })
		done <- err
	}()
	if _, err := pw.Write([]byte("first half ")); err != nil {
		t.Fatal(err)
	}
	if n, _, err := f.repo.SweepIncoming(); err != nil || n != 0 {
		t.Errorf("SweepIncoming() during a publish = %d, %v; want 0 files, nil", n, err)
	}
	if got := incomingFiles(t, f.repo); len(got) != 3 {
		t.Errorf("incoming during a publish = %q; want the two leftovers and the publish's file", got)
	}
	pw.Write([]byte("second half"))
	pw.Close()
	if err := <-done; err != nil {
		t.Fatalf("publish while a sweep was attempted = %v", err)
	}

	// A failed publish removes its own file and what killed publishes left.
	_, err := f.publish(artifact.KindModel, "broken", "1.0.0", ".onnx", nil, func(r *repository.PublishRequest) {
		r.Content = io.MultiReader(bytes.NewReader(make([]byte, 1<<20)), errReader{errors.New("connection reset by client")})
	})
	if err == nil {
		t.Fatal("publish from a failing reader = nil; want error")
	}
	if got := incomingFiles(t, f.repo); len(got) != 0 {
		t.Errorf("incoming after a failed publish = %q; want nothing", got)
	}

	// The server's start removes what killed publishes left.
	killPublish(t, f.repo)
	killPublish(t, f.repo)
	if got := incomingFiles(t, f.repo); len(got) != 2 {
		t.Fatalf("after two killed publishes incoming holds %q; want two .tmp- files", got)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(sctx, ln) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(incomingFiles(t, f.repo)) != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-served
	if got := incomingFiles(t, f.repo); len(got) != 0 {
		t.Errorf("incoming after the server started = %q; want nothing", got)
	}
	if _, err := os.Stat(f.repo.BlobPath(hexSum("first half second half"))); err != nil {
		t.Errorf("the publish that ran during the sweep lost its blob: %v", err)
	}
}
