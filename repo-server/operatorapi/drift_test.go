package operatorapi

import (
	"encoding/json"
	"testing"
)

func TestAddDrift(t *testing.T) {
	sum := map[string]*ModelDrift{}
	for _, attrs := range []string{
		`{"drift":{"vib":{"version":"1.0.0","rows":50,"drifted":["x0","x1"],"max_mean_shift":12.5}}}`,
		`{"drift":{"vib":{"version":"1.0.0","rows":10,"drifted":null,"max_mean_shift":0.2}}}`,
		`{"drift":{"vib":"garbage","iris":{"rows":-3,"drifted":"x","max_mean_shift":"big"}}}`,
		`{"ram_mb":512}`,
	} {
		var m map[string]any
		if err := json.Unmarshal([]byte(attrs), &m); err != nil {
			t.Fatal(err)
		}
		addDrift(sum, m)
	}
	vib := sum["vib"]
	if vib == nil || vib.Devices != 2 || vib.Drifted != 1 || vib.Rows != 60 || vib.MaxMeanShift != 12.5 {
		t.Fatalf("vib drift = %+v; want 2 devices, 1 drifted, 60 rows, max shift 12.5", vib)
	}
	if iris := sum["iris"]; iris == nil || iris.Devices != 1 || iris.Rows != 0 || iris.Drifted != 0 {
		t.Fatalf("iris drift from malformed attributes = %+v; want counted, values ignored", iris)
	}
}
