package fleet

import (
	"regexp"
	"strings"
	"testing"
)

// TestIsDeviceIDIsTheRegexp: IsDeviceID accepts exactly what the regular expression it
// replaced accepts.
func TestIsDeviceIDIsTheRegexp(t *testing.T) {
	re := regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}$`)
	ids := []string{"", "a", "Z", "9", ".", "-a", "a-", "a.b_c:d+e/f=g-h", "urn:ek:sha256:8Vw+Qk/xyz=",
		"a b", "a\n", "a\x00", "é", "aé", "a!", "a#", "a,b", "a;b", "a\\b", "a~b", "a@b",
		strings.Repeat("a", 127), strings.Repeat("a", 128), strings.Repeat("a", 129), "a" + strings.Repeat(":", 127), "a" + strings.Repeat(":", 128)}
	for c := range 256 {
		ids = append(ids, string([]byte{byte(c)}), "a"+string([]byte{byte(c)}), "a"+string([]byte{byte(c)})+"b")
	}
	for _, id := range ids {
		if got, want := IsDeviceID(id), re.MatchString(id); got != want {
			t.Errorf("IsDeviceID(%q) = %v; want %v (the regexp)", id, got, want)
		}
	}
}
