package repository

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// signedMeta is the custom metadata the repository signed for tpath (nil when it lists
// no such target).
func signedMeta(t *testing.T, f *fixture, tpath string) *artifact.Meta {
	t.Helper()
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, ti := range st.List() {
		if ti.Path == tpath {
			if ti.Meta == nil {
				return &artifact.Meta{}
			}
			return ti.Meta
		}
	}
	return nil
}

// TestGatedModelNeedsItsProbeSet: a model with commit gates is refused, before anything
// is signed, when no probe set is named or published for it. Devices judge every gate
// on a probe run (agent.RuntimeJudge fails a trial with gates and no probe set), so such
// a model used to be signed, download to every device, fail there, and burn its version:
// a probe set published afterwards was not linked to it.
func TestGatedModelNeedsItsProbeSet(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	probe := []byte(`{"inputs":[[5.1,3.5,1.4,0.2]],"labels":[0]}`)
	if _, err := f.publish(artifact.KindProbe, "iris", "1.0.0", ".json", probe, nil); err != nil {
		t.Fatal(err)
	}
	gates := func(g *artifact.Gates, probe string) func(*PublishRequest) {
		return func(r *PublishRequest) { r.Meta.Gates, r.Meta.Probe = g, probe }
	}
	for _, tc := range []struct {
		name string
		g    *artifact.Gates
	}{
		{"min_accuracy", &artifact.Gates{MinAccuracy: 0.85}},
		{"max_p99_ms", &artifact.Gates{MaxP99Ms: 5}},
		{"max_abs_error", &artifact.Gates{MaxAbsError: 0.1}},
		// Peak memory is measured during the probe run too: without one it is not
		// measured, and a gate on it fails (runtimeapi.Decide).
		{"max_rss_mb alone", &artifact.Gates{MaxRSSMB: 256}},
	} {
		before := snapshotFiles(t, f)
		_, err := f.publish(artifact.KindModel, "iris", "1.1.0", ".onnx", []byte("model 1.1.0"), gates(tc.g, ""))
		if !errors.Is(err, ErrNoProbeSet) || !errors.Is(err, ErrInvalid) {
			t.Fatalf("publish with gates %s and no probe set = %v; want ErrNoProbeSet (ErrInvalid)", tc.name, err)
		}
		for _, want := range []string{"probes/iris/1.1.0.json", "publish the probe set first", "--probe"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("publish with gates %s and no probe set = %q; want it to say %q", tc.name, err, want)
			}
		}
		if after := snapshotFiles(t, f); after != before {
			t.Fatalf("refused publish (gates %s) changed the repository:\n%s\nthen\n%s", tc.name, before, after)
		}
	}
	if m := signedMeta(t, f, "models/iris/1.1.0.onnx"); m != nil {
		t.Fatalf("refused model was signed: %+v", m)
	}

	// The version is not burned: with its probe set published first it is linked.
	if _, err := f.publish(artifact.KindProbe, "iris", "1.1.0", ".json", probe, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := f.publish(artifact.KindModel, "iris", "1.1.0", ".onnx", []byte("model 1.1.0"), gates(&artifact.Gates{MinAccuracy: 0.85}, "")); err != nil {
		t.Fatalf("publish after its probe set = %v", err)
	}
	if m := signedMeta(t, f, "models/iris/1.1.0.onnx"); m == nil || m.Probe != "probes/iris/1.1.0.json" || m.Gates == nil || m.Gates.MinAccuracy != 0.85 {
		t.Fatalf("signed = %+v; want the probe set linked and the gate", m)
	}
	// A probe set named explicitly (another version's) is enough.
	if _, err := f.publish(artifact.KindModel, "iris", "1.2.0", ".onnx", []byte("model 1.2.0"), gates(&artifact.Gates{MaxRSSMB: 256}, "probes/iris/1.0.0.json")); err != nil {
		t.Fatalf("publish naming a published probe set = %v", err)
	}
	// No gates: no probe set needed. A gate set with nothing in it is no gate, and is
	// not signed as one (a device would refuse "gates":{} without a probe set).
	if _, err := f.publish(artifact.KindModel, "iris", "1.3.0", ".onnx", []byte("model 1.3.0"), nil); err != nil {
		t.Fatalf("publish without gates = %v", err)
	}
	if _, err := f.publish(artifact.KindModel, "iris", "1.4.0", ".onnx", []byte("model 1.4.0"), gates(&artifact.Gates{}, "")); err != nil {
		t.Fatalf("publish with an empty gate set = %v", err)
	}
	if m := signedMeta(t, f, "models/iris/1.4.0.onnx"); m == nil || m.Gates != nil || m.Probe != "" {
		t.Fatalf("signed = %+v; want neither gates nor a probe set", m)
	}
}
