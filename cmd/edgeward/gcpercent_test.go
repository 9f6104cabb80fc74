package main

import (
	"runtime/debug"
	"testing"
)

// TestServerGCPercent: `edgeward server` collects garbage at --gc-percent (400 by
// default) unless $GOGC is set, which wins. (The server stops at the bad --log-format,
// after the setting, before it starts anything.)
func TestServerGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		gogc string
		args []string
		want int
	}{
		{"", nil, 400},
		{"", []string{"--gc-percent", "150"}, 150},
		{"100", []string{"--gc-percent", "150"}, 100}, // $GOGC: left as the runtime set it
	} {
		debug.SetGCPercent(100)
		c := newCLI(t)
		c.env["GOGC"] = tc.gogc
		args := append([]string{"server", "--log-format", "bogus"}, tc.args...)
		if _, _, err := c.run(args...); err == nil {
			t.Fatalf("server %q = nil; want the --log-format error", args)
		}
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("server %q with GOGC=%q: GC percent %d; want %d", args, tc.gogc, got, tc.want)
		}
	}
}
