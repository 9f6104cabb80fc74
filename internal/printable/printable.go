// Package printable makes text from elsewhere (a server's answer, a device's report) safe
// to store and show to a person: bounded, with control characters and invalid UTF-8
// escaped, so that it can neither fill a status file nor drive the terminal it is
// printed on (escape sequences that move the cursor, retitle the window, clear the
// screen or write the clipboard).
package printable

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Text returns s with every control or format character (C0, DEL, C1, bidirectional
// overrides and other Unicode format characters) and every invalid UTF-8 byte written
// as a Go escape (\x1b, \u202e), cut to at most max bytes (max <= 0: no bound) with
// "… (N bytes more)" saying how much was cut. Plain text passes unchanged.
func Text(s string, max int) string {
	clean := true
	for _, r := range s {
		if r == utf8.RuneError || unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			clean = false
			break
		}
	}
	if clean && (max <= 0 || len(s) <= max) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		var piece string
		switch {
		case r == utf8.RuneError && n == 1:
			piece = fmt.Sprintf(`\x%02x`, s[i])
		case r < 0x80 && unicode.IsControl(r):
			piece = fmt.Sprintf(`\x%02x`, r)
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			piece = fmt.Sprintf(`\u%04x`, r)
		default:
			piece = s[i : i+n]
		}
		if max > 0 && b.Len()+len(piece) > max {
			fmt.Fprintf(&b, "… (%d bytes more)", len(s)-i)
			return b.String()
		}
		b.WriteString(piece)
		i += n
	}
	return b.String()
}

// Cut returns the longest prefix of s of at most max bytes that does not end inside a
// UTF-8 character: s cut to a byte bound at a character's boundary. Cut within one, valid
// text became invalid UTF-8, which PostgreSQL refuses in a text column.
func Cut(s string, max int) string {
	if len(s) <= max {
		return s
	}
	if max <= 0 {
		return ""
	}
	i := max
	for i > 0 && i > max-utf8.UTFMax && !utf8.RuneStart(s[i]) {
		i--
	}
	if !utf8.RuneStart(s[i]) {
		return s[:max] // not UTF-8 there anyway: the byte bound alone
	}
	return s[:i]
}
