package lab

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTopFloor keeps the lab a top floor. The lab starts real processes and imports the
// server's packages, so only what sits above everything may import it: command entry
// points (cmd/…), the e2e suite, the benchmarks and the lab's own rooms. Anything else
// importing it, tests included, would run an arrow back up the house.
func TestTopFloor(t *testing.T) {
	const module = "github.com/edgeward/edgeward"
	out, err := exec.Command("go", "list", "-e", "-f",
		"{{.ImportPath}}{{range .Imports}} {{.}}{{end}}{{range .TestImports}} {{.}}{{end}}{{range .XTestImports}} {{.}}{{end}}",
		module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	under := func(p, room string) bool { return p == module+"/"+room || strings.HasPrefix(p, module+"/"+room+"/") }
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) < 20 {
		t.Fatalf("go list listed %d packages; want the whole module:\n%s", len(lines), out)
	}
	importers := 0
	for _, line := range lines {
		f := strings.Fields(line)
		pkg, imports := f[0], f[1:]
		for _, imp := range imports {
			if !under(imp, "lab") {
				continue
			}
			importers++
			if !under(pkg, "cmd") && !under(pkg, "e2e") && !under(pkg, "bench") && !under(pkg, "lab") {
				t.Errorf("%s imports %s; only cmd/, e2e/, bench/ and lab/ may import the lab", pkg, imp)
			}
		}
	}
	if importers == 0 {
		t.Errorf("nothing imports the lab; want at least cmd/edgeward and e2e (is the listing complete?)")
	}
}
