package stepca

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestUnreadableRootIsNotReplaced: a root certificate that exists but cannot be read
// (here a symbolic link to itself: ELOOP, as EACCES or EIO would be) is an error, not a
// missing CA. A new root and intermediate used to be made over the old ones, stranding
// every certificate the old root had signed.
func TestUnreadableRootIsNotReplaced(t *testing.T) {
	dir := t.TempDir()
	root, err := ensureCALocked(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	for _, name := range []string{"root_ca.crt", "intermediate_ca.crt", "intermediate_ca_key"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		files[name] = b
	}
	rootPath := filepath.Join(dir, "root_ca.crt")
	saved := rootPath + ".saved"
	if err := os.Rename(rootPath, saved); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("root_ca.crt", rootPath); err != nil {
		t.Fatal(err)
	}
	if got, err := ensureCALocked(dir); err == nil {
		t.Fatalf("ensureCA with an unreadable root = %s, nil; want an error", got.Subject)
	}
	for _, name := range []string{"intermediate_ca.crt", "intermediate_ca_key"} {
		if b, _ := os.ReadFile(filepath.Join(dir, name)); !bytes.Equal(b, files[name]) {
			t.Errorf("%s was rewritten after the root could not be read", name)
		}
	}
	// The root readable again: the same CA.
	if err := os.Remove(rootPath); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(saved, rootPath); err != nil {
		t.Fatal(err)
	}
	again, err := ensureCALocked(dir)
	if err != nil || !again.Equal(root) {
		t.Fatalf("ensureCA once the root is readable = %v; want the original root", err)
	}
}

// TestConfigWrittenOnlyWhenItChanges: WriteConfig leaves ca.json alone when its content
// would not change (the same file, not a new one renamed over it), so a start needs no
// free space for it; a change (another certificate duration) is written. Before, every
// start wrote a new ca.json, and a server whose disk had filled could not start.
func TestConfigWrittenOnlyWhenItChanges(t *testing.T) {
	dir := t.TempDir()
	c := Config{Dir: dir, Address: "127.0.0.1:1"}
	path, _, _, err := WriteConfig(c)
	if err != nil {
		t.Fatal(err)
	}
	inode := func() uint64 {
		t.Helper()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	before := inode()
	if _, _, _, err := WriteConfig(c); err != nil {
		t.Fatal(err)
	}
	if after := inode(); after != before {
		t.Errorf("ca.json after WriteConfig of the same config: inode %d, was %d; want the file left alone", after, before)
	}
	c.CertDuration = time.Hour
	if _, _, _, err := WriteConfig(c); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(path); err != nil || !bytes.Contains(b, []byte(`"1h0m0s"`)) {
		t.Errorf("ca.json after a change of duration = %s, %v; want it rewritten with 1h0m0s", b, err)
	}
}
