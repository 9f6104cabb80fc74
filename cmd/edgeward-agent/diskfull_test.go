package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/updater/tuftest"
)

// mountTmpfs mounts a tmpfs of size at dir (root only) and unmounts it at cleanup.
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if os.Geteuid() != 0 {
		requireDep(t, "mounting a tmpfs to fill a disk", errors.New("not root"))
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		requireDep(t, "mounting a tmpfs to fill a disk", errors.New(strings.TrimSpace(string(out))))
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

// TestDiskFull puts the model slots on a 2 MiB file system: a 4 MiB model fails cleanly
// (ENOSPC), the committed version keeps serving, the space is released and a model
// that fits installs afterwards.
func TestDiskFull(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 512<<10)
	big, _ := r.AddModel("iris", "2.0.0", 4<<20)
	p3, _ := r.AddModel("iris", "2.1.0", 512<<10)
	state := t.TempDir()
	slots := filepath.Join(state, "slots", "model")
	os.MkdirAll(slots, 0o700)
	mountTmpfs(t, slots, "2m")
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	agent := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, append(args[:1:1], append([]string{"--state-dir", state}, args[1:]...)...), &out, &out)
		return code, out.String()
	}
	for _, s := range [][]string{
		{"enroll", "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()},
		{"install", "--target", p1}, {"trial"}, {"confirm", "--pass"},
	} {
		if code, out := agent(s...); code != 0 {
			t.Fatalf("%v: %s", s, out)
		}
	}
	code, out := agent("install", "--target", big)
	if code != 1 || !strings.Contains(out, "no space left") {
		t.Fatalf("install of a model larger than the disk: exit %d\n%s\nwant a clean failure for lack of space", code, out)
	}
	_, out = agent("status")
	if !strings.Contains(out, "model: failed") || !strings.Contains(out, "active slot a: 1.0.0") {
		t.Errorf("status after the full disk:\n%s", out)
	}
	if entries, _ := os.ReadDir(filepath.Join(slots, "b")); len(entries) != 0 {
		t.Errorf("slot b holds %d files after the failure; want it empty", len(entries))
	}
	for _, s := range [][]string{{"install", "--target", p3}, {"trial"}, {"confirm", "--pass"}} {
		if code, out := agent(s...); code != 0 {
			t.Fatalf("%v after the full disk: %s", s, out)
		}
	}
	if _, out = agent("status"); !strings.Contains(out, "active slot b: 2.1.0") {
		t.Errorf("status after installing 2.1.0:\n%s", out)
	}
}
