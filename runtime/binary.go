package runtime

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unsafe"

	jsonv2 "github.com/go-json-experiment/json"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// The binary tensor data extension (Triton's and KServe's "binary_data",
// https://github.com/triton-inference-server/server/blob/main/docs/protocol/extension_binary_data.md):
// a request whose Inference-Header-Content-Length header is N carries a JSON header of N
// bytes, then the binary data of every input whose parameters give binary_data_size, in
// the order of the inputs. Binary data is the elements' little-endian bytes (BOOL one
// byte, 0 or 1; FP16 and BF16 two bytes); a BYTES element is its 4-byte little-endian
// length, then its bytes. Outputs are sent the same way when the request asks
// (parameters.binary_data on an output, or parameters.binary_data_output on the request);
// the response then has the same header and binary_data_size on each binary output.

// headerLength reads the Inference-Header-Content-Length header: -1 when absent.
func headerLength(h http.Header) (int, error) {
	vs := h.Values(runtimeapi.HeaderLengthHeader)
	switch len(vs) {
	case 0:
		return -1, nil
	case 1:
		n, err := strconv.ParseUint(vs[0], 10, 31)
		if err != nil {
			return 0, fmt.Errorf("%w: %s %.32q is not a byte count", runtimeapi.ErrInvalid, runtimeapi.HeaderLengthHeader, vs[0])
		}
		return int(n), nil
	}
	return 0, fmt.Errorf("%w: %s given %d times", runtimeapi.ErrInvalid, runtimeapi.HeaderLengthHeader, len(vs))
}

// DecodeInferRequest parses an Open Inference Protocol request into inputs and the
// requested output names. body is the JSON request alone when headerLen is negative, or a
// JSON header of headerLen bytes followed by binary tensor data. maxElements bounds each
// tensor. Inputs may share body's memory. Every error wraps ErrInvalid.
func DecodeInferRequest(body []byte, headerLen, maxElements int) (runtimeapi.InferRequest, []Input, []string, error) {
	var s inferScratch
	if err := s.decode(body, headerLen, maxElements, nil); err != nil {
		return s.req, nil, nil, err
	}
	return s.req, s.inputs, s.names, nil
}

// decode is DecodeInferRequest into s.req, s.inputs and s.names, reusing their memory
// and s.data's for the inputs' elements.
// decodedBytes is the memory of the tensors the last decode wrote outside the body
// (inputs given as JSON data).
func (s *inferScratch) decodedBytes() int64 {
	var n int64
	for _, d := range s.data[:min(len(s.data), len(s.inputs))] {
		n += int64(cap(d))
	}
	return n + stringsHeld(s.inputs)
}

// stringElementBytes is what one BYTES element holds beyond its bytes while its request
// is served: its Go string header, the pointer and C copy onnxruntime_go makes of it,
// ONNX Runtime's std::string, and the same again for a model that returns it. Measured
// from outside (1 Dec): a request of 3 million one-byte elements to a model echoing them
// raised the runtime's peak RSS by 454 MB, about 150 bytes per element, while the bound
// counted 3 MB.
const stringElementBytes = 160

// stringsHeld is what the BYTES elements of inputs hold, beyond the request's own bytes
// (counted with the body or message): stringElementBytes per element and a copy of
// their bytes.
func stringsHeld(inputs []Input) int64 {
	var n int64
	for i := range inputs {
		for _, e := range inputs[i].strs {
			n += stringElementBytes + int64(len(e))
		}
	}
	return n
}

// room, if set, is asked before a BYTES input's elements are decoded whether their
// stringElementBytes each would fit (byteBudget.roomFor); when they would not, decode
// stops with room's error (errNoRoom, or errTooLarge for what could never fit) before
// allocating them: 3 million one-byte elements took 135 MB to decode before the bound
// refused them.
func (s *inferScratch) decode(body []byte, headerLen, maxElements int, room func(int64) error) error {
	req := &s.req
	header, bin := body, []byte(nil)
	if headerLen >= 0 {
		if headerLen > len(body) {
			return fmt.Errorf("%w: %s is %d but the body has %d bytes", runtimeapi.ErrInvalid, runtimeapi.HeaderLengthHeader, headerLen, len(body))
		}
		header, bin = body[:headerLen], body[headerLen:]
	}
	// The fast path decodes the common shape; anything else, hostile input included, goes
	// through encoding/json, whose result and errors it reproduces.
	if !fastUnmarshal(header, req) {
		if err := unmarshalRequest(header, req); err != nil {
			return err
		}
	}
	if len(req.Inputs) == 0 {
		return fmt.Errorf("%w: request has no inputs", runtimeapi.ErrInvalid)
	}
	if _, err := boolParam(req.Parameters, runtimeapi.ParamBinaryOutput); err != nil {
		return fmt.Errorf("%w: request %w", runtimeapi.ErrInvalid, err)
	}
	s.inputs = resize(s.inputs, len(req.Inputs))
	if len(s.data) < len(req.Inputs) {
		s.data = append(s.data, make([][]byte, len(req.Inputs)-len(s.data))...)
	}
	for i, t := range req.Inputs {
		if t.Name == "" {
			return fmt.Errorf("%w: input %d has no name", runtimeapi.ErrInvalid, i)
		}
		if !t.Datatype.Known() {
			return fmt.Errorf("%w: input %q: datatype %q is not supported", runtimeapi.ErrInvalid, t.Name, t.Datatype)
		}
		size, ok, err := sizeParam(t.Parameters)
		if err != nil {
			return fmt.Errorf("%w: input %q: %w", runtimeapi.ErrInvalid, t.Name, err)
		}
		// BYTES elements are decoded at most as many as the shape has, and only if
		// they fit: a shape of [1] (or one that is not a shape) let a request of 4
		// million empty strings decode them all before either was checked, 12 times its
		// size in memory (found from outside, 1 Dec).
		elems := maxElements
		if t.Datatype == runtimeapi.BYTES {
			n, err := elementsOf(t.Shape, maxElements)
			if err != nil {
				return fmt.Errorf("%w: input %q: %w", runtimeapi.ErrInvalid, t.Name, err)
			}
			if room != nil {
				if err := room(int64(n) * stringElementBytes); err != nil {
					return err
				}
			}
			elems = n
		}
		var td tensorData
		switch {
		case !ok:
			td, err = decodeData(t.Data, t.Datatype, elems, s.data[i])
			if cap(td.raw) > 0 {
				s.data[i] = td.raw[:0]
			}
			if err == nil {
				err = checkNesting(t.Data, t.Shape)
			}
		case headerLen < 0:
			err = fmt.Errorf("%s without the %s header", runtimeapi.ParamBinarySize, runtimeapi.HeaderLengthHeader)
		case t.Data != nil:
			err = fmt.Errorf("both data and %s", runtimeapi.ParamBinarySize)
		case size > int64(len(bin)):
			err = fmt.Errorf("%s %d exceeds the %d bytes of binary data left", runtimeapi.ParamBinarySize, size, len(bin))
		default:
			td, err = decodeBinary(bin[:size], t.Datatype, t.Shape, maxElements)
			bin = bin[size:]
		}
		if err != nil {
			return fmt.Errorf("%w: input %q: %w", runtimeapi.ErrInvalid, t.Name, err)
		}
		s.inputs[i] = Input{Name: t.Name, Datatype: t.Datatype, Shape: t.Shape, tensorData: td}
	}
	if len(bin) > 0 {
		return fmt.Errorf("%w: %d bytes of binary data that no input's %s covers", runtimeapi.ErrInvalid, len(bin), runtimeapi.ParamBinarySize)
	}
	s.names = resize(s.names, len(req.Outputs))
	for i, o := range req.Outputs {
		if _, err := boolParam(o.Parameters, runtimeapi.ParamBinary); err != nil {
			return fmt.Errorf("%w: output %q: %w", runtimeapi.ErrInvalid, o.Name, err)
		}
		s.names[i] = o.Name
	}
	return nil
}

// unmarshalRequest decodes a request's JSON, strictly as the protocol reads it: member
// names are matched exactly (the specification's strings are case-sensitive: encoding/json
// took "INPUTS" and "DataType" for "inputs" and "datatype"), a name given twice in one
// object is refused (encoding/json kept the last "data" or "shape" silently), and so is
// text that is not UTF-8 (it replaced it with U+FFFD). Unknown members are ignored, as
// the protocol allows. Anything after the value but white space is refused, and so is a
// request past checkRequestBounds.
func unmarshalRequest(header []byte, req *runtimeapi.InferRequest) error {
	if err := checkRequestBounds(header); err != nil {
		return err
	}
	if err := jsonv2.Unmarshal(header, req); err != nil {
		if strings.Contains(err.Error(), "after top-level value") {
			return fmt.Errorf("%w: request body: trailing data after the JSON object", runtimeapi.ErrInvalid)
		}
		return fmt.Errorf("%w: request body: %w", runtimeapi.ErrInvalid, err)
	}
	return nil
}

// sizeParam reads binary_data_size: ok is false when it is absent.
func sizeParam(p map[string]json.RawMessage) (int64, bool, error) {
	raw, ok := p[runtimeapi.ParamBinarySize]
	if !ok {
		return 0, false, nil
	}
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil || n < 0 {
		return 0, false, fmt.Errorf("%s %.32q is not a byte count", runtimeapi.ParamBinarySize, raw)
	}
	return n, true, nil
}

// boolParam reads a boolean parameter (false when absent).
func boolParam(p map[string]json.RawMessage, name string) (bool, error) {
	raw, ok := p[name]
	if !ok {
		return false, nil
	}
	switch string(bytes.TrimSpace(raw)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, fmt.Errorf("parameter %s %.32q is not true or false", name, raw)
}

// binaryOutputs returns, for each output of outs, whether the request asked for it in
// binary: its own binary_data parameter, else the request's binary_data_output; nil when
// it asked for none, else in buf's memory when it is large enough. The parameters were
// checked by DecodeInferRequest.
func binaryOutputs(req *runtimeapi.InferRequest, outs []Output, buf []bool) []bool {
	all, _ := boolParam(req.Parameters, runtimeapi.ParamBinaryOutput)
	var bin []bool
	for i := range outs {
		want := all
		for _, o := range req.Outputs {
			if o.Name == outs[i].Name {
				if _, set := o.Parameters[runtimeapi.ParamBinary]; set {
					want, _ = boolParam(o.Parameters, runtimeapi.ParamBinary)
				}
			}
		}
		if want && bin == nil {
			bin = resize(buf, len(outs))
		}
		if want {
			bin[i] = true
		}
	}
	return bin
}

// decodeBinary checks one input's binary data against its datatype and shape: a whole
// number of elements, exactly as many as the shape has, at most max; BOOL bytes 0 or 1;
// BYTES elements whose length prefixes stay inside the data. The result shares b.
func decodeBinary(b []byte, dt runtimeapi.Datatype, shape []int64, max int) (tensorData, error) {
	want, err := elementsOf(shape, max)
	if err != nil {
		return tensorData{}, err
	}
	if dt == runtimeapi.BYTES {
		td := tensorData{strs: make([]string, 0, min(want, len(b)/4))}
		for len(b) > 0 {
			if td.n >= want {
				return td, fmt.Errorf("BYTES data holds more than the %d elements of shape %v", want, shape)
			}
			if len(b) < 4 {
				return td, fmt.Errorf("BYTES element %d: %d bytes left, less than its 4-byte length", td.n, len(b))
			}
			l := binary.LittleEndian.Uint32(b)
			if uint64(l) > uint64(len(b)-4) {
				return td, fmt.Errorf("BYTES element %d: length %d exceeds the %d bytes left", td.n, l, len(b)-4)
			}
			td.strs = append(td.strs, string(b[4:4+l]))
			b = b[4+l:]
			td.n++
		}
		if td.n != want {
			return td, fmt.Errorf("BYTES data holds %d elements, shape %v needs %d", td.n, shape, want)
		}
		return td, nil
	}
	es := dt.Size()
	if len(b) != want*es {
		return tensorData{}, fmt.Errorf("%s %d: shape %v of %s needs %d bytes", runtimeapi.ParamBinarySize, len(b), shape, dt, want*es)
	}
	if dt == runtimeapi.BOOL {
		for i, x := range b {
			if x > 1 {
				return tensorData{}, fmt.Errorf("BOOL element %d is byte %d, want 0 or 1", i, x)
			}
		}
	}
	if len(b) > 0 && uintptr(unsafe.Pointer(&b[0]))%uintptr(es) != 0 {
		b = bytes.Clone(b) // ONNX Runtime's kernels read aligned elements
	}
	return tensorData{raw: b, n: want}, nil
}
