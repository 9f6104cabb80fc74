package runtimeapi

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStdlibOnly keeps the contract light: besides the standard library it may import
// only internal/artifact, which is stdlib-only itself. A device that talks to a runtime
// must not link ONNX Runtime, Prometheus or anything else through this package.
func TestStdlibOnly(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{if not .Standard}}{{.ImportPath}}{{end}}", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	allowed := map[string]bool{
		"github.com/edgeward/edgeward/runtime/runtimeapi": true,
		"github.com/edgeward/edgeward/internal/artifact":  true,
	}
	for _, p := range strings.Fields(string(out)) {
		if !allowed[p] {
			t.Errorf("runtimeapi depends on %s; want only the standard library and internal/artifact", p)
		}
	}
}
