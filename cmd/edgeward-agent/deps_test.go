package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps the agent small and its attack surface a device's: it talks to the
// runtime through runtime/runtimeapi and never links ONNX Runtime (the runtime process
// does), Prometheus, the server, the TUF repository library, the attestation CA, the
// quote verifier, the policy engine or the lab.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages: %q; want the agent's whole closure", len(deps), deps)
	}
	// A path ending in "/" forbids a module or tree by prefix; any other path forbids
	// that package and its subpackages, except those allowed.
	forbidden := []string{
		"github.com/yalue/onnxruntime_go",
		"github.com/prometheus/",
		"github.com/edgeward/edgeward/runtime",
		"github.com/edgeward/edgeward/repo-server",
		"github.com/edgeward/edgeward/repository",
		"github.com/edgeward/edgeward/attest/attestca",
		"github.com/edgeward/edgeward/attest/verify",
		"github.com/edgeward/edgeward/policy",
		"github.com/edgeward/edgeward/lab",
	}
	allowed := map[string]bool{"github.com/edgeward/edgeward/runtime/runtimeapi": true}
	for _, d := range deps {
		for _, f := range forbidden {
			hit := d == f || strings.HasPrefix(d, strings.TrimSuffix(f, "/")+"/")
			if hit && !allowed[d] {
				t.Errorf("edgeward-agent links %s (forbidden: %s)", d, f)
			}
		}
	}
}
