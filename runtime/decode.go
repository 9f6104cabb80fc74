package runtime

import (
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// fastUnmarshal decodes an Open Inference Protocol request of the common shape without
// encoding/json (whose reflection was a quarter of the JSON handler's CPU): an object
// whose members are the protocol's own names, spelt exactly, each at most once; strings
// without escapes; shapes of plain integers; parameter values that are numbers,
// true/false or strings; "data" an array, flat or nested, of numbers and true/false.
//
// It is a fast path, not a second grammar: it reports false on anything outside that
// shape (escapes, null, unknown or repeated members, other letter case, BYTES strings,
// syntax errors, …), and the caller then decodes with unmarshalRequest, whose result and
// errors are the reference. When it reports true, req holds exactly what unmarshalRequest
// would have stored in a zero InferRequest (FuzzFastUnmarshal checks this), except that
// Data and parameter values share b's memory instead of copying it.
//
// The memory of req's slices, and its strings when they are unchanged, are reused.
func fastUnmarshal(b []byte, req *runtimeapi.InferRequest) bool {
	p := reqParser{b: b, old: *req}
	*req = runtimeapi.InferRequest{}
	p.ws()
	if !p.top(req) {
		*req = runtimeapi.InferRequest{}
		return false
	}
	p.ws()
	if p.i != len(p.b) {
		*req = runtimeapi.InferRequest{}
		return false
	}
	return true
}

// reqParser is fastUnmarshal's cursor over the request bytes.
type reqParser struct {
	b   []byte
	i   int
	old runtimeapi.InferRequest // the last request decoded into the same value
}

// reuse returns s with one more element, zero, and that element's previous value (whose
// memory the caller may reuse).
func reuse[T any](s []T) ([]T, T) {
	var old, zero T
	if len(s) < cap(s) {
		s = s[:len(s)+1]
		old = s[len(s)-1]
		s[len(s)-1] = zero
		return s, old
	}
	return append(s, zero), old
}

// nonNil returns s, or an empty slice when s is nil (encoding/json decodes [] so).
func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

// intern returns s as a string, old itself when they are equal.
func intern(s []byte, old string) string {
	if string(s) == old {
		return old
	}
	return string(s)
}

func (p *reqParser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// eat skips white space, then consumes c; false when the next byte is not c.
func (p *reqParser) eat(c byte) bool {
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == c {
		p.i++
		return true
	}
	return false
}

// rawString consumes a string without escapes or control characters and returns its
// contents (valid UTF-8, as encoding/json would return them).
func (p *reqParser) rawString() ([]byte, bool) {
	p.ws()
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, false
	}
	start := p.i + 1
	ascii := true
	for j := start; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '"':
			s := p.b[start:j]
			if !ascii && !utf8.Valid(s) {
				return nil, false // encoding/json would replace the invalid bytes
			}
			p.i = j + 1
			return s, true
		case c == '\\' || c < 0x20:
			return nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, false
}

// key consumes a member name and the colon after it.
func (p *reqParser) key() ([]byte, bool) {
	k, ok := p.rawString()
	if !ok || !p.eat(':') {
		return nil, false
	}
	return k, true
}

// object consumes an object, calling member for each member with the cursor after the
// colon; member consumes the value.
func (p *reqParser) object(member func(key []byte) bool) bool {
	if !p.eat('{') {
		return false
	}
	if p.eat('}') {
		return true
	}
	for {
		k, ok := p.key()
		if !ok || !member(k) {
			return false
		}
		if p.eat('}') {
			return true
		}
		if !p.eat(',') {
			return false
		}
	}
}

// array consumes an array, calling elem for each element; empty reports whether it had
// none.
func (p *reqParser) array(elem func() bool) (empty, ok bool) {
	if !p.eat('[') {
		return false, false
	}
	if p.eat(']') {
		return true, true
	}
	for {
		if !elem() {
			return false, false
		}
		if p.eat(']') {
			return false, true
		}
		if !p.eat(',') {
			return false, false
		}
	}
}

// once marks bit in seen; false when it was already set (a repeated member, which
// encoding/json would merge into the first one's value).
func once(seen *uint8, bit uint8) bool {
	if *seen&bit != 0 {
		return false
	}
	*seen |= bit
	return true
}

func (p *reqParser) top(req *runtimeapi.InferRequest) bool {
	var seen uint8
	return p.object(func(k []byte) bool {
		switch string(k) {
		case "id":
			s, ok := p.rawString()
			req.ID = intern(s, p.old.ID)
			return ok && once(&seen, 1)
		case "parameters":
			return once(&seen, 2) && p.params(&req.Parameters, p.old.Parameters)
		case "inputs":
			if !once(&seen, 4) {
				return false
			}
			ins := p.old.Inputs[:0]
			empty, ok := p.array(func() bool {
				if len(ins) == maxTensors {
					return false // the reference refuses it (checkRequestBounds)
				}
				var old runtimeapi.RequestTensor
				ins, old = reuse(ins)
				return p.tensor(&ins[len(ins)-1], &old)
			})
			if empty {
				ins = nonNil(ins[:0])
			}
			req.Inputs = ins
			return ok
		case "outputs":
			if !once(&seen, 8) {
				return false
			}
			outs := p.old.Outputs[:0]
			empty, ok := p.array(func() bool {
				if len(outs) == maxTensors {
					return false
				}
				var old runtimeapi.RequestOutput
				outs, old = reuse(outs)
				return p.output(&outs[len(outs)-1], &old)
			})
			if empty {
				outs = nonNil(outs[:0])
			}
			req.Outputs = outs
			return ok
		}
		return false
	})
}

func (p *reqParser) tensor(t, old *runtimeapi.RequestTensor) bool {
	var seen uint8
	return p.object(func(k []byte) bool {
		switch string(k) {
		case "name":
			s, ok := p.rawString()
			t.Name = intern(s, old.Name)
			return ok && once(&seen, 1)
		case "shape":
			t.Shape = old.Shape[:0]
			return once(&seen, 2) && p.shape(&t.Shape)
		case "datatype":
			s, ok := p.rawString()
			t.Datatype = datatypeName(s)
			return ok && once(&seen, 4)
		case "parameters":
			return once(&seen, 8) && p.params(&t.Parameters, old.Parameters)
		case "data":
			return once(&seen, 16) && p.data(&t.Data)
		}
		return false
	})
}

func (p *reqParser) output(o, old *runtimeapi.RequestOutput) bool {
	var seen uint8
	return p.object(func(k []byte) bool {
		switch string(k) {
		case "name":
			s, ok := p.rawString()
			o.Name = intern(s, old.Name)
			return ok && once(&seen, 1)
		case "parameters":
			return once(&seen, 2) && p.params(&o.Parameters, old.Parameters)
		}
		return false
	})
}

// datatypeName returns s as a Datatype, without allocating for the protocol's names.
func datatypeName(s []byte) runtimeapi.Datatype {
	for _, dt := range [...]runtimeapi.Datatype{runtimeapi.FP32, runtimeapi.INT64, runtimeapi.FP64,
		runtimeapi.INT32, runtimeapi.FP16, runtimeapi.BF16, runtimeapi.INT8, runtimeapi.INT16,
		runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64,
		runtimeapi.BOOL, runtimeapi.BYTES} {
		if string(s) == string(dt) {
			return dt
		}
	}
	return runtimeapi.Datatype(s)
}

// shape consumes an array of integers that fit int64, written without fraction or
// exponent (encoding/json refuses those for an int64).
func (p *reqParser) shape(dst *[]int64) bool {
	empty, ok := p.array(func() bool {
		if len(*dst) == maxRank {
			return false
		}
		p.ws()
		start := p.i
		end, ok := p.number()
		if !ok {
			return false
		}
		tok := p.b[start:end]
		for _, c := range tok {
			if c == '.' || c == 'e' || c == 'E' {
				return false
			}
		}
		n, err := strconv.ParseInt(string(tok), 10, 64)
		if err != nil {
			return false
		}
		*dst = append(*dst, n)
		return true
	})
	if empty {
		*dst = nonNil((*dst)[:0])
	}
	return ok
}

// number consumes a number in JSON syntax at the cursor and returns its end.
func (p *reqParser) number() (int, bool) {
	b, i := p.b, p.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	digits := func() bool {
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		return i > j
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case !digits():
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if !digits() {
			return 0, false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if !digits() {
			return 0, false
		}
	}
	p.i = i
	return i, true
}

// scalar consumes a number, true, false, or a string without escapes, and returns its
// bytes as written.
func (p *reqParser) scalar() ([]byte, bool) {
	p.ws()
	start := p.i
	if p.i >= len(p.b) {
		return nil, false
	}
	switch c := p.b[p.i]; {
	case c == '"':
		if _, ok := p.rawString(); !ok {
			return nil, false
		}
	case c == 't' || c == 'f':
		lit := "true"
		if c == 'f' {
			lit = "false"
		}
		if len(p.b)-p.i < len(lit) || string(p.b[p.i:p.i+len(lit)]) != lit {
			return nil, false
		}
		p.i += len(lit)
	case c == '-' || (c >= '0' && c <= '9'):
		if _, ok := p.number(); !ok {
			return nil, false
		}
	default:
		return nil, false
	}
	return p.b[start:p.i:p.i], true
}

// params consumes a parameters object whose values are scalars, into old's memory when
// it is not nil (emptied first).
func (p *reqParser) params(dst *map[string]json.RawMessage, old map[string]json.RawMessage) bool {
	m := old
	if m == nil {
		m = map[string]json.RawMessage{}
	} else {
		clear(m)
	}
	ok := p.object(func(k []byte) bool {
		if len(m) == maxParams {
			return false
		}
		v, ok := p.scalar()
		name := paramName(k)
		if _, dup := m[name]; dup {
			return false // a name given twice: the reference decoder refuses it
		}
		m[name] = v
		return ok
	})
	*dst = m
	return ok
}

// paramName returns k as a string, without allocating for the binary data extension's
// parameters.
func paramName(k []byte) string {
	for _, n := range [...]string{runtimeapi.ParamBinarySize, runtimeapi.ParamBinary, runtimeapi.ParamBinaryOutput} {
		if string(k) == n {
			return n
		}
	}
	return string(k)
}

// data consumes an array, flat or nested up to maxNesting deep, of numbers and
// true/false, and returns its bytes as written.
func (p *reqParser) data(dst *json.RawMessage) bool {
	p.ws()
	start := p.i
	depth := 0
	for {
		// at the start of a value
		p.ws()
		if p.i >= len(p.b) {
			return false
		}
		if p.b[p.i] == '[' {
			p.i++
			depth++
			if depth > maxNesting {
				return false
			}
			p.ws()
			if p.i < len(p.b) && p.b[p.i] == ']' {
				p.i++
				depth--
			} else {
				continue
			}
		} else {
			if depth == 0 {
				return false // not an array
			}
			if v, ok := p.scalar(); !ok || v[0] == '"' {
				return false
			}
		}
		// after a value: close arrays until a comma or the end of the outermost one
		for {
			if depth == 0 {
				*dst = p.b[start:p.i:p.i]
				return true
			}
			p.ws()
			if p.i >= len(p.b) {
				return false
			}
			if p.b[p.i] == ',' {
				p.i++
				break
			}
			if p.b[p.i] != ']' {
				return false
			}
			p.i++
			depth--
		}
	}
}
