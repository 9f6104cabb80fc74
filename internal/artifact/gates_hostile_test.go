package artifact

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
)

// `--gates min_accuracy=NaN` used to publish, and NaN compares false against every
// measure, so Decide passed everything. Non-finite and negative gates are refused when
// read and when validated.
func TestGatesRefuseNaNInfNegative(t *testing.T) {
	for _, s := range []string{"min_accuracy=NaN", "max_p99_ms=Inf", "max_rss_mb=+Inf", "max_abs_error=-1", "min_accuracy=-0.5", "max_p99_ms=nan", "min_accuracy=1.5"} {
		if g, err := ParseGates(s); err == nil {
			t.Errorf("ParseGates(%q) = %+v, nil; want an error", s, g)
		}
	}
	for _, j := range []string{`{"min_accuracy":"NaN"}`, `{"max_p99_ms":"-Inf"}`, `{"max_rss_mb":-3}`} {
		var g Gates
		if err := json.Unmarshal([]byte(j), &g); err == nil {
			t.Errorf("Unmarshal(%s) = %+v, nil; want an error", j, g)
		}
	}
	for _, g := range []Gates{{MinAccuracy: math.NaN()}, {MaxP99Ms: math.Inf(1)}, {MaxRSSMB: -1}, {MaxAbsError: math.NaN()}} {
		m := Meta{Kind: KindModel, Name: "m", Version: "1.0.0", Gates: &g}
		if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "gate") {
			t.Errorf("Validate(gates %+v) = %v; want an error naming the gate", g, err)
		}
	}
	if g, err := ParseGates("min_accuracy=0.9,max_p99_ms=5"); err != nil || g.Validate() != nil {
		t.Errorf("ParseGates of sane gates = %+v, %v", g, err)
	}
}
