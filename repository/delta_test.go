package repository

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/delta"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// TestPublishMakesDeltas: a retrained head gets a signed delta from each of the newest
// earlier versions (at most DefaultDeltas), which a TUF client downloads and applies to
// the exact new model; a full retrain gets none (not under 70 %).
func TestPublishMakesDeltas(t *testing.T) {
	f := newFixture(t, KeyEd25519)
	m := modelgen.Random(1, 64, 512, 512, 512, 10) // 2.2 MB, a 20 KB head
	versions := []string{"1.0.0", "1.1.0", "1.2.0", "1.3.0"}
	models := map[string][]byte{}
	for i, v := range versions {
		models[v] = m.RetrainLast(uint64(10+i)).ONNX("m", nil, nil)
		res, err := f.publish(artifact.KindModel, "m", v, ".onnx", models[v], nil)
		if err != nil {
			t.Fatalf("publish %s: %v", v, err)
		}
		if want := min(i, DefaultDeltas); len(res.Deltas) != want {
			t.Fatalf("publish %s made %d deltas (%+v); want %d", v, len(res.Deltas), res.Deltas, want)
		}
		for _, d := range res.Deltas {
			if d.Skipped != "" || d.Length*20 > res.Length {
				t.Fatalf("publish %s: delta %+v of a %d-byte model; want one under 5 %%", v, d, res.Length)
			}
		}
	}
	// 1.3.0 has deltas from 1.2.0, 1.1.0 and 1.0.0 (the three newest), 1.0.0 none.
	st, err := f.repo.Load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, ti := range st.List() {
		if ti.Delta != nil {
			if ti.Meta != nil || ti.Role != RoleModels {
				t.Errorf("delta %s listed with meta %v, role %s", ti.Path, ti.Meta, ti.Role)
			}
			found = append(found, ti.Delta.Base.Path+" -> "+ti.Delta.Result.Path)
		}
	}
	if len(found) != 6 {
		t.Errorf("deltas listed: %v; want 6 (1+2+3)", found)
	}

	// A device holding 1.1.0 fetches the delta to 1.3.0 through TUF and applies it.
	c := f.newClient()
	up := c.mustRefresh()
	baseSum := sha256.Sum256(models["1.1.0"])
	dpath := artifact.DeltaPath("models/m/1.3.0.onnx", hex.EncodeToString(baseSum[:]))
	data, tf, err := c.download(up, dpath)
	if err != nil {
		t.Fatalf("download delta %s: %v", dpath, err)
	}
	d, ok := artifact.ParseDelta(*tf.Custom)
	if !ok || d.Validate() != nil || d.Method != delta.MethodCDC || d.Base.Path != "models/m/1.1.0.onnx" || d.Result.Path != "models/m/1.3.0.onnx" {
		t.Fatalf("delta metadata = %+v, ok %v", d, ok)
	}
	var out bytes.Buffer
	if _, err := delta.Apply(context.Background(), bytes.NewReader(models["1.1.0"]), int64(len(models["1.1.0"])), bytes.NewReader(data), &out, d.Result.Length); err != nil {
		t.Fatalf("apply: %v", err)
	}
	if !bytes.Equal(out.Bytes(), models["1.3.0"]) {
		t.Fatal("delta applied to 1.1.0 is not 1.3.0")
	}

	// A full retrain: every delta is too large, none is published.
	full := m.Perturb(99, 0.001).ONNX("m", nil, nil)
	res, err := f.publish(artifact.KindModel, "m", "2.0.0", ".onnx", full, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range res.Deltas {
		if d.Skipped == "" || !strings.Contains(d.Skipped, "70 %") {
			t.Errorf("full retrain: delta %+v published; want skipped", d)
		}
	}

	// Retiring a version retires the deltas to and from it.
	if _, err := f.repo.Retire(context.Background(), RetireRequest{Kind: artifact.KindModel, Name: "m", Versions: []string{"1.1.0"}}, f.keyring()); err != nil {
		t.Fatal(err)
	}
	st, _ = f.repo.Load(context.Background())
	for _, ti := range st.List() {
		if ti.Delta != nil && (ti.Delta.Base.Path == "models/m/1.1.0.onnx" || ti.Delta.Result.Path == "models/m/1.1.0.onnx") {
			t.Errorf("delta %s still listed after its version was retired", ti.Path)
		}
	}
	// Deltas:-1 makes none.
	res, err = f.publish(artifact.KindModel, "m", "2.1.0", ".onnx", m.RetrainLast(50).ONNX("m", nil, nil), func(r *PublishRequest) { r.Deltas = -1 })
	if err != nil || len(res.Deltas) != 0 {
		t.Fatalf("publish with Deltas -1 = %+v, %v; want no deltas", res, err)
	}
}
