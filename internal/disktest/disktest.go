// Package disktest gives tests a small file system that they can fill up: a tmpfs
// mounted over a directory. Mounting needs root: without it a test is skipped, or fails
// under EDGEWARD_REQUIRE_DEPS=1 (CI), where a skip would hide an untested path.
package disktest

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// Mount mounts a tmpfs of size (e.g. "8m") at dir, unmounted when the test ends.
func Mount(t testing.TB, dir, size string) {
	t.Helper()
	skip := func(why string) {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("%s (EDGEWARD_REQUIRE_DEPS=1)", why)
		}
		t.Skip(why)
	}
	if os.Geteuid() != 0 {
		skip("mounting a tmpfs needs root")
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+size, "tmpfs", dir).CombinedOutput(); err != nil {
		skip("mount tmpfs: " + strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
}

// Filler returns a function that fills the file system of dir with a file of its own
// until a write fails for want of space (checking that a 4 KiB write then fails with
// ENOSPC), and one that removes that file again.
func Filler(t testing.TB, dir string) (fill, free func()) {
	filler := filepath.Join(dir, "filler")
	fill = func() {
		t.Helper()
		f, err := os.OpenFile(filler, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, chunk := range [][]byte{make([]byte, 1<<20), make([]byte, 512)} {
			for {
				if _, err := f.Write(chunk); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatal(err)
					}
					break
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "probe"), make([]byte, 4096), 0o600); !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("writing to the filled disk = %v; want ENOSPC", err)
		}
	}
	free = func() {
		t.Helper()
		if err := os.Remove(filler); err != nil {
			t.Fatal(err)
		}
	}
	return fill, free
}
