package artifact

import (
	"encoding/json"
	"testing"
)

func TestVersionCompare(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"1.0.0", "1.0.0", 0},
		{"1.0.0", "1.0.1", -1},
		{"1.10.0", "1.9.9", 1},
		{"2.0.0", "10.0.0", -1},
		{"1.0.0-rc.1", "1.0.0", -1},
		{"1.0.0-rc.2", "1.0.0-rc.10", -1},
		{"1.0.0-alpha", "1.0.0-alpha.1", -1},
		{"1.0.0-beta", "1.0.0-alpha", 1},
		{"1.0.0-1", "1.0.0-alpha", -1},
		{"1.0.0-01", "1.0.0-1", -1}, // equal numbers, written differently: ordered by text
		{"1.0.0-rc.007", "1.0.0-rc.7", -1},
	}
	for _, tc := range tests {
		a, err := ParseVersion(tc.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseVersion(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Compare(b); got != tc.want {
			t.Errorf("Compare(%q, %q) = %d; want %d", tc.a, tc.b, got, tc.want)
		}
		if got := b.Compare(a); got != -tc.want {
			t.Errorf("Compare(%q, %q) = %d; want %d (antisymmetric)", tc.b, tc.a, got, -tc.want)
		}
		fa, _ := a.Floor()
		fb, _ := b.Floor()
		if tc.want < 0 && fa > fb || tc.want > 0 && fa < fb {
			t.Errorf("Floor(%q)=%d, Floor(%q)=%d: not monotonic", tc.a, fa, tc.b, fb)
		}
	}
	for _, bad := range []string{"", "1", "1.0", "01.0.0", "1.0.0+build", "v1.0.0", "1.0.0/../x", "1.0.0-"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) succeeded; want an error", bad)
		}
	}
}

func TestTargetPath(t *testing.T) {
	p := TargetPath(KindModel, "iris", "1.2.3", ".onnx")
	if p != "models/iris/1.2.3.onnx" {
		t.Fatalf("TargetPath = %q", p)
	}
	k, n, v, err := ParseTargetPath(p)
	if err != nil || k != KindModel || n != "iris" || v != "1.2.3" {
		t.Fatalf("ParseTargetPath(%q) = %v %v %v %v", p, k, n, v, err)
	}
	for _, bad := range []string{"models/iris", "models/../x/1.0.0.onnx", "etc/iris/1.0.0", "models/Iris/1.0.0.onnx", "models/iris/x.onnx", "models/iris/1.0.0/extra"} {
		if _, _, _, err := ParseTargetPath(bad); err == nil {
			t.Errorf("ParseTargetPath(%q) succeeded; want an error", bad)
		}
	}
}

func TestMetaJSON(t *testing.T) {
	in := `{"kind":"model","name":"vibration-anomaly","version":"3.1.0","format":"onnx",
	 "probe":"probes/vibration-anomaly/3.1.0.json",
	 "gates":{"min_accuracy":0.95,"max_p99_ms":"5","max_rss_mb":256},
	 "hardware":["x86_64","aarch64"],"min_runtime":"1.24.0","owner":"team-a"}`
	var m Meta
	if err := json.Unmarshal([]byte(in), &m); err != nil {
		t.Fatal(err)
	}
	if err := m.Validate(); err != nil {
		t.Fatal(err)
	}
	if m.Gates.MinAccuracy != 0.95 || m.Gates.MaxP99Ms != 5 || m.Gates.MaxRSSMB != 256 || string(m.Extra["owner"]) != `"team-a"` {
		t.Fatalf("parsed %+v gates %+v", m, m.Gates)
	}
	out, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	json.Unmarshal(out, &back)
	g := back["gates"].(map[string]any)
	if g["min_accuracy"] != "0.95" || g["max_p99_ms"] != "5" || back["owner"] != "team-a" {
		t.Fatalf("marshalled %s: want gates as decimal strings and extra fields kept", out)
	}
	if err := json.Unmarshal([]byte(`{"min_acuracy":0.9}`), &Gates{}); err == nil {
		t.Fatal("a misspelt gate was accepted")
	}
	if g, err := ParseGates("min_accuracy=0.9, max_p99_ms=5"); err != nil || g.MinAccuracy != 0.9 || g.MaxP99Ms != 5 {
		t.Fatalf("ParseGates = %+v, %v", g, err)
	}
}
