package main

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/edgeward/edgeward/updater/tuftest"
)

// TestInstallPeakRSS installs a large generated model (1 GiB, or EDGEWARD_RSS_TARGET_MB)
// with the agent binary and checks the agent's peak RSS (VmHWM, see peakRSS: the
// child's ru_maxrss would count this test process's memory, which earlier tests grew)
// stays under 64 MiB: downloads stream through a fixed buffer.
//
//	go test -run TestInstallPeakRSS -v ./cmd/edgeward-agent
func TestInstallPeakRSS(t *testing.T) {
	if testing.Short() {
		t.Skip("writes and hashes a 1 GiB target")
	}
	size := int64(1 << 30)
	if mb, err := strconv.Atoi(os.Getenv("EDGEWARD_RSS_TARGET_MB")); err == nil && mb > 0 {
		size = int64(mb) << 20
	}
	bin := buildAgent(t)
	r := tuftest.New(t)
	p := r.AddPattern("big", "1.0.0", size)
	state := t.TempDir()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	a := agentRunner{t: t, bin: bin, state: state}
	if code, _ := a.run("", "enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
		t.Fatal("enroll failed")
	}
	mib, out, err := peakRSS(bin, "install", "--state-dir", state, "--target", p)
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	peak := int64(mib * (1 << 20))
	fi, err := os.Stat(filepath.Join(state, "slots", "model", "a", "payload"))
	if err != nil || fi.Size() != size {
		t.Fatalf("staged payload: %v, %v; want %d bytes", fi, err, size)
	}
	t.Logf("installed %d MiB with peak RSS %.1f MiB", size>>20, float64(peak)/(1<<20))
	if peak >= 64<<20 {
		t.Errorf("peak RSS %d bytes; want < 64 MiB", peak)
	}
}
