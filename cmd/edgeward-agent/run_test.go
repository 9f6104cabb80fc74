package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/updater/tuftest"
)

func TestRunOnce(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, d1 := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	state := t.TempDir()
	rootFile := filepath.Join(t.TempDir(), "root.json")
	os.WriteFile(rootFile, r.RootBytes(1), 0o600)
	agent := func(args ...string) (int, string) {
		var out bytes.Buffer
		code := run(ctx, args, &out, &out)
		return code, out.String()
	}
	if code, out := agent("enroll", "--state-dir", state, "--root", rootFile, "--metadata-url", r.MetadataURL(), "--targets-url", r.TargetsURL()); code != 0 {
		t.Fatal(out)
	}
	judge := `test "$EDGEWARD_VERSION" = 1.0.0 && cmp -s "$EDGEWARD_PAYLOAD" ` + filepath.Join(state, "want")
	os.WriteFile(filepath.Join(state, "want"), d1, 0o600)
	if code, out := agent("run", "--state-dir", state, "--once", "--want", "model="+p1, "--judge-cmd", judge); code != 0 {
		t.Fatalf("run 1.0.0: %s", out)
	}
	if code, out := agent("run", "--state-dir", state, "--once", "--want", "model="+p2, "--judge-cmd", judge); code != 0 {
		t.Fatalf("run 2.0.0: %s", out)
	}
	code, out := agent("status", "--state-dir", state)
	if code != 0 || !strings.Contains(out, "model: rolled_back") || !strings.Contains(out, "active slot a: 1.0.0") || !strings.Contains(out, "floor: 1.0.0") {
		t.Errorf("status after a failed 2.0.0 trial:\n%s", out)
	}
	if !strings.Contains(out, "last check-in: 20") || !strings.Contains(out, "reports waiting: 2") {
		t.Errorf("status does not show the last check-in and the two waiting reports:\n%s", out)
	}
}
