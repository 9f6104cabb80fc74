package runtime

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"unsafe"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// datatypeOf maps an ONNX element type to its protocol name; ok is false for element
// types the runtime does not serve (complex, 8-bit floats, …).
func datatypeOf(t ort.TensorElementDataType) (runtimeapi.Datatype, bool) {
	for dt, et := range elemTypes {
		if et == t {
			return dt, true
		}
	}
	return "", false
}

// elemTypes maps each served datatype to its ONNX element type (read-only).
var elemTypes = map[runtimeapi.Datatype]ort.TensorElementDataType{
	runtimeapi.FP16:   ort.TensorElementDataTypeFloat16,
	runtimeapi.BF16:   ort.TensorElementDataTypeBFloat16,
	runtimeapi.FP32:   ort.TensorElementDataTypeFloat,
	runtimeapi.FP64:   ort.TensorElementDataTypeDouble,
	runtimeapi.INT8:   ort.TensorElementDataTypeInt8,
	runtimeapi.INT16:  ort.TensorElementDataTypeInt16,
	runtimeapi.INT32:  ort.TensorElementDataTypeInt32,
	runtimeapi.INT64:  ort.TensorElementDataTypeInt64,
	runtimeapi.UINT8:  ort.TensorElementDataTypeUint8,
	runtimeapi.UINT16: ort.TensorElementDataTypeUint16,
	runtimeapi.UINT32: ort.TensorElementDataTypeUint32,
	runtimeapi.UINT64: ort.TensorElementDataTypeUint64,
	runtimeapi.BOOL:   ort.TensorElementDataTypeBool,
	runtimeapi.BYTES:  ort.TensorElementDataTypeString,
}

// tensorData is one tensor's elements in the layout ONNX Runtime reads them: the
// little-endian bytes of every element (BOOL as one byte, 0 or 1), or the byte strings of
// a BYTES tensor. The runtime refuses to start on a big-endian host (New), so the bytes
// are also the host's layout. n is the element count.
type tensorData struct {
	raw  []byte
	strs []string
	n    int
}

// consistent reports whether the data holds n elements of dt in the field dt uses, with
// BOOL bytes 0 or 1.
func (td *tensorData) consistent(dt runtimeapi.Datatype) bool {
	if dt == runtimeapi.BYTES {
		return td.raw == nil && len(td.strs) == td.n
	}
	if td.strs != nil || len(td.raw) != td.n*dt.Size() || dt.Size() == 0 {
		return false
	}
	if dt == runtimeapi.BOOL {
		for _, b := range td.raw {
			if b > 1 {
				return false
			}
		}
	}
	return true
}

// float returns element i widened to float64 (0/1 for BOOL, NaN for BYTES).
func (td *tensorData) float(dt runtimeapi.Datatype, i int) float64 {
	b := td.raw
	le := binary.LittleEndian
	switch dt {
	case runtimeapi.FP32:
		return float64(math.Float32frombits(le.Uint32(b[4*i:])))
	case runtimeapi.FP64:
		return math.Float64frombits(le.Uint64(b[8*i:]))
	case runtimeapi.FP16:
		return float64(f16ToF32(le.Uint16(b[2*i:])))
	case runtimeapi.BF16:
		return float64(math.Float32frombits(uint32(le.Uint16(b[2*i:])) << 16))
	case runtimeapi.INT8:
		return float64(int8(b[i]))
	case runtimeapi.INT16:
		return float64(int16(le.Uint16(b[2*i:])))
	case runtimeapi.INT32:
		return float64(int32(le.Uint32(b[4*i:])))
	case runtimeapi.INT64:
		return float64(int64(le.Uint64(b[8*i:])))
	case runtimeapi.UINT8, runtimeapi.BOOL:
		return float64(b[i])
	case runtimeapi.UINT16:
		return float64(le.Uint16(b[2*i:]))
	case runtimeapi.UINT32:
		return float64(le.Uint32(b[4*i:]))
	case runtimeapi.UINT64:
		return float64(le.Uint64(b[8*i:]))
	}
	return math.NaN()
}

// encodeFloats returns float64 values as the data of a numeric datatype (rounded to
// nearest, integers truncated towards zero).
func encodeFloats(dt runtimeapi.Datatype, data []float64) tensorData {
	b := make([]byte, 0, len(data)*dt.Size())
	le := binary.LittleEndian
	for _, f := range data {
		switch dt {
		case runtimeapi.FP32:
			b = le.AppendUint32(b, math.Float32bits(float32(f)))
		case runtimeapi.FP64:
			b = le.AppendUint64(b, math.Float64bits(f))
		case runtimeapi.FP16:
			b = le.AppendUint16(b, f64ToF16(f))
		case runtimeapi.BF16:
			b = le.AppendUint16(b, f64ToBF16(f))
		case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32, runtimeapi.INT64:
			b = appendInt(b, int64(f), dt.Size())
		case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
			b = appendInt(b, int64(uint64(f)), dt.Size())
		case runtimeapi.BOOL:
			b = append(b, boolByte(f != 0))
		}
	}
	return tensorData{raw: b, n: len(data)}
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

// appendInt appends the low size bytes of x, little-endian.
func appendInt(b []byte, x int64, size int) []byte {
	for k := range size {
		b = append(b, byte(x>>(8*k)))
	}
	return b
}

// maxNesting bounds the bracket depth of a tensor's "data", so hostile input cannot make
// the decoder recurse or allocate without limit.
const maxNesting = 32

// decodeData parses the "data" member of a request tensor: a JSON array, flat or nested
// (row-major), of numbers (true/false for BOOL, strings for BYTES). It returns at most
// max elements, appended to dst's raw bytes, and rejects anything that is not of the
// datatype: strings, objects, null, fractions for integer types, out-of-range numbers.
func decodeData(raw []byte, dt runtimeapi.Datatype, max int, dst []byte) (tensorData, error) {
	td := tensorData{raw: dst[:0]}
	if cap(td.raw) == 0 && dt.Size() > 0 {
		// One allocation: at most one element per comma, plus one; at least 16 bytes,
		// so that Go's tiny allocator (which aligns a 12-byte object to 4) is not used
		// and the buffer is 8-byte aligned for whatever datatype reuses it later.
		n := min(bytes.Count(raw, []byte{','})+1, max) * dt.Size()
		if n < 16 {
			n = 16
		}
		td.raw = make([]byte, 0, n)
	}
	if dt == runtimeapi.BYTES {
		td.raw = nil
	} else if !dt.Known() {
		return td, fmt.Errorf("datatype %s is not supported", dt)
	}
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return td, errors.New("data must be a JSON array")
	}
	depth := 0
	expectValue := true // at the start of an array or after a comma
	afterComma := false
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '[':
			if !expectValue {
				return td, fmt.Errorf("data: unexpected '[' at offset %d", i)
			}
			depth++
			afterComma = false
			if depth > maxNesting {
				return td, fmt.Errorf("data: nested deeper than %d", maxNesting)
			}
			i++
		case c == ']':
			if depth == 0 || afterComma {
				return td, fmt.Errorf("data: unbalanced ']' at offset %d", i)
			}
			depth--
			expectValue = false
			i++
			if depth == 0 {
				if rest := bytes.TrimSpace(raw[i:]); len(rest) > 0 {
					return td, errors.New("data: trailing characters after the array")
				}
			}
		case c == ',':
			if expectValue || depth == 0 {
				return td, fmt.Errorf("data: unexpected ',' at offset %d", i)
			}
			expectValue, afterComma = true, true
			i++
		default:
			if !expectValue || depth == 0 {
				return td, fmt.Errorf("data: unexpected %q at offset %d", c, i)
			}
			if td.n >= max {
				return td, fmt.Errorf("data: more than %d elements", max)
			}
			var j int
			var err error
			if dt == runtimeapi.BYTES {
				j, err = td.appendString(raw, i)
			} else {
				j = i
				for j < len(raw) && raw[j] != ',' && raw[j] != ']' && raw[j] != ' ' && raw[j] != '\n' && raw[j] != '\t' && raw[j] != '\r' {
					j++
				}
				td.raw, err = appendToken(td.raw, string(raw[i:j]), dt)
			}
			if err != nil {
				return td, fmt.Errorf("data element %d: %w", td.n, err)
			}
			td.n++
			expectValue, afterComma = false, false
			i = j
		}
	}
	if depth != 0 {
		return td, errors.New("data: unterminated array")
	}
	return td, nil
}

// checkNesting checks that data nested in arrays nests as shape says: every element
// at the same depth, as deep as shape's rank, each array holding as many items as its
// dimension, no array empty. Flat data (one array) is row-major whatever the shape.
// decodeData has checked the syntax and the element count, which is all that flat data
// needs; before 1 Dec nested data was checked no further either, so [[1,2,3],[4]] was
// taken for a [2,2] tensor (found from outside).
func checkNesting(raw []byte, shape []int64) error {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || bytes.IndexByte(raw[1:], '[') < 0 {
		return nil // flat (a '[' inside a string only costs the scan below)
	}
	var counts [maxNesting + 2]int // items of the open array at each depth
	depth, leaf := 0, 0            // leaf: the elements' depth, once one is seen
	inValue, inString := false, false
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if inString {
			if c == '\\' {
				i++
			} else if c == '"' {
				inString = false
			}
			continue
		}
		switch c {
		case '[':
			if depth > 0 {
				counts[depth]++
			}
			depth++
			if depth >= len(counts) {
				return fmt.Errorf("data: nested deeper than %d", maxNesting)
			}
			counts[depth] = 0
		case ']':
			inValue = false
			if depth > 1 && counts[depth] == 0 {
				return errors.New("data: an empty array inside nested data")
			}
			if leaf > 1 && (depth > len(shape) || int64(counts[depth]) != shape[depth-1]) {
				return fmt.Errorf("data: an array at depth %d holds %d items; shape %s wants %s", depth, counts[depth], shapeText(shape), dimAt(shape, depth-1))
			}
			depth--
		case ',':
			inValue = false
		case ' ', '\t', '\n', '\r':
		default:
			if c == '"' {
				inString = true
			}
			if inValue {
				continue
			}
			inValue = true
			counts[depth]++
			if leaf == 0 {
				leaf = depth
			} else if leaf != depth {
				return fmt.Errorf("data: elements at depths %d and %d (nested data must be as deep everywhere)", leaf, depth)
			}
		}
	}
	if leaf > 1 && leaf != len(shape) {
		return fmt.Errorf("data: nested %d deep; shape %s has rank %d", leaf, shapeText(shape), len(shape))
	}
	return nil
}

// dimAt is shape's dimension k as an error message shows it.
func dimAt(shape []int64, k int) string {
	if k < len(shape) {
		return fmt.Sprint(shape[k])
	}
	return "no array at that depth"
}

// appendString decodes the JSON string at raw[i:] into a BYTES element and returns the
// offset after it.
func (td *tensorData) appendString(raw []byte, i int) (int, error) {
	if raw[i] != '"' {
		j := i
		for j < len(raw) && raw[j] != ',' && raw[j] != ']' {
			j++
		}
		return i, fmt.Errorf("%.32q is not a string (BYTES elements are JSON strings)", raw[i:j])
	}
	j := i + 1
	for j < len(raw) && raw[j] != '"' {
		if raw[j] == '\\' {
			j++
		}
		j++
	}
	if j >= len(raw) {
		return i, errors.New("unterminated string")
	}
	j++
	var s string
	if err := json.Unmarshal(raw[i:j], &s); err != nil {
		return i, fmt.Errorf("string: %w", err)
	}
	td.strs = append(td.strs, s)
	return j, nil
}

// appendToken appends one JSON value of datatype dt (a number, or true/false for BOOL)
// as its little-endian bytes.
func appendToken(b []byte, tok string, dt runtimeapi.Datatype) ([]byte, error) {
	le := binary.LittleEndian
	switch dt {
	case runtimeapi.BOOL:
		switch tok {
		case "true":
			return append(b, 1), nil
		case "false":
			return append(b, 0), nil
		}
		return b, fmt.Errorf("%.32q is not a BOOL (want true or false)", tok)
	case runtimeapi.FP32, runtimeapi.FP64, runtimeapi.FP16, runtimeapi.BF16:
		if !isJSONNumber(tok) {
			return b, fmt.Errorf("%.32q is not a number", tok)
		}
		// FP16 and BF16 are rounded once, from the number's float64 value: through
		// FP32 they were rounded twice, and 1.000488282 became FP16 1.0, not the
		// nearest 1.0009765625, and 65519.999999 overflowed instead of giving 65504
		// (found from outside, 2 Dec).
		bits := 64
		if dt == runtimeapi.FP32 {
			bits = 32
		}
		f, err := strconv.ParseFloat(tok, bits)
		if err != nil {
			return b, fmt.Errorf("%.32q out of range for %s", tok, dt)
		}
		switch dt {
		case runtimeapi.FP64:
			return le.AppendUint64(b, math.Float64bits(f)), nil
		case runtimeapi.FP32:
			return le.AppendUint32(b, math.Float32bits(float32(f))), nil
		case runtimeapi.FP16:
			h := f64ToF16(f)
			if h&0x7fff == 0x7c00 {
				return b, fmt.Errorf("%.32q out of range for FP16", tok)
			}
			return le.AppendUint16(b, h), nil
		}
		h := f64ToBF16(f)
		if h&0x7fff == 0x7f80 {
			return b, fmt.Errorf("%.32q out of range for BF16", tok)
		}
		return le.AppendUint16(b, h), nil
	case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32, runtimeapi.INT64:
		if !isJSONNumber(tok) {
			return b, fmt.Errorf("%.32q is not a number", tok)
		}
		i, err := strconv.ParseInt(tok, 10, 8*dt.Size())
		if err != nil {
			return b, fmt.Errorf("%.32q is not an integer in the range of %s", tok, dt)
		}
		return appendInt(b, i, dt.Size()), nil
	case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
		if !isJSONNumber(tok) {
			return b, fmt.Errorf("%.32q is not a number", tok)
		}
		u, err := strconv.ParseUint(tok, 10, 8*dt.Size())
		if err != nil {
			return b, fmt.Errorf("%.32q is not an integer in the range of %s", tok, dt)
		}
		return appendInt(b, int64(u), dt.Size()), nil
	}
	return b, fmt.Errorf("datatype %s is not supported", dt)
}

// isJSONNumber reports whether s is a number in JSON syntax (so "NaN", "0x1", "+1" and
// "1_000", which strconv would accept, are rejected).
func isJSONNumber(s string) bool {
	i := 0
	if i < len(s) && s[i] == '-' {
		i++
	}
	digits := func() int {
		j := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i - j
	}
	if i < len(s) && s[i] == '0' {
		i++
	} else if digits() == 0 {
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if digits() == 0 {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if digits() == 0 {
			return false
		}
	}
	return i == len(s)
}

// f32ToF16 rounds an FP32 to the nearest FP16 (ties to even); beyond FP16's range it is
// ±Inf, NaN stays NaN.
func f32ToF16(f float32) uint16 {
	b := math.Float32bits(f)
	sign := uint16(b>>16) & 0x8000
	exp := int(b>>23) & 0xff
	mant := b & 0x7fffff
	if exp == 0xff {
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	}
	if e := exp - 127 + 15; e >= 0x1f {
		return sign | 0x7c00
	} else if e > 0 {
		h := uint32(e)<<10 | mant>>13
		rem := mant & 0x1fff
		if rem > 0x1000 || (rem == 0x1000 && h&1 == 1) {
			h++ // may carry into the exponent, up to Inf: correct rounding
		}
		return sign | uint16(h)
	}
	// FP16 subnormal: the value is m × 2^-24.
	shift := uint(126 - exp)
	if shift > 24 {
		return sign
	}
	m := mant | 0x800000
	h := m >> shift
	rem, half := m&(1<<shift-1), uint32(1)<<(shift-1)
	if rem > half || (rem == half && h&1 == 1) {
		h++
	}
	return sign | uint16(h)
}

// f16ToF32 widens an FP16 exactly.
func f16ToF32(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	mant := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | mant<<13)
	case exp == 0:
		f := float32(mant) / (1 << 24)
		if sign != 0 {
			f = -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+112)<<23 | mant<<13)
}

// f64ToF16 rounds a float64 to the nearest FP16 (ties to even), in one rounding;
// beyond FP16's range it is an infinity, NaN a quiet NaN.
func f64ToF16(f float64) uint16 { return f64ToSmall(f, 5, 10) }

// f64ToBF16 rounds a float64 to the nearest BF16 (ties to even), in one rounding.
func f64ToBF16(f float64) uint16 { return f64ToSmall(f, 8, 7) }

// f64ToSmall rounds f to the nearest value of a binary floating-point format with ebits
// exponent and mbits mantissa bits (IEEE 754 layout, subnormals included), ties to even:
// past the largest finite value, an infinity; NaN a quiet NaN.
func f64ToSmall(f float64, ebits, mbits uint) uint16 {
	b := math.Float64bits(f)
	sign := uint16(b>>63) << (ebits + mbits)
	exp := int(b>>52) & 0x7ff
	mant := b & (1<<52 - 1)
	maxE := uint64(1)<<ebits - 1
	switch exp {
	case 0x7ff:
		if mant != 0 {
			return sign | uint16(maxE<<mbits) | 1<<(mbits-1)
		}
		return sign | uint16(maxE<<mbits)
	case 0: // a float64 subnormal is far below the smallest value of either format
		return sign
	}
	bias := 1<<(ebits-1) - 1
	e := exp - 1023 + bias // the biased exponent in the small format
	var sig, base uint64
	var shift uint
	if e >= 1 {
		sig, base, shift = mant, uint64(e)<<mbits, 52-mbits
	} else {
		// A subnormal of the small format: the significand, its leading one included,
		// in units of the smallest subnormal.
		if 1-e > 63-52+int(mbits) {
			return sign
		}
		sig, shift = mant|1<<52, 52-mbits+uint(1-e)
	}
	r := base + sig>>shift
	rem, half := sig&(1<<shift-1), uint64(1)<<(shift-1)
	if rem > half || (rem == half && r&1 == 1) {
		r++ // may carry into the exponent: correct
	}
	if r >= maxE<<mbits {
		return sign | uint16(maxE<<mbits)
	}
	return sign | uint16(r)
}

// f32ToBF16 rounds an FP32 to the nearest BF16 (ties to even), NaN stays NaN.
func f32ToBF16(f float32) uint16 {
	b := math.Float32bits(f)
	if b&0x7fffffff > 0x7f800000 {
		return uint16(b>>16) | 0x40
	}
	b += 0x7fff + (b>>16)&1
	return uint16(b >> 16)
}

// newTensor builds an ORT tensor of the given datatype and shape over the data (no
// copy: the tensor reads td.raw). The caller destroys it.
func newTensor(dt runtimeapi.Datatype, shape []int64, td *tensorData) (ort.Value, error) {
	s := ort.NewShape(shape...)
	if dt == runtimeapi.BYTES {
		t, err := ort.NewStringTensor(s)
		if err != nil {
			return nil, err
		}
		if err := t.SetContents(td.strs); err != nil {
			t.Destroy()
			return nil, err
		}
		return t, nil
	}
	et, ok := elemTypes[dt]
	if !ok {
		return nil, fmt.Errorf("datatype %s is not supported", dt)
	}
	if raw := td.raw; len(raw) > 0 && uintptr(unsafe.Pointer(&raw[0]))%uintptr(dt.Size()) != 0 {
		// ONNX Runtime's kernels read aligned elements. Buffers decoded here are aligned
		// (decodeData, decodeBinary), but one reused from an earlier request of another
		// datatype may not be (a 12-byte FP32 buffer from Go's tiny allocator is 4-byte
		// aligned, then holds an INT64): copy rather than hand ORT a misaligned tensor.
		td.raw = append(alignedBytes(len(raw))[:0], raw...)
	}
	return ort.NewCustomDataTensor(s, td.raw, et)
}

// Output is one output tensor of an inference, its elements in row-major order.
type Output struct {
	Name     string
	Datatype runtimeapi.Datatype
	Shape    []int64
	tensorData
}

// Floats returns the output's elements as float64, whatever its datatype (bools as 0/1,
// BYTES as NaN).
func (o *Output) Floats() []float64 {
	out := make([]float64, o.n)
	for i := range out {
		out[i] = o.float(o.Datatype, i)
	}
	return out
}

// appendBinary appends the output's elements as binary tensor data: the little-endian elements,
// or for BYTES each element's 4-byte little-endian length and bytes.
func (o *Output) appendBinary(b []byte) []byte {
	if o.Datatype != runtimeapi.BYTES {
		return append(b, o.raw...)
	}
	for _, s := range o.strs {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

// binarySize is the length of appendBinary's data.
func (o *Output) binarySize() int {
	if o.Datatype != runtimeapi.BYTES {
		return len(o.raw)
	}
	n := 4 * len(o.strs)
	for _, s := range o.strs {
		n += len(s)
	}
	return n
}

// asBytes returns the memory of s as bytes, without copying.
func asBytes[T any](s []T) []byte {
	if len(s) == 0 {
		return []byte{}
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(s))), len(s)*int(unsafe.Sizeof(s[0])))
}

// outputFrom takes an ORT output value as an Output of the model's declared datatype.
// The Output shares the value's Go memory (which outlives v.Destroy); it does not
// destroy v.
func outputFrom(meta runtimeapi.TensorMeta, v ort.Value) (Output, error) {
	o := Output{Name: meta.Name, Datatype: meta.Datatype, Shape: []int64(v.GetShape().Clone())}
	o.n = int(v.GetShape().FlattenedSize())
	switch t := v.(type) {
	case *ort.Tensor[float32]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[float64]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[int8]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[int16]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[int32]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[int64]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[uint8]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[uint16]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[uint32]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[uint64]:
		o.raw = asBytes(t.GetData())
	case *ort.Tensor[bool]:
		o.raw = asBytes(t.GetData())
	case *ort.CustomDataTensor:
		o.raw = t.GetData()
	case *ort.StringTensor:
		s, err := t.GetContents()
		if err != nil {
			return o, fmt.Errorf("output %q: %w", meta.Name, err)
		}
		o.strs = s
	default:
		return o, fmt.Errorf("output %q: unsupported value type %T", meta.Name, v)
	}
	if !o.consistent(o.Datatype) {
		return o, fmt.Errorf("output %q: %T does not hold %d %s elements", meta.Name, v, o.n, o.Datatype)
	}
	return o, nil
}

// appendJSON appends elements [from, to) of the output's data as JSON values separated
// by commas (a comma before each but the output's first). Non-finite floats, which JSON
// cannot carry, are written as null; BYTES elements as JSON strings.
func (o *Output) appendJSON(b []byte, from, to int) []byte {
	for i := from; i < to; i++ {
		if i > 0 {
			b = append(b, ',')
		}
		switch o.Datatype {
		case runtimeapi.BYTES:
			b = appendJSONString(b, o.strs[i])
		case runtimeapi.BOOL:
			b = strconv.AppendBool(b, o.raw[i] != 0)
		case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32, runtimeapi.INT64:
			b = strconv.AppendInt(b, o.intAt(o.Datatype, i), 10)
		case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
			b = strconv.AppendUint(b, uint64(o.intAt(o.Datatype, i)), 10)
		default:
			f := o.float(o.Datatype, i)
			if math.IsNaN(f) || math.IsInf(f, 0) {
				b = append(b, "null"...)
				continue
			}
			bits := 32
			if o.Datatype == runtimeapi.FP64 {
				bits = 64
			}
			b = strconv.AppendFloat(b, f, 'g', -1, bits)
		}
	}
	return b
}

// jsonElementMax is the most bytes appendJSON writes for element i, its comma included:
// the longest value of its datatype ("-2.2250738585072014e-308" for FP64, a float32's
// shortest form for the 16- and 32-bit floats), or for a BYTES element six bytes per
// byte (each escaped as \u00XX, or invalid UTF-8 as \ufffd) and its quotes.
func (o *Output) jsonElementMax(i int) int {
	switch o.Datatype {
	case runtimeapi.BYTES:
		return 6*len(o.strs[i]) + 3
	case runtimeapi.BOOL:
		return 6
	case runtimeapi.INT8, runtimeapi.UINT8:
		return 5
	case runtimeapi.INT16, runtimeapi.UINT16:
		return 7
	case runtimeapi.INT32, runtimeapi.UINT32:
		return 12
	case runtimeapi.INT64, runtimeapi.UINT64:
		return 21
	case runtimeapi.FP64:
		return 25
	default:
		return 16
	}
}

// elementsOf is the element count of shape, or an error when a dimension is negative or
// the product exceeds max.
func elementsOf(shape []int64, max int) (int, error) {
	n := int64(1)
	for _, d := range shape {
		if d < 0 {
			return 0, fmt.Errorf("shape %v has a negative dimension", shape)
		}
		if d > 0 && n > int64(max)/d {
			return 0, fmt.Errorf("shape %v has more than %d elements", shape, max)
		}
		n *= d
	}
	return int(n), nil
}

// intAt returns integer element i exactly: sign-extended for signed datatypes,
// zero-extended (to be read as uint64) for unsigned ones.
func (td *tensorData) intAt(dt runtimeapi.Datatype, i int) int64 {
	b, le := td.raw, binary.LittleEndian
	switch dt {
	case runtimeapi.INT8:
		return int64(int8(b[i]))
	case runtimeapi.INT16:
		return int64(int16(le.Uint16(b[2*i:])))
	case runtimeapi.INT32:
		return int64(int32(le.Uint32(b[4*i:])))
	case runtimeapi.INT64, runtimeapi.UINT64:
		return int64(le.Uint64(b[8*i:]))
	case runtimeapi.UINT8, runtimeapi.BOOL:
		return int64(b[i])
	case runtimeapi.UINT16:
		return int64(le.Uint16(b[2*i:]))
	case runtimeapi.UINT32:
		return int64(le.Uint32(b[4*i:]))
	}
	return 0
}
