package policy

import (
	"fmt"
	"strings"
	"time"
	_ "time/tzdata" // windows name IANA zones; do not depend on the host's zoneinfo
)

// Window is a weekly maintenance window: from From to To (time of day in Location) on
// each of Days. A window whose To is not after its From crosses midnight and belongs to
// the day it starts on: Days [sat], From 22:00, To 04:00 is Saturday 22:00 to Sunday
// 04:00. From 00:00 To 24:00 is the whole day.
type Window struct {
	Name     string
	Location *time.Location
	Days     [7]bool // indexed by time.Weekday
	From, To time.Duration
	Pos      Pos
}

// Contains reports whether t is inside the window. From is inside, To is not.
func (w *Window) Contains(t time.Time) bool {
	if w == nil {
		return true
	}
	t = t.In(w.Location)
	tod := time.Duration(t.Hour())*time.Hour + time.Duration(t.Minute())*time.Minute +
		time.Duration(t.Second())*time.Second + time.Duration(t.Nanosecond())
	day := t.Weekday()
	if w.From < w.To {
		return w.Days[day] && tod >= w.From && tod < w.To
	}
	// Crosses midnight: the evening part belongs to today, the morning part to yesterday.
	return (w.Days[day] && tod >= w.From) || (w.Days[(day+6)%7] && tod < w.To)
}

// Next returns the first time at or after t at which the window is open, looking up to
// eight days ahead; ok is false if it never opens (no days).
func (w *Window) Next(t time.Time) (open time.Time, ok bool) {
	if w == nil || w.Contains(t) {
		return t, true
	}
	lt := t.In(w.Location)
	for i := -1; i <= 8; i++ {
		d := time.Date(lt.Year(), lt.Month(), lt.Day()+i, 0, 0, 0, 0, w.Location)
		if !w.Days[d.Weekday()] {
			continue
		}
		start := time.Date(d.Year(), d.Month(), d.Day(), int(w.From/time.Hour), int(w.From%time.Hour/time.Minute), 0, 0, w.Location)
		if !start.Before(t) && w.Contains(start) {
			return start, true
		}
	}
	return time.Time{}, false
}

var dayNames = map[string]time.Weekday{
	"sun": time.Sunday, "mon": time.Monday, "tue": time.Tuesday, "wed": time.Wednesday,
	"thu": time.Thursday, "fri": time.Friday, "sat": time.Saturday,
}

// parseDays accepts day names (sun..sat, or full English names) and ranges such as
// "mon-fri"; a range may wrap ("fri-mon"). "all" or "*" is every day.
func parseDays(items []string) ([7]bool, error) {
	var days [7]bool
	day := func(s string) (time.Weekday, error) {
		s = strings.ToLower(strings.TrimSpace(s))
		if len(s) > 3 {
			for n, d := range dayNames {
				if strings.EqualFold(s, d.String()) {
					return dayNames[n], nil
				}
			}
		}
		if d, ok := dayNames[s]; ok {
			return d, nil
		}
		return 0, fmt.Errorf("unknown day %q: want sun, mon, tue, wed, thu, fri or sat", s)
	}
	for _, it := range items {
		if it == "all" || it == "*" {
			for i := range days {
				days[i] = true
			}
			continue
		}
		a, b, isRange := strings.Cut(it, "-")
		from, err := day(a)
		if err != nil {
			return days, err
		}
		to := from
		if isRange {
			if to, err = day(b); err != nil {
				return days, err
			}
		}
		for d := from; ; d = (d + 1) % 7 {
			days[d] = true
			if d == to {
				break
			}
		}
	}
	return days, nil
}

// parseTimeOfDay parses "HH:MM" (00:00 to 24:00).
func parseTimeOfDay(s string) (time.Duration, error) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("time of day %q: want HH:MM", s)
	}
	if _, err := fmt.Sscanf(s, "%02d:%02d", &h, &m); err != nil {
		return 0, fmt.Errorf("time of day %q: want HH:MM", s)
	}
	if h < 0 || m < 0 || m > 59 || h > 24 || (h == 24 && m != 0) {
		return 0, fmt.Errorf("time of day %q: out of range 00:00-24:00", s)
	}
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute, nil
}
