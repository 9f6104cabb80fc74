package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps: the operator CLI and server binary links no ONNX Runtime and no device-side
// package. It does link the lab, for `edgeward demo` (see cmdDemo for why the demo stays
// a subcommand); the lab must therefore never pull ONNX Runtime or the agent in either.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, out)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages: %q; want the binary's whole closure", len(deps), deps)
	}
	forbidden := []string{
		"github.com/yalue/onnxruntime_go",
		"github.com/edgeward/edgeward/runtime", // the ONNX server; runtime/runtimeapi and runtime/modelgen are allowed
		"github.com/edgeward/edgeward/agent",
		"github.com/edgeward/edgeward/updater",
		"github.com/edgeward/edgeward/rollback",
	}
	for _, d := range deps {
		for _, f := range forbidden {
			if d == f || (f != "github.com/edgeward/edgeward/runtime" && strings.HasPrefix(d, f+"/")) {
				t.Errorf("edgeward links %s (forbidden: %s)", d, f)
			}
		}
	}
}
