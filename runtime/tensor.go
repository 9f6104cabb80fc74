package runtime

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"

	ort "github.com/yalue/onnxruntime_go"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// datatypeOf maps an ONNX element type to its protocol name; ok is false for element
// types the runtime does not serve (strings, float16, …).
func datatypeOf(t ort.TensorElementDataType) (runtimeapi.Datatype, bool) {
	switch t {
	case ort.TensorElementDataTypeFloat:
		return runtimeapi.FP32, true
	case ort.TensorElementDataTypeDouble:
		return runtimeapi.FP64, true
	case ort.TensorElementDataTypeInt8:
		return runtimeapi.INT8, true
	case ort.TensorElementDataTypeInt16:
		return runtimeapi.INT16, true
	case ort.TensorElementDataTypeInt32:
		return runtimeapi.INT32, true
	case ort.TensorElementDataTypeInt64:
		return runtimeapi.INT64, true
	case ort.TensorElementDataTypeUint8:
		return runtimeapi.UINT8, true
	case ort.TensorElementDataTypeUint16:
		return runtimeapi.UINT16, true
	case ort.TensorElementDataTypeUint32:
		return runtimeapi.UINT32, true
	case ort.TensorElementDataTypeUint64:
		return runtimeapi.UINT64, true
	case ort.TensorElementDataTypeBool:
		return runtimeapi.BOOL, true
	}
	return "", false
}

// Values is the decoded data of one tensor: exactly one field is set, chosen by the
// datatype (F for FP32/FP64, I for signed integers, U for unsigned, B for BOOL). Integers
// are range-checked against their datatype when decoded.
type values struct {
	F []float64
	I []int64
	U []uint64
	B []bool
}

func (v *values) len() int {
	return len(v.F) + len(v.I) + len(v.U) + len(v.B)
}

// maxNesting bounds the bracket depth of a tensor's "data", so hostile input cannot make
// the decoder recurse or allocate without limit.
const maxNesting = 32

// decodeData parses the "data" member of a request tensor: a JSON array, flat or nested
// (row-major), of numbers (or true/false for BOOL). It returns at most max elements and
// rejects anything that is not of the datatype: strings, objects, null, fractions for
// integer types, out-of-range integers.
func decodeData(raw []byte, dt runtimeapi.Datatype, max int) (values, error) {
	var v values
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '[' {
		return v, errors.New("data must be a JSON array")
	}
	depth, n := 0, 0
	expectValue := true // at the start of an array or after a comma
	afterComma := false
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '[':
			if !expectValue {
				return v, fmt.Errorf("data: unexpected '[' at offset %d", i)
			}
			depth++
			afterComma = false
			if depth > maxNesting {
				return v, fmt.Errorf("data: nested deeper than %d", maxNesting)
			}
			i++
		case c == ']':
			if depth == 0 || afterComma {
				return v, fmt.Errorf("data: unbalanced ']' at offset %d", i)
			}
			depth--
			expectValue = false
			i++
			if depth == 0 {
				if rest := bytes.TrimSpace(raw[i:]); len(rest) > 0 {
					return v, errors.New("data: trailing characters after the array")
				}
			}
		case c == ',':
			if expectValue || depth == 0 {
				return v, fmt.Errorf("data: unexpected ',' at offset %d", i)
			}
			expectValue, afterComma = true, true
			i++
		default:
			if !expectValue || depth == 0 {
				return v, fmt.Errorf("data: unexpected %q at offset %d", c, i)
			}
			j := i
			for j < len(raw) && raw[j] != ',' && raw[j] != ']' && raw[j] != ' ' && raw[j] != '\n' && raw[j] != '\t' && raw[j] != '\r' {
				j++
			}
			if n >= max {
				return v, fmt.Errorf("data: more than %d elements", max)
			}
			if err := v.appendToken(string(raw[i:j]), dt); err != nil {
				return v, fmt.Errorf("data element %d: %w", n, err)
			}
			n++
			expectValue, afterComma = false, false
			i = j
		}
	}
	if depth != 0 {
		return v, errors.New("data: unterminated array")
	}
	return v, nil
}

func (v *values) appendToken(tok string, dt runtimeapi.Datatype) error {
	switch dt {
	case runtimeapi.BOOL:
		switch tok {
		case "true":
			v.B = append(v.B, true)
		case "false":
			v.B = append(v.B, false)
		default:
			return fmt.Errorf("%.32q is not a BOOL (want true or false)", tok)
		}
	case runtimeapi.FP32, runtimeapi.FP64:
		if !isJSONNumber(tok) {
			return fmt.Errorf("%.32q is not a number", tok)
		}
		bits := 64
		if dt == runtimeapi.FP32 {
			bits = 32
		}
		f, err := strconv.ParseFloat(tok, bits)
		if err != nil {
			return fmt.Errorf("%.32q out of range for %s", tok, dt)
		}
		v.F = append(v.F, f)
	case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32, runtimeapi.INT64:
		if !isJSONNumber(tok) {
			return fmt.Errorf("%.32q is not a number", tok)
		}
		i, err := strconv.ParseInt(tok, 10, bitsOf(dt))
		if err != nil {
			return fmt.Errorf("%.32q is not an integer in the range of %s", tok, dt)
		}
		v.I = append(v.I, i)
	case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
		if !isJSONNumber(tok) {
			return fmt.Errorf("%.32q is not a number", tok)
		}
		u, err := strconv.ParseUint(tok, 10, bitsOf(dt))
		if err != nil {
			return fmt.Errorf("%.32q is not an integer in the range of %s", tok, dt)
		}
		v.U = append(v.U, u)
	default:
		return fmt.Errorf("datatype %s is not supported", dt)
	}
	return nil
}

func bitsOf(dt runtimeapi.Datatype) int {
	switch dt {
	case runtimeapi.INT8, runtimeapi.UINT8:
		return 8
	case runtimeapi.INT16, runtimeapi.UINT16:
		return 16
	case runtimeapi.INT32, runtimeapi.UINT32:
		return 32
	}
	return 64
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

// newTensor builds an ORT tensor of the given datatype and shape from decoded values.
// The caller destroys it.
func newTensor(dt runtimeapi.Datatype, shape []int64, v values) (ort.Value, error) {
	s := ort.NewShape(shape...)
	switch dt {
	case runtimeapi.FP32:
		return ort.NewTensor(s, convert[float32](v.F))
	case runtimeapi.FP64:
		return ort.NewTensor(s, v.F)
	case runtimeapi.INT8:
		return ort.NewTensor(s, convert[int8](v.I))
	case runtimeapi.INT16:
		return ort.NewTensor(s, convert[int16](v.I))
	case runtimeapi.INT32:
		return ort.NewTensor(s, convert[int32](v.I))
	case runtimeapi.INT64:
		return ort.NewTensor(s, v.I)
	case runtimeapi.UINT8:
		return ort.NewTensor(s, convert[uint8](v.U))
	case runtimeapi.UINT16:
		return ort.NewTensor(s, convert[uint16](v.U))
	case runtimeapi.UINT32:
		return ort.NewTensor(s, convert[uint32](v.U))
	case runtimeapi.UINT64:
		return ort.NewTensor(s, v.U)
	case runtimeapi.BOOL:
		return ort.NewTensor(s, v.B)
	}
	return nil, fmt.Errorf("datatype %s is not supported", dt)
}

type number interface {
	~float32 | ~float64 | ~int8 | ~int16 | ~int32 | ~int64 | ~uint8 | ~uint16 | ~uint32 | ~uint64
}

func convert[T number, S number](in []S) []T {
	out := make([]T, len(in))
	for i, x := range in {
		out[i] = T(x)
	}
	return out
}

// Output is one output tensor of an inference: its values in row-major order, widened
// to float64 (F), int64 (I), uint64 (U) or bool (B) by datatype.
type Output struct {
	Name     string
	Datatype runtimeapi.Datatype
	Shape    []int64
	values
}

// Floats returns the output's elements as float64, whatever its datatype (bools as 0/1).
func (o *Output) Floats() []float64 {
	switch {
	case o.F != nil:
		return o.F
	case o.I != nil:
		return convert[float64](o.I)
	case o.U != nil:
		return convert[float64](o.U)
	}
	out := make([]float64, len(o.B))
	for i, b := range o.B {
		if b {
			out[i] = 1
		}
	}
	return out
}

// outputFrom copies an ORT output value into an Output. It does not destroy v.
func outputFrom(name string, v ort.Value) (Output, error) {
	o := Output{Name: name, Shape: []int64(v.GetShape().Clone())}
	switch t := v.(type) {
	case *ort.Tensor[float32]:
		o.Datatype, o.F = runtimeapi.FP32, convert[float64](t.GetData())
	case *ort.Tensor[float64]:
		o.Datatype, o.F = runtimeapi.FP64, append([]float64(nil), t.GetData()...)
	case *ort.Tensor[int8]:
		o.Datatype, o.I = runtimeapi.INT8, convert[int64](t.GetData())
	case *ort.Tensor[int16]:
		o.Datatype, o.I = runtimeapi.INT16, convert[int64](t.GetData())
	case *ort.Tensor[int32]:
		o.Datatype, o.I = runtimeapi.INT32, convert[int64](t.GetData())
	case *ort.Tensor[int64]:
		o.Datatype, o.I = runtimeapi.INT64, append([]int64(nil), t.GetData()...)
	case *ort.Tensor[uint8]:
		o.Datatype, o.U = runtimeapi.UINT8, convert[uint64](t.GetData())
	case *ort.Tensor[uint16]:
		o.Datatype, o.U = runtimeapi.UINT16, convert[uint64](t.GetData())
	case *ort.Tensor[uint32]:
		o.Datatype, o.U = runtimeapi.UINT32, convert[uint64](t.GetData())
	case *ort.Tensor[uint64]:
		o.Datatype, o.U = runtimeapi.UINT64, append([]uint64(nil), t.GetData()...)
	case *ort.Tensor[bool]:
		o.Datatype, o.B = runtimeapi.BOOL, append([]bool(nil), t.GetData()...)
	default:
		return o, fmt.Errorf("output %q: unsupported value type %T", name, v)
	}
	// Keep the "exactly one field set" invariant for empty outputs too.
	if o.len() == 0 {
		switch o.Datatype {
		case runtimeapi.FP32, runtimeapi.FP64:
			o.F = []float64{}
		case runtimeapi.BOOL:
			o.B = []bool{}
		case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
			o.U = []uint64{}
		default:
			o.I = []int64{}
		}
	}
	return o, nil
}

// appendJSON appends the output's data as a flat JSON array. Non-finite floats, which
// JSON cannot carry, are written as null.
func (o *Output) appendJSON(b []byte) []byte {
	b = append(b, '[')
	bits := 64
	if o.Datatype == runtimeapi.FP32 {
		bits = 32
	}
	for i, f := range o.F {
		if i > 0 {
			b = append(b, ',')
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			b = append(b, "null"...)
			continue
		}
		b = strconv.AppendFloat(b, f, 'g', -1, bits)
	}
	for i, x := range o.I {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, x, 10)
	}
	for i, x := range o.U {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, x, 10)
	}
	for i, x := range o.B {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendBool(b, x)
	}
	return append(b, ']')
}
