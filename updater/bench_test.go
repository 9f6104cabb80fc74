package updater

import (
	"bufio"
	"context"
	"crypto/sha256"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/updater/tuftest"
)

// peakRSS returns VmHWM from /proc/self/status, in bytes (0 if unavailable).
func peakRSS() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10
		}
	}
	return 0
}

// BenchmarkDownload streams a 256 MiB generated target over HTTP into a file, verified
// against its sha256, and reports the process's peak RSS (server included).
//
//	go test -run '^$' -bench Download -benchtime 3x ./updater
func BenchmarkDownload(b *testing.B) {
	const size = 256 << 20
	h := sha256.New()
	io.CopyBuffer(h, &tuftest.Pattern{Size: size}, make([]byte, 1<<20))
	want := Want{Length: size, Hashes: map[string][]byte{"sha256": h.Sum(nil)}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.ServeContent(w, r, "", time.Time{}, &tuftest.Pattern{Size: size})
	}))
	defer srv.Close()
	dir := b.TempDir()
	d := &Downloader{}
	b.SetBytes(size)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dst := filepath.Join(dir, "payload")
		if err := d.Download(context.Background(), srv.URL, want, dst); err != nil {
			b.Fatal(err)
		}
		os.Remove(dst)
	}
	b.ReportMetric(float64(peakRSS())/(1<<20), "peak-rss-MiB")
}
