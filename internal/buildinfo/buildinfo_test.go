package buildinfo

import (
	"runtime"
	"strings"
	"testing"
)

func TestLine(t *testing.T) {
	in := Info{Version: "v1.2.3", Commit: "abc123", Modified: true, GoVersion: "go1.99"}
	if got, want := in.Line("edgeward"), "edgeward v1.2.3 (commit abc123, modified; go1.99)"; got != want {
		t.Fatalf("Line = %q; want %q", got, want)
	}
	if got := Read(); got.GoVersion != runtime.Version() || !strings.HasPrefix(got.Line("x"), "x ") {
		t.Fatalf("Read() = %+v; want the running Go version %s", got, runtime.Version())
	}
}
