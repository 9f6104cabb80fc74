package durable

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRemoveInterrupted kills a process in the middle of a WriteFrom (SIGKILL, as a crash
// or a power cut leaves it): its temporary file stays beside the file it was to replace,
// and RemoveInterrupted removes it and nothing else. Before, nothing ever removed such a
// file (found from outside, 2 Dec, reading what 24 kills of an agent could leave).
func TestRemoveInterrupted(t *testing.T) {
	if dir := os.Getenv("DURABLE_TEST_WRITE_INTO"); dir != "" {
		// The child: a write that never ends; the parent kills it.
		r, _ := io.Pipe()
		WriteFrom(filepath.Join(dir, "measurements.json"), io.MultiReader(strings.NewReader("partial"), r), 0o600)
		select {}
	}
	dir := t.TempDir()
	sub := filepath.Join(dir, "tuf")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	keep := map[string]string{
		filepath.Join(dir, "measurements.json"): "old log",
		filepath.Join(dir, "notes.tmp-1"):       "not a write's temporary file",
		filepath.Join(dir, ".hidden.tmp-x1"):    "not one either",
		filepath.Join(sub, "root.json"):         "{}",
	}
	for p, s := range keep {
		if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	child := exec.Command(os.Args[0], "-test.run=^TestRemoveInterrupted$")
	child.Env = append(os.Environ(), "DURABLE_TEST_WRITE_INTO="+dir)
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	var tmp string
	for deadline := time.Now().Add(30 * time.Second); tmp == ""; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the child's write made no temporary file in 30 s")
		}
		m, _ := filepath.Glob(filepath.Join(dir, ".measurements.json.tmp-*"))
		if len(m) == 1 {
			tmp = m[0]
		}
	}
	child.Process.Kill()
	child.Wait()
	// One more in a subdirectory, as old as the first.
	tufTmp := filepath.Join(sub, ".timestamp.json.tmp-2518")
	if err := os.WriteFile(tufTmp, []byte("partial"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A write in progress in this process, begun after before, is spared.
	before := time.Now()
	time.Sleep(20 * time.Millisecond)
	mine := filepath.Join(dir, ".agent.json.tmp-77")
	if err := os.WriteFile(mine, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	past := before.Add(-time.Minute)
	for _, p := range []string{tmp, tufTmp} {
		if err := os.Chtimes(p, past, past); err != nil {
			t.Fatal(err)
		}
	}

	removed, err := RemoveInterrupted(dir, before)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != 2 {
		t.Errorf("removed %v; want %s and %s", removed, tmp, tufTmp)
	}
	for _, p := range []string{tmp, tufTmp} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s left by an interrupted write: still there (%v)", p, err)
		}
	}
	for p, s := range keep {
		if b, err := os.ReadFile(p); err != nil || string(b) != s {
			t.Errorf("%s: %q, %v; want it untouched", p, b, err)
		}
	}
	if _, err := os.Stat(mine); err != nil {
		t.Errorf("a write begun after before was removed: %v", err)
	}
}
