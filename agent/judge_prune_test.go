package agent

import (
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// TestPruneProbes: the probes directory keeps the probe set just used (and its partial
// download), plus the most recently used others up to keptProbeSets in all, and loses
// the older sets and other sets' abandoned partial downloads. It used to keep every
// probe set ever tried, and every failed download's partial file, for good.
func TestPruneProbes(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-time.Hour)
	for i := range 8 {
		p := filepath.Join(dir, "probes_m_"+string(rune('a'+i))+".json")
		if err := os.WriteFile(p, []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		at := old.Add(time.Duration(i) * time.Minute) // h is the newest
		os.Chtimes(p, at, at)
	}
	for _, extra := range []string{"probes_m_z.json.part", "probes_m_z.json.part.state", "probes_m_a.json.part"} {
		os.WriteFile(filepath.Join(dir, extra), []byte("x"), 0o644)
	}
	keep := filepath.Join(dir, "probes_m_a.json") // the oldest, used again now
	pruneProbes(dir, keep, keptProbeSets, slog.New(slog.DiscardHandler))
	entries, _ := os.ReadDir(dir)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	want := []string{"probes_m_a.json", "probes_m_a.json.part", "probes_m_f.json", "probes_m_g.json", "probes_m_h.json"}
	if !slices.Equal(got, want) {
		t.Fatalf("probes kept = %v; want %v", got, want)
	}
}
