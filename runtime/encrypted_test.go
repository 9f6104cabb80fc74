package runtime

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/edgeward/edgeward/internal/segcrypt"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestLoadEncrypted: an encrypted model (issue 18) loads from its ciphertext with its
// content key, decrypted in memory, and serves the same answers as the plaintext; a
// wrong key, a changed byte or a wrong plaintext hash fail the load with a clear error.
func TestLoadEncrypted(t *testing.T) {
	ctx := context.Background()
	plain, err := os.ReadFile(irisModel(t))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := segcrypt.NewKey(nil)
	var ct bytes.Buffer
	info, err := segcrypt.Encrypt(ctx, &ct, key, bytes.NewReader(plain), segcrypt.Options{SegmentSize: segcrypt.MinSegmentSize})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "iris.onnx.enc")
	if err := os.WriteFile(path, ct.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	plainSum := hex.EncodeToString(info.PlainSHA256[:])
	req := func(mod func(*runtimeapi.LoadRequest)) runtimeapi.LoadRequest {
		q := runtimeapi.LoadRequest{Name: "iris", Version: "2.0.0", Path: path, SHA256: plainSum, Key: key[:], PlainLength: info.PlainLength}
		if mod != nil {
			mod(&q)
		}
		return q
	}

	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	got, err := r.Load(ctx, req(nil))
	if err != nil {
		t.Fatalf("Load(encrypted) = %v", err)
	}
	if cs := sha256.Sum256(ct.Bytes()); got.SHA256 != hex.EncodeToString(cs[:]) {
		t.Errorf("Load(encrypted).SHA256 = %s; want the ciphertext file's %x", got.SHA256, cs)
	}
	if ps := sha256.Sum256(plain); got.PlainSHA256 != hex.EncodeToString(ps[:]) {
		t.Errorf("Load(encrypted).PlainSHA256 = %q; want the plaintext's %x", got.PlainSHA256, ps)
	}
	for _, e := range r.Index() {
		if want := map[string]string{"1.0.0": "", "2.0.0": plainSum}[e.Version]; e.PlainSHA256 != want {
			t.Errorf("Index() %s %s: PlainSHA256 %q; want %q", e.Name, e.Version, e.PlainSHA256, want)
		}
	}
	in := []Input{NewInput("X", runtimeapi.FP32, []int64{3, 4}, []float64{5.1, 3.5, 1.4, 0.2, 6.7, 3.0, 5.2, 2.3, 5.9, 3.0, 4.2, 1.5})}
	a, err := r.Infer(ctx, "iris", "1.0.0", in, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := r.Infer(ctx, "iris", "2.0.0", in, nil)
	if err != nil {
		t.Fatalf("Infer on the encrypted model = %v", err)
	}
	if len(a.Outputs) == 0 || len(a.Outputs) != len(b.Outputs) {
		t.Fatalf("outputs: plaintext %d, encrypted %d", len(a.Outputs), len(b.Outputs))
	}
	for i := range a.Outputs {
		if wa, wb := widen(a.Outputs[i].Datatype, &a.Outputs[i].tensorData), widen(b.Outputs[i].Datatype, &b.Outputs[i].tensorData); !reflect.DeepEqual(wa, wb) {
			t.Errorf("output %s: plaintext model %v, encrypted model %v", a.Outputs[i].Name, wa, wb)
		}
	}

	other, _ := segcrypt.NewKey(nil)
	flipped := filepath.Join(dir, "flipped.enc")
	fb := bytes.Clone(ct.Bytes())
	fb[len(fb)/2] ^= 1
	if err := os.WriteFile(flipped, fb, 0o644); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte("another model"))
	for i, c := range []struct {
		name string
		mod  func(*runtimeapi.LoadRequest)
		want error
	}{
		{"wrong key", func(q *runtimeapi.LoadRequest) { q.Key = other[:] }, segcrypt.ErrAuth},
		{"changed byte", func(q *runtimeapi.LoadRequest) { q.Path = flipped }, segcrypt.ErrAuth},
		{"wrong length", func(q *runtimeapi.LoadRequest) { q.PlainLength-- }, segcrypt.ErrLength},
		{"short key", func(q *runtimeapi.LoadRequest) { q.Key = key[:16] }, runtimeapi.ErrInvalid},
		{"plaintext hash", func(q *runtimeapi.LoadRequest) { q.SHA256 = hex.EncodeToString(sum[:]) }, runtimeapi.ErrInvalid},
	} {
		_, err := r.Load(ctx, req(func(q *runtimeapi.LoadRequest) { q.Version = "3.0." + string(rune('0'+i)); c.mod(q) }))
		if !errors.Is(err, c.want) || !errors.Is(err, runtimeapi.ErrInvalid) {
			t.Errorf("Load(%s) = %v; want %v (and ErrInvalid)", c.name, err, c.want)
		}
	}
}

// BenchmarkLoadEncrypted: what decrypting in memory adds to a model's load (issue 18),
// beside the same model loaded in clear, on a 17 MB MLP (modelgen.Random).
func BenchmarkLoadEncrypted(b *testing.B) {
	ctx := context.Background()
	plain := modelgen.Random(1, 64, 2048, 2048, 10).ONNX("bench", nil, nil) // ≈ 17 MB
	key, _ := segcrypt.NewKey(nil)
	var ct bytes.Buffer
	info, err := segcrypt.Encrypt(ctx, &ct, key, bytes.NewReader(plain), segcrypt.Options{})
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	pp, cp := filepath.Join(dir, "m.onnx"), filepath.Join(dir, "m.onnx.enc")
	os.WriteFile(pp, plain, 0o644)
	os.WriteFile(cp, ct.Bytes(), 0o644)
	r := newTestRuntime(b)
	for _, c := range []struct {
		name string
		req  runtimeapi.LoadRequest
	}{
		{"plain", runtimeapi.LoadRequest{Name: "m", Path: pp}},
		{"encrypted", runtimeapi.LoadRequest{Name: "m", Path: cp, Key: key[:], PlainLength: info.PlainLength, SHA256: hex.EncodeToString(info.PlainSHA256[:])}},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(plain)))
			for i := 0; b.Loop(); i++ {
				q := c.req
				q.Version = fmt.Sprintf("1.0.%d", i)
				if _, err := r.Load(ctx, q); err != nil {
					b.Fatal(err)
				}
				if err := r.Unload(ctx, "m", q.Version); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
