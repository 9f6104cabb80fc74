package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestCLIRotateContentAndKEK (issue 18): keys rotate-content gives an encrypted
// version a new ciphertext under a new content key, and keys rotate-kek moves every
// content key to a new key-encryption key, after which the old one opens nothing.
func TestCLIRotateContentAndKEK(t *testing.T) {
	c := newCLI(t)
	c.env["EDGEWARD_PASSPHRASE"] = "s3cret"
	c.must("repo", "init", c.repo, "--audit-key", filepath.Join(t.TempDir(), "audit.key"))
	kek := filepath.Join(t.TempDir(), "kek")
	c.must("keys", "kek", "--out", kek)
	c.must("publish", "--encrypt", "--kek", kek, "--kind", "model", "--name", "vib", "--version", "1.0.0", writeTemp(t, "m.onnx", strings.Repeat("secret weights ", 5000)))
	before := c.must("repo", "status")
	out := c.must("keys", "rotate-content", "--kek", kek, "--name", "vib", "--version", "1.0.0")
	if !strings.Contains(out, "re-encrypted models/vib/1.0.0.onnx") || !strings.Contains(out, "old content key destroyed") {
		t.Fatalf("keys rotate-content:\n%s", out)
	}
	if after := c.must("repo", "status"); after == before {
		t.Errorf("repo status did not change after the rotation:\n%s", after)
	}
	if _, _, err := c.run("keys", "rotate-content", "--kek", kek, "--name", "vib", "--version", "2.0.0"); err == nil {
		t.Error("keys rotate-content of an unpublished version succeeded")
	}
	newKEK := filepath.Join(t.TempDir(), "kek2")
	c.must("keys", "kek", "--out", newKEK)
	if out := c.must("keys", "rotate-kek", "--kek", kek, "--new-kek", newKEK); !strings.Contains(out, "1 content keys re-sealed") {
		t.Fatalf("keys rotate-kek:\n%s", out)
	}
	if _, _, err := c.run("keys", "rotate-content", "--kek", kek, "--name", "vib", "--version", "1.0.0"); err == nil {
		t.Error("keys rotate-content under the old key-encryption key succeeded after rotate-kek")
	}
	c.must("keys", "rotate-content", "--kek", newKEK, "--name", "vib", "--version", "1.0.0")
}
