package repository

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/keywrap"
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

// TestRepublishWithOtherMetadataIsRefused: the same name+version published again with
// the same content but other custom metadata is refused (ErrMetadataConflict, an
// ErrConflict) naming each field that differs, and changes nothing; the same metadata is
// still an unchanged no-op. It used to say "already published with the same content"
// and succeed while the signed gates stayed the old ones: an operator tightening
// min_accuracy from 0.85 to 0.99 believed the stricter gate was in force.
func TestRepublishWithOtherMetadataIsRefused(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	probe := []byte(`{"inputs":[[5.1,3.5,1.4,0.2]],"labels":[0]}`)
	for _, v := range []string{"1.0.0", "1.1.0"} {
		if _, err := f.publish(artifact.KindProbe, "iris", v, ".json", probe, nil); err != nil {
			t.Fatal(err)
		}
	}
	model := []byte("model 1.1.0")
	base := func(r *PublishRequest) {
		r.Meta.Gates = &artifact.Gates{MinAccuracy: 0.85}
		r.Meta.Hardware = []string{"x86_64"}
		r.Meta.MinRuntime = "1.20.0"
		r.Meta.Extra = map[string]json.RawMessage{"owner": json.RawMessage(`"vision"`)}
	}
	first, err := f.publish(artifact.KindModel, "iris", "1.1.0", ".onnx", model, base)
	if err != nil {
		t.Fatal(err)
	}
	before := snapshotFiles(t, f)
	with := func(mod func(*artifact.Meta)) func(*PublishRequest) {
		return func(r *PublishRequest) { base(r); mod(&r.Meta) }
	}
	for _, tc := range []struct {
		name string
		mod  func(*artifact.Meta)
		want string // "" for unchanged
	}{
		{"the same metadata", func(*artifact.Meta) {}, ""},
		{"the same probe set named", func(m *artifact.Meta) { m.Probe = "probes/iris/1.1.0.json" }, ""},
		{"a stricter gate", func(m *artifact.Meta) { m.Gates.MinAccuracy = 0.99 },
			`gates: signed {"min_accuracy":"0.85"}, now {"min_accuracy":"0.99"}`},
		{"another gate", func(m *artifact.Meta) { m.Gates.MaxRSSMB = 256 },
			`gates: signed {"min_accuracy":"0.85"}, now {"max_rss_mb":"256","min_accuracy":"0.85"}`},
		{"no gates", func(m *artifact.Meta) { m.Gates = nil }, `gates: signed {"min_accuracy":"0.85"}, now none`},
		{"another probe set", func(m *artifact.Meta) { m.Probe = "probes/iris/1.0.0.json" },
			`probe: signed "probes/iris/1.1.0.json", now "probes/iris/1.0.0.json"`},
		{"other hardware", func(m *artifact.Meta) { m.Hardware = []string{"x86_64", "aarch64"} },
			`hardware: signed ["x86_64"], now ["x86_64","aarch64"]`},
		{"another min_runtime", func(m *artifact.Meta) { m.MinRuntime = "1.24.0" }, `min_runtime: signed "1.20.0", now "1.24.0"`},
		{"another custom field", func(m *artifact.Meta) { m.Extra = map[string]json.RawMessage{"owner": json.RawMessage(`"audio"`)} },
			`owner: signed "vision", now "audio"`},
		{"a custom field more", func(m *artifact.Meta) { m.Extra["ticket"] = json.RawMessage(`"REL-7"`) }, `ticket: signed none, now "REL-7"`},
	} {
		res, err := f.publish(artifact.KindModel, "iris", "1.1.0", ".onnx", model, with(tc.mod))
		if tc.want == "" {
			if err != nil || !res.Unchanged || res.SHA256 != first.SHA256 {
				t.Errorf("republish with %s = %+v, %v; want Unchanged", tc.name, res, err)
			}
			continue
		}
		if !errors.Is(err, ErrMetadataConflict) || !errors.Is(err, ErrConflict) {
			t.Errorf("republish with %s = %+v, %v; want ErrMetadataConflict (ErrConflict)", tc.name, res, err)
			continue
		}
		for _, want := range []string{tc.want, "models/iris/1.1.0.onnx", "publish the change as a new version"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("republish with %s = %q; want it to say %q", tc.name, err, want)
			}
		}
	}
	if after := snapshotFiles(t, f); after != before {
		t.Fatalf("refused republishes changed the repository:\n%s\nthen\n%s", before, after)
	}
	if m := signedMeta(t, f, "models/iris/1.1.0.onnx"); m == nil || m.Gates == nil || *m.Gates != (artifact.Gates{MinAccuracy: 0.85}) {
		t.Fatalf("signed = %+v; want the first gates", m)
	}
}

// TestRepublishEncryptedWithOtherMetadataIsRefused: the same plaintext encrypted again
// (another ciphertext, the first kept) is unchanged only with the same metadata.
func TestRepublishEncryptedWithOtherMetadataIsRefused(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	kek, _ := keywrap.NewKEK(nil)
	if _, err := f.publish(artifact.KindProbe, "secret", "1.0.0", ".json", []byte(`{"inputs":[[1]],"labels":[0]}`), nil); err != nil {
		t.Fatal(err)
	}
	gates := func(acc float64) func(*PublishRequest) {
		return func(r *PublishRequest) { r.KEK, r.Meta.Gates = kek, &artifact.Gates{MinAccuracy: acc} }
	}
	plain := []byte("secret weights")
	if _, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, gates(0.85)); err != nil {
		t.Fatal(err)
	}
	if res, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, gates(0.85)); err != nil || !res.Unchanged {
		t.Fatalf("republish of the same plaintext and metadata = %+v, %v; want Unchanged", res, err)
	}
	before := snapshotFiles(t, f)
	if _, err := f.publish(artifact.KindModel, "secret", "1.0.0", ".onnx", plain, gates(0.99)); !errors.Is(err, ErrMetadataConflict) || !strings.Contains(err.Error(), "min_accuracy") {
		t.Fatalf("republish of the same plaintext with a stricter gate = %v; want ErrMetadataConflict naming the gate", err)
	}
	if after := snapshotFiles(t, f); after != before {
		t.Fatalf("refused republish changed the repository:\n%s\nthen\n%s", before, after)
	}
}
