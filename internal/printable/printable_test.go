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

func TestCut(t *testing.T) {
	for _, tc := range []struct {
		s    string
		max  int
		want string
	}{
		{"hello", 10, "hello"},
		{"hello", 5, "hello"},
		{"hello", 3, "hel"},
		{"héllo", 2, "h"},               // "é" is bytes 1–2: a cut at 2 falls inside it
		{"héllo", 3, "hé"},              // at its end
		{"a€b", 3, "a"},                 // a three-byte character, cut after its second byte
		{"a€b", 4, "a€"},                //
		{"😀x", 3, ""},                   // a four-byte character cut anywhere inside
		{"😀x", 4, "😀"},                  //
		{"\xff\xfe\xfd", 2, "\xff\xfe"}, // not UTF-8: the byte bound
		{"abc", 0, ""},
	} {
		got := Cut(tc.s, tc.max)
		if got != tc.want {
			t.Errorf("Cut(%q, %d) = %q; want %q", tc.s, tc.max, got, tc.want)
		}
		if len(got) > tc.max && tc.max >= 0 {
			t.Errorf("Cut(%q, %d) = %d bytes; want at most %d", tc.s, tc.max, len(got), tc.max)
		}
	}
}
