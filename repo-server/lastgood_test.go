package reposerver

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/edgeward/edgeward/repository"
)

// TestServerStartsFromTheLastGoodPolicy: a typo in a hand-edited policy file does not
// keep the server from starting (and with it TUF metadata and check-ins for the whole
// fleet): it starts from the copy of the last policy it had in force. It exited on the
// file's error (found from outside).
func TestServerStartsFromTheLastGoodPolicy(t *testing.T) {
	dir := t.TempDir()
	if _, err := repository.Init(context.Background(), repository.Config{Dir: dir, KDF: repository.KDFParams{N: 1 << 10}, Recorder: AuditRecorder{Dir: dir}},
		repository.InitOptions{Passphrase: []byte(testPass)}); err != nil {
		t.Fatal(err)
	}
	runUntilServing(t, dir)
	if _, err := os.Stat(filepath.Join(dir, LastGoodPolicyFile)); err != nil {
		t.Fatalf("no copy of the policy in force: %v", err)
	}
	typo := "version: 1\nrollouts:\n  - id: vib-1\n    target: {kind: model, name: vib, version: 1.0.0}\n    waves: [{percent: 100, soak: 10}]\n"
	if err := os.WriteFile(filepath.Join(dir, "policy", "10-typo.yaml"), []byte(typo), 0o600); err != nil {
		t.Fatal(err)
	}
	runUntilServing(t, dir)
}
