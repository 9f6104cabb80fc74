package stepca

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
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
