package policy

import (
	"testing"
	"time"
)

// TestParseTimeOfDay: a maintenance window's bounds at their edges. Midnight and 24:00
// (the end of a day) are times of day; a minute or an hour past them is not.
func TestParseTimeOfDay(t *testing.T) {
	for _, c := range []struct {
		in   string
		want time.Duration
		ok   bool
	}{
		{"00:00", 0, true},
		{"00:01", time.Minute, true},
		{"06:30", 6*time.Hour + 30*time.Minute, true},
		{"23:59", 23*time.Hour + 59*time.Minute, true},
		{"24:00", 24 * time.Hour, true},
		{"24:01", 0, false},
		{"25:00", 0, false},
		{"12:60", 0, false},
		{"-1:00", 0, false},
		{"6:30", 0, false},
		{"06-30", 0, false},
		{"ab:cd", 0, false},
	} {
		got, err := parseTimeOfDay(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("parseTimeOfDay(%q) = %v, %v; want %v (ok %v)", c.in, got, err, c.want, c.ok)
		}
	}
}
