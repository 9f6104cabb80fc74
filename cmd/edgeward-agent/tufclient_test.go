package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/edgeward/edgeward/updater/tuftest"
)

func names(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		out = append(out, e.Name())
	}
	slices.Sort(out)
	return out
}

// TestTUFClientProtocol drives the tuf-conformance client-under-test CLI.
func TestTUFClientProtocol(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, d1 := r.AddModel("iris", "1.0.0", 0)
	p2, d2 := r.AddModel("wine", "1.0.0", 0)
	tmp := t.TempDir()
	mdir, tdir := filepath.Join(tmp, "metadata"), filepath.Join(tmp, "targets")
	os.Mkdir(mdir, 0o755)
	os.Mkdir(tdir, 0o755)
	rootFile := filepath.Join(tmp, "initial_root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o644)
	r.RotateRoot()

	client := func(args ...string) int {
		var out, errb bytes.Buffer
		code := run(ctx, append([]string{"tuf-client"}, args...), &out, &errb)
		t.Logf("tuf-client %q = %d\n%s%s", args, code, out.String(), errb.String())
		return code
	}
	md := []string{"--metadata-dir", mdir}
	mu := []string{"--metadata-url", r.MetadataURL()}
	dl := func(names ...string) []string {
		args := append(append([]string{}, md...), mu...)
		for _, n := range names {
			args = append(args, "--target-name", n)
		}
		return append(args, "--target-base-url", r.TargetsURL(), "--target-dir", tdir, "download")
	}

	for _, tc := range []struct {
		name string
		args []string
		want int
	}{
		{"init", append(md, "init", rootFile), 0},
		{"init without root", append(md, "init"), 1},
		{"command before flags", append([]string{"refresh"}, md...), 1},
		{"refresh", append(append(md, mu...), "refresh"), 0},
		{"refresh again", append(mu, append(md, "refresh")...), 0},
		{"download two", dl(p1, p2), 0},
		{"download cached", dl(p1), 0},
		{"unknown target", dl(p1, "models/iris/9.9.9.onnx"), 1},
		{"unknown command", append(md, "frobnicate"), 1},
	} {
		if got := client(tc.args...); got != tc.want {
			t.Errorf("%s: exit %d; want %d", tc.name, got, tc.want)
		}
	}
	if got, want := names(t, mdir), []string{"root.json", "snapshot.json", "targets.json", "timestamp.json"}; !slices.Equal(got, want) {
		t.Errorf("metadata dir = %v; want %v", got, want)
	}
	if got, want := names(t, tdir), []string{url.QueryEscape(p1), url.QueryEscape(p2)}; !slices.Equal(got, want) {
		t.Errorf("target dir = %v; want %v", got, want)
	}
	for p, d := range map[string][]byte{p1: d1, p2: d2} {
		if got, _ := os.ReadFile(filepath.Join(tdir, url.QueryEscape(p))); !bytes.Equal(got, d) {
			t.Errorf("downloaded %s differs", p)
		}
	}
	if n := r.Hits("/targets/"); n != 2 {
		t.Errorf("%d target requests; want 2 (cached targets are not downloaded again)", n)
	}
	root, _ := os.ReadFile(filepath.Join(mdir, "root.json"))
	if !bytes.Equal(root, r.RootBytes(2)) {
		t.Errorf("root.json is not the rotated root")
	}

	// A changed target is downloaded again to the same file name; a tampered one is refused
	// and leaves no stray file.
	r.AddTarget(p1, []byte("new bytes"), nil)
	r.Publish()
	if client(dl(p1)...) != 0 {
		t.Fatal("download of a changed target failed")
	}
	if got, _ := os.ReadFile(filepath.Join(tdir, url.QueryEscape(p1))); string(got) != "new bytes" {
		t.Errorf("changed target not replaced: %q", got)
	}
	r.AddTarget(p2, []byte("v2 bytes"), nil)
	r.Publish()
	os.Remove(filepath.Join(tdir, url.QueryEscape(p2)))
	r.Put("/targets/models/wine/"+sha256Hex([]byte("v2 bytes"))+".1.0.0.onnx", []byte("evil byte"))
	r.Put("/targets/models/wine/"+sha512Hex([]byte("v2 bytes"))+".1.0.0.onnx", []byte("evil byte"))
	if client(dl(p2)...) != 1 {
		t.Error("download of tampered bytes succeeded")
	}
	if got, want := names(t, tdir), []string{url.QueryEscape(p1)}; !slices.Equal(got, want) {
		t.Errorf("target dir after a refused download = %v; want %v", got, want)
	}
}

func sha256Hex(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
func sha512Hex(b []byte) string { s := sha512.Sum512(b); return hex.EncodeToString(s[:]) }
