// Package buildinfo says which build a binary is: its module version, the VCS commit it
// was built from and the Go version, read from the binary itself (debug.ReadBuildInfo).
package buildinfo

import (
	"fmt"
	"runtime/debug"
)

// Info is what a binary knows about its own build.
type Info struct {
	Version   string // module version; "(devel)" for a build from a work tree
	Commit    string // vcs.revision; "unknown" when built without VCS information
	Modified  bool   // vcs.modified: the work tree had uncommitted changes
	GoVersion string
}

// Read returns the running binary's build information.
func Read() Info {
	in := Info{Version: "(devel)", Commit: "unknown", GoVersion: "unknown"}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return in
	}
	in.GoVersion = bi.GoVersion
	if v := bi.Main.Version; v != "" {
		in.Version = v
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			in.Commit = s.Value
		case "vcs.modified":
			in.Modified = s.Value == "true"
		}
	}
	return in
}

// Line is the one-line answer of a binary's version command:
// "NAME VERSION (commit C[, modified]; go1.x)".
func (in Info) Line(name string) string {
	commit := in.Commit
	if in.Modified {
		commit += ", modified"
	}
	return fmt.Sprintf("%s %s (commit %s; %s)", name, in.Version, commit, in.GoVersion)
}
