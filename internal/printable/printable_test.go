package printable

import (
	"strings"
	"testing"
)

func TestText(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		max      int
		want     string
	}{
		{"plain", "trial failed: accuracy 0.91 < 0.95", 0, "trial failed: accuracy 0.91 < 0.95"},
		{"unicode kept", "modèle — 模型", 0, "modèle — 模型"},
		{"escape sequences", "\x1b]0;owned\x07\x1b[2Jok", 0, `\x1b]0;owned\x07\x1b[2Jok`},
		{"newline and tab", "a\nb\tc", 0, `a\x0ab\x09c`},
		{"C1 and DEL", "a\u009bb\x7f", 0, `a\u009bb\x7f`},
		{"bidi override", "file\u202egnp.exe", 0, `file\u202egnp.exe`},
		{"invalid UTF-8", "a\xffb", 0, `a\xffb`},
		{"cut", strings.Repeat("x", 100), 10, "xxxxxxxxxx… (90 bytes more)"},
		{"cut before an escape", "abc\x1b[2J", 5, "abc… (4 bytes more)"},
		{"within the bound", "short", 10, "short"},
	} {
		if got := Text(tc.in, tc.max); got != tc.want {
			t.Errorf("%s: Text(%q, %d) = %q; want %q", tc.name, tc.in, tc.max, got, tc.want)
		}
	}
}
