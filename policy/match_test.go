package policy

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
)

func TestRange(t *testing.T) {
	tests := []struct {
		rng, v string
		want   bool
	}{
		{"", "", true},
		{"", "1.0.0", true},
		{">=1.2.0", "1.2.0", true},
		{">=1.2.0", "1.1.9", false},
		{">=1.2.0 <2.0.0", "1.9.9", true},
		{">=1.2.0 <2.0.0", "2.0.0", false},
		{">=1.2.0,<2.0.0", "2.0.0-rc.1", true}, // a pre-release of 2.0.0 is below 2.0.0
		{"1.2.3", "1.2.3", true},
		{"=1.2.3", "1.2.4", false},
		{"==1.2.3", "1.2.3", true},
		{"!=1.2.3", "1.2.3", false},
		{">1.2.3", "1.2.3", false},
		{"<=1.2.3", "1.2.3", true},
		{">=1.0.0", "", false},
		{">=1.0.0", "garbage", false},
	}
	for _, tt := range tests {
		r, err := ParseRange(tt.rng)
		if err != nil {
			t.Fatalf("ParseRange(%q) = %v", tt.rng, err)
		}
		if got := r.Contains(tt.v); got != tt.want {
			t.Errorf("ParseRange(%q).Contains(%q) = %v; want %v", tt.rng, tt.v, got, tt.want)
		}
	}
	for _, bad := range []string{">=", "1.2", ">=1.2.x", "~1.2.0", "<>1.0.0"} {
		if _, err := ParseRange(bad); err == nil {
			t.Errorf("ParseRange(%q) = nil error; want an error", bad)
		}
	}
}

func mustWindow(t *testing.T, zone string, days []string, from, to string) *Window {
	t.Helper()
	p, err := Parse(File{Name: "w.yaml", Data: fmt.Appendf(nil, "windows:\n  - name: w\n    timezone: %s\n    days: [%s]\n    from: '%s'\n    to: '%s'\n", zone, strings.Join(days, ", "), from, to)})
	if err != nil {
		t.Fatal(err)
	}
	return p.Windows["w"]
}

func TestWindowContains(t *testing.T) {
	berlin, _ := time.LoadLocation("Europe/Berlin")
	tokyo, _ := time.LoadLocation("Asia/Tokyo")
	at := func(loc *time.Location, s string) time.Time {
		tm, err := time.ParseInLocation("2006-01-02 15:04", s, loc)
		if err != nil {
			t.Fatal(err)
		}
		return tm
	}
	weeknightsBerlin := mustWindow(t, "Europe/Berlin", []string{"mon-fri"}, "22:00", "04:00")
	daytimeTokyo := mustWindow(t, "Asia/Tokyo", []string{"all"}, "09:00", "17:00")
	wholeSunday := mustWindow(t, "UTC", []string{"sunday"}, "00:00", "24:00")
	wrapDays := mustWindow(t, "UTC", []string{"fri-mon"}, "10:00", "11:00")
	tests := []struct {
		name string
		w    *Window
		t    time.Time
		want bool
	}{
		// 2026-11-27 is a Friday.
		{"friday evening in window", weeknightsBerlin, at(berlin, "2026-11-27 23:30"), true},
		{"saturday morning belongs to friday's window", weeknightsBerlin, at(berlin, "2026-11-28 03:59"), true},
		{"end is exclusive", weeknightsBerlin, at(berlin, "2026-11-28 04:00"), false},
		{"saturday evening: no window", weeknightsBerlin, at(berlin, "2026-11-28 23:00"), false},
		{"monday early: sunday has no window", weeknightsBerlin, at(berlin, "2026-11-30 01:00"), false},
		{"start is inclusive", weeknightsBerlin, at(berlin, "2026-11-30 22:00"), true},
		{"utc instant converted to Berlin", weeknightsBerlin, at(time.UTC, "2026-11-27 21:30"), true}, // 22:30 CET
		{"utc instant before window", weeknightsBerlin, at(time.UTC, "2026-11-27 20:59"), false},
		{"summer time shifts the utc hour", weeknightsBerlin, at(time.UTC, "2026-07-03 20:30"), true}, // 22:30 CEST
		{"DST night: 03:30 CEST is after the 02:00 jump", mustWindow(t, "Europe/Berlin", []string{"sat"}, "22:00", "04:00"), at(time.UTC, "2026-03-29 01:30"), true},
		{"DST night ends at 04:00 CEST", mustWindow(t, "Europe/Berlin", []string{"sat"}, "22:00", "04:00"), at(time.UTC, "2026-03-29 02:00"), false},
		{"tokyo daytime seen from utc", daytimeTokyo, at(time.UTC, "2026-11-27 00:30"), true}, // 09:30 JST
		{"tokyo night", daytimeTokyo, at(tokyo, "2026-11-27 17:00"), false},
		{"whole day 00:00", wholeSunday, at(time.UTC, "2026-11-29 00:00"), true},
		{"whole day 23:59", wholeSunday, at(time.UTC, "2026-11-29 23:59"), true},
		{"whole day ends at midnight", wholeSunday, at(time.UTC, "2026-11-30 00:00"), false},
		{"wrapping day range includes sunday", wrapDays, at(time.UTC, "2026-11-29 10:30"), true},
		{"wrapping day range excludes wednesday", wrapDays, at(time.UTC, "2026-11-25 10:30"), false},
		{"nil window is always open", nil, at(time.UTC, "2026-11-25 10:30"), true},
	}
	for _, tt := range tests {
		if got := tt.w.Contains(tt.t); got != tt.want {
			t.Errorf("%s: Contains(%v) = %v; want %v", tt.name, tt.t, got, tt.want)
		}
	}
	next, ok := weeknightsBerlin.Next(at(berlin, "2026-11-28 12:00"))
	if want := at(berlin, "2026-11-30 22:00"); !ok || !next.Equal(want) {
		t.Errorf("Next(saturday noon) = %v, %v; want %v", next, ok, want)
	}
	next, ok = weeknightsBerlin.Next(at(berlin, "2026-11-27 23:00"))
	if !ok || !next.Equal(at(berlin, "2026-11-27 23:00")) {
		t.Errorf("Next(inside) = %v, %v; want the same instant", next, ok)
	}
}

func TestSelector(t *testing.T) {
	dev := &Device{
		ID: "dev-1", Labels: map[string]string{"site": "berlin", "line": "press"}, Hardware: "aarch64", AgentVersion: "0.5.0",
		Slots: map[artifact.Kind]Slot{artifact.KindRuntime: {Name: "onnxruntime", Version: "1.24.1"}, artifact.KindModel: {Name: "vib", Version: "3.0.0"}},
		Attrs: map[string]any{"ram_mb": 1024.0, "gpu": false},
	}
	tests := []struct {
		sel  string
		want bool
		why  string
	}{
		{"{}", true, ""},
		{"{labels: {site: berlin}}", true, ""},
		{"{labels: {site: berlin, line: mill}}", false, `label line is "press", want "mill"`},
		{"{labels: {zone: a}}", false, `label zone is ""`},
		{"{hardware: [x86_64, aarch64]}", true, ""},
		{"{hardware: [x86_64]}", false, `hardware "aarch64" not in`},
		{"{devices: [dev-2, dev-1]}", true, ""},
		{"{devices: [dev-2]}", false, "device not listed"},
		{"{agent_version: '>=0.4.0 <1.0.0'}", true, ""},
		{"{agent_version: '>=0.6.0'}", false, `agent version "0.5.0" not in ">=0.6.0"`},
		{"{runtime_version: '>=1.24.0'}", true, ""},
		{"{runtime_version: '>=1.25.0'}", false, "runtime version"},
		{`{expr: 'labels["site"] == "berlin" && hardware == "aarch64"'}`, true, ""},
		{`{expr: 'double(attrs["ram_mb"]) >= 512.0 && !attrs["gpu"]'}`, true, ""},
		{`{expr: 'model == "vib" && model_version.startsWith("3.")'}`, true, ""},
		{`{expr: 'runtime_version == "1.24.1" && agent_version == "0.5.0" && id == "dev-1"'}`, true, ""},
		{`{expr: 'attrs["npu"] == true'}`, false, "no such key"},
		{`{expr: '"line" in labels && !("zone" in labels)'}`, true, ""},
		{`{labels: {site: berlin}, expr: 'hardware == "x86_64"'}`, false, "is false"},
	}
	for _, tt := range tests {
		p, err := Parse(File{Name: "s.yaml", Data: []byte("rollouts:\n  - id: r\n    target: {kind: model, name: vib, version: 3.1.0}\n    selector: " + tt.sel + "\n")})
		if err != nil {
			t.Fatalf("selector %s: %v", tt.sel, err)
		}
		got, why := p.Rollouts[0].Selected(dev)
		if got != tt.want || !strings.Contains(why, tt.why) {
			t.Errorf("selector %s: Match = %v, %q; want %v, %q", tt.sel, got, why, tt.want, tt.why)
		}
	}
}

func TestSelectorCELCostLimit(t *testing.T) {
	p, err := Parse(File{Name: "s.yaml", Data: []byte("rollouts:\n  - id: r\n    target: {kind: model, name: vib, version: 3.1.0}\n    selector:\n      expr: '[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(c, [1,2,3,4,5,6,7,8,9,10].all(d, a+b+c+d > 0))))'\n")})
	if err != nil {
		t.Fatal(err)
	}
	ok, why := p.Rollouts[0].Selected(&Device{ID: "d"})
	if ok || !strings.Contains(why, "cost limit") {
		t.Errorf("expensive expression: Match = %v, %q; want false with a cost-limit error", ok, why)
	}
}

func TestWaveMembership(t *testing.T) {
	r := &Rollout{ID: "vib-3.1.0", Waves: []Wave{{Percent: 1}, {Percent: 10}, {Percent: 50}, {Percent: 100}}}
	const n = 20000
	counts := make([]int, len(r.Waves)+1)
	for i := range n {
		id := fmt.Sprintf("device-%05d", i)
		w := r.WaveOf(id)
		counts[w]++
		if again := r.WaveOf(id); again != w {
			t.Fatalf("WaveOf(%q) = %d then %d; want stable", id, w, again)
		}
		// Monotone: a device in wave w of this plan stays included when waves grow.
		bigger := &Rollout{ID: r.ID, Waves: []Wave{{Percent: 5}, {Percent: 20}, {Percent: 100}}}
		if b := Bucket(r.ID, id); (b < 100) && bigger.WaveOf(id) != 0 {
			t.Fatalf("device %s in the 1%% wave is not in a 5%% first wave", id)
		}
	}
	// Expected fractions per wave: 1%, 9%, 40%, 50% (±1.5 points for 20,000 devices).
	want := []float64{0.01, 0.09, 0.40, 0.50, 0}
	for w, c := range counts {
		if got := float64(c) / n; got < want[w]-0.015 || got > want[w]+0.015 {
			t.Errorf("wave %d has %.3f of devices; want about %.2f", w, got, want[w])
		}
	}
	// A known value pins the hash, so a change of algorithm (which would reshuffle
	// every running rollout) fails here.
	for _, tt := range []struct {
		rollout, device string
		want            int
	}{{"vib-3.1.0", "device-00001", 1711}, {"r", "d", 3548}} {
		if got := Bucket(tt.rollout, tt.device); got != tt.want {
			t.Errorf("Bucket(%q, %q) = %d; want %d", tt.rollout, tt.device, got, tt.want)
		}
	}
	// Different rollouts choose different first waves.
	same := 0
	other := &Rollout{ID: "other", Waves: r.Waves}
	for i := range 1000 {
		id := fmt.Sprintf("device-%05d", i)
		if r.WaveOf(id) == 0 && other.WaveOf(id) == 0 {
			same++
		}
	}
	if same > 3 {
		t.Errorf("%d devices are in the first wave of both rollouts; want the hash to depend on the rollout", same)
	}
}
