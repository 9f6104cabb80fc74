package delta

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/edgeward/edgeward/runtime/modelgen"
)

func diff(t *testing.T, base, target []byte) ([]byte, Stats) {
	t.Helper()
	var out bytes.Buffer
	st, err := Diff(context.Background(), bytes.NewReader(base), bytes.NewReader(target), &out)
	if err != nil {
		t.Fatalf("Diff: %v", err)
	}
	return out.Bytes(), st
}

func apply(base, d []byte, max int64) ([]byte, error) {
	var out bytes.Buffer
	n, err := Apply(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(d), &out, max)
	if err == nil && n != int64(out.Len()) {
		return nil, errors.New("length returned differs from bytes written")
	}
	return out.Bytes(), err
}

// TestRetrainedHead: a model whose last layer was retrained is a small delta that
// applies to exactly the new model.
func TestRetrainedHead(t *testing.T) {
	m := modelgen.Random(1, 64, 512, 512, 512, 10)
	base := m.ONNX("big", nil, nil)
	target := m.RetrainLast(2).ONNX("big", nil, nil)
	d, st := diff(t, base, target)
	got, err := apply(base, d, int64(len(target)))
	if err != nil {
		t.Fatalf("Apply: %v", err)
	}
	if !bytes.Equal(got, target) {
		t.Fatalf("Apply gave %d bytes that differ from the %d-byte target", len(got), len(target))
	}
	head := 512*10*4 + 10*4
	if len(d) > head+4*maxChunk {
		t.Errorf("delta of a retrained %d-byte head is %d bytes (%+v); want at most the head and 4 chunks", head, len(d), st)
	}
	t.Logf("base %d, target %d, delta %d (%.2f%%), %+v", len(base), len(target), len(d), 100*float64(len(d))/float64(len(target)), st)
}

// TestShiftedContent: an insertion near the start moves everything after it; content-
// defined chunks still match.
func TestShiftedContent(t *testing.T) {
	base := modelgen.Random(3, 64, 512, 512, 10).ONNX("big", nil, nil)
	target := append(append(append([]byte{}, base[:1000]...), bytes.Repeat([]byte("inserted"), 100)...), base[1000:]...)
	d, st := diff(t, base, target)
	if got, err := apply(base, d, int64(len(target))); err != nil || !bytes.Equal(got, target) {
		t.Fatalf("Apply: %v (equal %v)", err, bytes.Equal(got, target))
	}
	if st.Copied < int64(len(base))*9/10 {
		t.Errorf("after an 800-byte insertion only %d of %d bytes are copied", st.Copied, len(base))
	}
}

// TestFullRetrain: every weight changed: nothing to copy.
func TestFullRetrain(t *testing.T) {
	m := modelgen.Random(4, 64, 512, 512, 10)
	base := m.ONNX("big", nil, nil)
	target := m.Perturb(5, 0.01).ONNX("big", nil, nil)
	d, st := diff(t, base, target)
	if st.Copied > int64(len(target))/20 {
		t.Errorf("full retrain copies %d of %d bytes", st.Copied, len(target))
	}
	if got, err := apply(base, d, int64(len(target))); err != nil || !bytes.Equal(got, target) {
		t.Fatalf("Apply: %v", err)
	}
}

func TestApplyRefuses(t *testing.T) {
	m := modelgen.Random(6, 64, 256, 10)
	base := m.ONNX("m", nil, nil)
	target := m.RetrainLast(7).ONNX("m", nil, nil)
	d, _ := diff(t, base, target)
	if _, err := apply(base[:len(base)-1], d, 1<<30); !errors.Is(err, ErrBaseMismatch) {
		t.Errorf("Apply to a shorter base = %v; want ErrBaseMismatch", err)
	}
	if _, err := apply(base, d, int64(len(target))-1); !errors.Is(err, ErrTooLong) {
		t.Errorf("Apply with max one byte short = %v; want ErrTooLong", err)
	}
	if _, err := apply(base, d[:len(d)/2], 1<<30); err == nil {
		t.Errorf("Apply of a truncated delta succeeded")
	}
	if _, err := apply(base, []byte("not zstd at all"), 1<<30); err == nil {
		t.Errorf("Apply of garbage succeeded")
	}
	// Operations that produce nothing are never written by Diff: a delta of them (a
	// billion would compress to a few hundred KB) is corrupt at the first one, not work
	// for the device until its hash is checked.
	for _, op := range [][]byte{{opCopy, 0, 0}, {opLiteral, 0}} {
		raw := binary.AppendUvarint([]byte(magic), uint64(len(base)))
		for range 1000 {
			raw = append(raw, op...)
		}
		raw = append(raw, opEnd, 0)
		enc, err := zstd.NewWriter(nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := apply(base, enc.EncodeAll(raw, nil), 1<<30); !errors.Is(err, ErrCorrupt) {
			t.Errorf("Apply of empty %q operations = %v; want ErrCorrupt", op[0], err)
		}
	}
	// A flipped byte anywhere either fails or (in a literal) gives other bytes; never
	// a panic, never more than max.
	for i := 0; i < len(d); i += max(1, len(d)/200) {
		c := bytes.Clone(d)
		c[i] ^= 0x40
		got, err := apply(base, c, int64(len(target)))
		if err == nil && bytes.Equal(got, target) {
			t.Errorf("delta with byte %d flipped applied to the exact target", i)
		}
	}
}

func FuzzApply(f *testing.F) {
	m := modelgen.Random(8, 8, 64, 4)
	base := m.ONNX("m", nil, nil)
	var d bytes.Buffer
	if _, err := Diff(context.Background(), bytes.NewReader(base), bytes.NewReader(m.RetrainLast(9).ONNX("m", nil, nil)), &d); err != nil {
		f.Fatal(err)
	}
	f.Add(d.Bytes())
	f.Fuzz(func(t *testing.T, b []byte) {
		var out bytes.Buffer
		n, _ := Apply(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(b), &out, 1<<20)
		if n > 1<<20 || int64(out.Len()) > 1<<20 {
			t.Fatalf("wrote %d bytes, more than max", out.Len())
		}
	})
}
