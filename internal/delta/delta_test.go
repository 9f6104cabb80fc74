package delta

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
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

// encode compresses raw delta operations (after the header for a base of baseLen
// bytes) as Diff's deltas are.
func encode(t *testing.T, baseLen int, ops ...[]byte) []byte {
	t.Helper()
	raw := binary.AppendUvarint([]byte(magic), uint64(baseLen))
	for _, op := range ops {
		raw = append(raw, op...)
	}
	enc, err := zstd.NewWriter(nil, zstd.WithWindowSize(Window), zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(raw, nil)
}

func copyOp(off, n int) []byte {
	return binary.AppendUvarint(binary.AppendUvarint([]byte{opCopy}, uint64(off)), uint64(n))
}

func endOp(n int) []byte { return binary.AppendUvarint([]byte{opEnd}, uint64(n)) }

// TestApplyRefusesTinyOperations: a delta of one-byte operations, 2 KB of zstd for a
// result of 1 MiB, cost the device one write and one hash step per result byte, seconds
// per MiB before the result's hash could refuse it (found from outside, 2 Dec). Diff's
// operations but the last are longer than 2 KiB, so a delta whose operations average
// less is corrupt as soon as it shows: the work stays proportional to the bytes made.
func TestApplyRefusesTinyOperations(t *testing.T) {
	const size = 1 << 20
	base := make([]byte, 64<<10)
	repeat := func(op []byte, n int) []byte { return bytes.Repeat(op, n) }
	for _, tc := range []struct {
		name string
		ops  [][]byte
		// most is the most result bytes Apply may make before it refuses.
		most int64
	}{
		{"one-byte copies", [][]byte{repeat(copyOp(0, 1), size), endOp(size)}, 1},
		{"one-byte literals", [][]byte{repeat([]byte{opLiteral, 1, 'x'}, size), endOp(size)}, 1},
		{"a 64 KiB copy, then one-byte copies", [][]byte{copyOp(0, 64<<10), repeat(copyOp(0, 1), size-64<<10), endOp(size)}, 64<<10 + 64<<10/minChunk},
		{"one-byte copies after every 2 KiB literal", [][]byte{repeat(append(append([]byte{opLiteral, 0x80, 0x10}, make([]byte, 2<<10)...), copyOp(0, 1)...), size/(2<<10+1)), endOp(size / (2<<10 + 1) * (2<<10 + 1))}, 2<<10 + 2},
	} {
		d := encode(t, len(base), tc.ops...)
		var out countingWriter
		n, err := Apply(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(d), &out, size)
		if !errors.Is(err, ErrCorrupt) || n > tc.most {
			t.Errorf("Apply(%s, %d-byte delta) = %d bytes, %v; want ErrCorrupt after at most %d bytes", tc.name, len(d), n, err, tc.most)
		}
	}
}

// countingWriter counts the bytes and the calls written to it.
type countingWriter struct{ n, writes int64 }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.n += int64(len(p))
	w.writes++
	return len(p), nil
}

// everyOtherChunkChanged returns b with the first byte of every other chunk flipped: a
// byte the chunker does not hash, so the chunks keep their bounds and Diff's delta
// alternates copies and literals of one chunk each, as many operations as Diff makes
// for so many bytes.
func everyOtherChunkChanged(b []byte) []byte {
	c := bytes.Clone(b)
	i := 0
	chunks(bytes.NewReader(b), func(off int64, _ []byte) error {
		if i%2 == 1 {
			c[off] ^= 0xff
		}
		i++
		return nil
	})
	return c
}

// TestApplyWritesInLargePieces: Apply wrote each operation to w as it came, one
// write(2) per operation into the device's result file. It buffers: w gets 256 KiB at
// a time whatever the operations are.
func TestApplyWritesInLargePieces(t *testing.T) {
	base := make([]byte, 4<<20)
	rand.NewChaCha8([32]byte{1}).Read(base)
	target := everyOtherChunkChanged(base)
	d, st := diff(t, base, target)
	var w countingWriter
	n, err := Apply(context.Background(), bytes.NewReader(base), int64(len(base)), bytes.NewReader(d), &w, int64(len(target)))
	if err != nil || n != int64(len(target)) || w.n != n {
		t.Fatalf("Apply = %d, %v (%d bytes written); want %d", n, err, w.n, len(target))
	}
	if most := int64(len(target))/(256<<10) + 1; w.writes > most {
		t.Errorf("Apply of %d operations made %d writes to w; want at most %d (256 KiB each)", st.Ops, w.writes, most)
	}
}

// TestDiffDeltasApply: whatever the publisher's Diff makes applies, small files and
// the densest operations included: the bound on tiny operations refuses none of them.
func TestDiffDeltasApply(t *testing.T) {
	random := func(seed byte, n int) []byte {
		b := make([]byte, n)
		rand.NewChaCha8([32]byte{seed}).Read(b)
		return b
	}
	shapes := map[string]func(base []byte) []byte{
		"the same":              bytes.Clone,
		"all new":               func(b []byte) []byte { return random(9, len(b)) },
		"every other chunk new": everyOtherChunkChanged,
		"100 bytes inserted": func(b []byte) []byte {
			i := len(b) / 3
			return append(append(bytes.Clone(b[:i]), random(7, 100)...), b[i:]...)
		},
		"the last 3000 bytes cut": func(b []byte) []byte { return bytes.Clone(b[:max(0, len(b)-3000)]) },
		"1 byte appended":         func(b []byte) []byte { return append(bytes.Clone(b), 1) },
		"one byte":                func([]byte) []byte { return []byte{1} },
		"empty":                   func([]byte) []byte { return nil },
	}
	for _, size := range []int{0, 1, 100, minChunk - 1, minChunk, minChunk + 1, 3000, 2*minChunk + 2, 5000, 70000, 1 << 20} {
		base := random(byte(size), size)
		for name, shape := range shapes {
			target := shape(base)
			d, st := diff(t, base, target)
			got, err := apply(base, d, int64(len(target)))
			if err != nil || !bytes.Equal(got, target) {
				t.Errorf("Apply(Diff of a %d-byte base, %s: %d ops for %d bytes) = %v (equal %v); want the target", size, name, st.Ops, len(target), err, bytes.Equal(got, target))
			}
		}
	}
}
