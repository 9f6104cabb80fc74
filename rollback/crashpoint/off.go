//go:build !crashpoints

package crashpoint

// Enabled reports whether this binary was built with crash points.
const Enabled = false

// Counter counts how often each point was reached.
type Counter struct{}

// Hit does nothing in builds without the "crashpoints" tag.
func Hit(*Counter, string) {}
