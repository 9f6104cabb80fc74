//go:build crashpoints

package crashpoint

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
)

// Enabled reports whether this binary was built with crash points.
const Enabled = true

// Counter counts how often each point was reached. The zero value is ready to use.
type Counter struct{ n atomic.Int64 }

// Hit kills the process if EDGEWARD_CRASHPOINT names this point (and its count is
// reached). c may be nil, meaning "first hit".
func Hit(c *Counter, name string) {
	want, ok := os.LookupEnv(Env)
	if !ok {
		return
	}
	point, nth, _ := strings.Cut(want, "@")
	if point != name {
		return
	}
	n := int64(1)
	if c != nil {
		n = c.n.Add(1)
	}
	if nth != "" {
		if k, err := strconv.ParseInt(nth, 10, 64); err == nil && n != k {
			return
		}
	}
	fmt.Fprintf(os.Stderr, "crashpoint: killing process at %s\n", want)
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {} // SIGKILL is not instantaneous
}
