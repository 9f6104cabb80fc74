package updater

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// BenchmarkInstallPath decomposes the agent's install throughput (docs/BENCHMARKS.md,
// row 2): the same 256 MiB file from a file server in this process, written to disk by a
// plain copy (what curl does), then with sha256, then with a final fsync, then by the
// Downloader with its defaults (straight to the disk), through the page cache, and with
// other buffer sizes and checkpoint intervals.
//
//	go test -run '^$' -bench InstallPath -benchtime 3x -count 6 ./updater
//
// EDGEWARD_BENCH_INSTALL_MIB sets another size (the driver's second size is 1024).
func BenchmarkInstallPath(b *testing.B) {
	size := int64(256 << 20)
	if v := os.Getenv("EDGEWARD_BENCH_INSTALL_MIB"); v != "" {
		mib, err := strconv.ParseInt(v, 10, 64)
		if err != nil || mib <= 0 {
			b.Fatalf("EDGEWARD_BENCH_INSTALL_MIB=%q: want a positive number of MiB", v)
		}
		size = mib << 20
	}
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{1}).Read(data)
	if err := os.WriteFile(src, data, 0o644); err != nil {
		b.Fatal(err)
	}
	sum := sha256.Sum256(data)
	data = nil
	srv := httptest.NewServer(http.FileServer(http.Dir(dir)))
	defer srv.Close()
	url := srv.URL + "/src"
	want := Want{Length: size, Hashes: map[string][]byte{"sha256": sum[:]}}
	dst := filepath.Join(b.TempDir(), "dst")

	copyTo := func(b *testing.B, hash, sync bool) {
		resp, err := srv.Client().Get(url)
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		f, err := os.Create(dst)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		var w io.Writer = f
		h := sha256.New()
		if hash {
			w = io.MultiWriter(f, h)
		}
		if _, err := io.CopyBuffer(w, resp.Body, make([]byte, 64<<10)); err != nil {
			b.Fatal(err)
		}
		if hash && string(h.Sum(nil)) != string(sum[:]) {
			b.Fatal("hash mismatch")
		}
		if sync {
			if err := f.Sync(); err != nil {
				b.Fatal(err)
			}
		}
	}
	cases := []struct {
		name string
		run  func(b *testing.B)
	}{
		{"copy", func(b *testing.B) { copyTo(b, false, false) }},
		{"copy+sha256", func(b *testing.B) { copyTo(b, true, false) }},
		{"copy+fsync", func(b *testing.B) { copyTo(b, false, true) }},
		{"copy+sha256+fsync", func(b *testing.B) { copyTo(b, true, true) }},
	}
	for _, d := range []struct {
		name string
		d    *Downloader
	}{
		{"Downloader/defaults", &Downloader{}},
		{"Downloader/page-cache", &Downloader{noDirect: true}},
		{"Downloader/page-cache,no-writeback", &Downloader{noDirect: true, noWriteback: true}},
		{"Downloader/buffer=256KiB", &Downloader{BufferSize: 256 << 10}},
		{"Downloader/buffer=4MiB", &Downloader{BufferSize: 4 << 20}},
		{"Downloader/checkpoint=8MiB", &Downloader{CheckpointBytes: 8 << 20, CheckpointInterval: -1}},
		{"Downloader/no-checkpoints", &Downloader{CheckpointBytes: 1 << 40}},
	} {
		d.d.Client = srv.Client()
		cases = append(cases, struct {
			name string
			run  func(b *testing.B)
		}{d.name, func(b *testing.B) {
			if err := d.d.Download(context.Background(), url, want, dst); err != nil {
				b.Fatal(err)
			}
		}})
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(size)
			for range b.N {
				os.Remove(dst)
				c.run(b)
			}
		})
	}
}
