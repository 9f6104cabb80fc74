package fleet

import (
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// TestAdmitDeviceFacts checks what an admitted check-in leaves in the device row that
// TestAdmit's one-line summaries do not show: the device's attributes, and the slot a
// report rewrites when the check-in's own slots do not show the result yet.
func TestAdmitDeviceFacts(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 8, 0, 0, 0, time.UTC)
	stored := func(slots map[artifact.Kind]policy.Slot) *Device {
		d := &Device{EnrolledAt: t0.Add(-time.Hour)}
		d.ID, d.Verdict, d.Slots = "dev-1", policy.VerdictTrusted, slots
		return d
	}
	vib := func(v string) map[artifact.Kind]policy.Slot {
		return map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: v}}
	}
	admit := func(d *Device, c CheckIn, reports ...wire.Report) Admitted {
		t.Helper()
		c.ID, c.Hardware, c.AgentVersion, c.At = "dev-1", "x86_64", "0.1.0", t0
		out, err := Admit(Admission{Stored: d, CheckIn: c, Reports: reports, Verdict: policy.VerdictTrusted, Now: t0})
		if err != nil {
			t.Fatalf("Admit = %v", err)
		}
		return out
	}
	report := func(name, version string, o wire.Outcome) wire.Report {
		return wire.Report{ID: name + version + string(o), Kind: artifact.KindModel, Name: name, Version: version, Outcome: o, At: t0}
	}

	// Attributes are the check-in's; none is stored as {} (JSON object), not null.
	out := admit(stored(vib("1.0.0")), CheckIn{Slots: vib("1.0.0"), Attrs: map[string]any{"site": "north"}})
	if got := out.Device.Attrs["site"]; got != "north" {
		t.Errorf("Attrs[site] = %v; want north", got)
	}
	if out = admit(stored(vib("1.0.0")), CheckIn{Slots: vib("1.0.0")}); out.Device.Attrs == nil || len(out.Device.Attrs) != 0 {
		t.Errorf("Attrs without attributes = %#v; want an empty map", out.Device.Attrs)
	}

	for _, tc := range []struct {
		name   string
		stored map[artifact.Kind]policy.Slot
		sent   map[artifact.Kind]policy.Slot
		report wire.Report
		want   policy.Slot
	}{
		// The model is named, so the failed version is known to be this model's.
		{"a failed first install", nil, nil, report("vib", "2.0.0", wire.OutcomeProbeFailed), policy.Slot{Name: "vib", Failed: "2.0.0"}},
		{"a failed install beside a running version", vib("1.0.0"), vib("1.0.0"), report("vib", "2.0.0", wire.OutcomeProbeFailed), policy.Slot{Name: "vib", Version: "1.0.0", Failed: "2.0.0"}},
		{"a commit the check-in's slots do not show yet", vib("1.0.0"), vib("1.0.0"), report("vib", "2.0.0", wire.OutcomeCommitted), policy.Slot{Name: "vib", Version: "2.0.0", Previous: "1.0.0"}},
		{"a commit of another model: no previous version", vib("1.0.0"), vib("1.0.0"), report("other", "3.0.0", wire.OutcomeCommitted), policy.Slot{Name: "other", Version: "3.0.0"}},
	} {
		out := admit(stored(tc.stored), CheckIn{Slots: tc.sent}, tc.report)
		if got := out.Device.Slots[artifact.KindModel]; got != tc.want {
			t.Errorf("%s: slot = %+v; want %+v", tc.name, got, tc.want)
		}
	}
}
