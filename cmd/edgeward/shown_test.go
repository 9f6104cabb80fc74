package main

import "testing"

// TestShownEscapesWhatATerminalWouldObey: free text from devices and operators is
// printed with control characters, C1 codes and bidirectional overrides escaped, so it
// cannot clear the screen, recolour, overwrite or add lines, or reorder what follows;
// printable text, non-ASCII letters included, is left as it is.
func TestShownEscapesWhatATerminalWouldObey(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"probe failed: accuracy 0.41 < 0.9", "probe failed: accuracy 0.41 < 0.9"},
		{"héllo 大 김", "héllo 大 김"},
		{"\x1b[2J\x1b[31mFAKE OK", `\x1b[2J\x1b[31mFAKE OK`},
		{"paused\r\nX-Injected: 1", `paused\r\nX-Injected: 1`},
		{"a\tb\x00c\x7f", `a\tb\x00c\x7f`},
		{"next\u0085line", `next\u0085line`},
		{"\u202egnp.exe", `\u202egnp.exe`},
		{"\u2066isolate\u2069", `\u2066isolate\u2069`},
		{"", ""},
	} {
		if got := shown(c.in); got != c.want {
			t.Errorf("shown(%q) = %q; want %q", c.in, got, c.want)
		}
	}
}
