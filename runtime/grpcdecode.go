package runtime

import (
	"fmt"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// A ModelInfer message is read whole (in a read slot) before it is decoded, and
// decoding it may allocate far more than its size: each BYTES element of one byte is 3
// bytes on the wire and a slice header and an allocation in memory, a packed uint64 of
// one byte is 8, a map entry of parameters a few bytes and a few hundred. Four 15 MB
// messages of 5 million one-byte BYTES elements each raised the runtime's peak RSS
// from 47 MB to 1.88 GB (measured 1 Dec) before the element bound refused them. So the
// message is taken raw (rawInfer, through inferCodec), its decoding's cost estimated
// from the wire (inferDecodeCost), and decoded only if that fits the byte budget
// (decodeInfer); the counts of elements are checked there too.

// rawInfer is a ModelInfer request message as it arrived, not yet decoded.
type rawInfer struct{ buf mem.Buffer }

// inferCodec is the gRPC server's codec: protobuf's, but a *rawInfer receives the
// message's bytes as they are.
type inferCodec struct{ encoding.CodecV2 }

func newInferCodec() inferCodec { return inferCodec{encoding.GetCodecV2("proto")} }

// Marshal encodes a heldAnswer into a buffer it is the pool of, anything else as protobuf.
func (c inferCodec) Marshal(v any) (mem.BufferSlice, error) {
	if h, ok := v.(*heldAnswer); ok {
		return h.marshal()
	}
	return c.CodecV2.Marshal(v)
}

func (c inferCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawInfer); ok {
		r.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// decodeInfer decodes raw into a ModelInferRequest if what that allocates
// (inferDecodeCost) fits the byte budget (byteBudget.refuse's error otherwise, as for an HTTP request;
// reserved while it decodes), and no input has more than maxElements elements
// (ErrInvalid).
func (r *Runtime) decodeInfer(raw *rawInfer) (*inference.ModelInferRequest, error) {
	b := raw.buf.ReadOnlyData()
	cost, err := inferDecodeCost(b, r.cfg.maxElements())
	if err != nil {
		return nil, err
	}
	// Reserved while decoding, so that concurrent decodings together stay within the
	// budget; once decoded, the request takes what it holds (grpcService.infer). The
	// message itself, out of its read slot by now, is bounded by the same reservation
	// within a small factor: no field's estimate is much under its size on the wire
	// (an unpacked int32 of 11 bytes counts 8), and most are far over.
	if err := r.bodies.takeFor(0, cost); err != nil {
		return nil, err
	}
	defer r.bodies.give(cost)
	req := new(inference.ModelInferRequest)
	if err := proto.Unmarshal(b, req); err != nil {
		return nil, fmt.Errorf("%w: the request message: %v", runtimeapi.ErrInvalid, err)
	}
	return req, nil
}

// Costs of decoding, in bytes beyond what the wire holds, as inferDecodeCost counts
// them: a length-delimited field (a sub-message or a map entry: a struct, its pointer,
// protobuf's state, a map slot; or a string or bytes: a header, an allocation), a BYTES
// element (what it holds while served, stringElementBytes, which covers its decoding),
// any other field (a number, twice for append's growth).
const (
	decodedMessageBytes = 256
	decodedNumberBytes  = 16
)

// maxPackedRuns bounds the packed runs of one repeated field of one input (an encoder
// writes one). protobuf-go copies the field's slice at each run, so a field in 5
// million one-element runs (a 16 MiB message) would take hours of CPU to decode: 80,000
// runs took 16.7 s (found in review, 1 Dec).
const maxPackedRuns = 16

// errMalformedMessage refuses a message that is not protobuf's wire format as this
// protocol writes it (groups included: the protocol has none, and skipping one costs
// what it holds).
var errMalformedMessage = fmt.Errorf("%w: the request message is not a well-formed ModelInferRequest", runtimeapi.ErrInvalid)

// inferDecodeCost estimates what decoding a ModelInferRequest message b allocates, from
// its wire form alone, and checks it against the protocol's bounds (ErrInvalid): every
// input's element count against maxElements, and, as for a JSON request, at most
// maxTensors inputs and outputs, maxParams parameters per map and maxRank dimensions
// per shape; at most maxPackedRuns runs per packed field; no groups, nothing malformed.
// The estimate counts every field: numbers at their Go size (twice when unpacked, for
// append's growth), strings and bytes beside their length, sub-messages and map
// entries at decodedMessageBytes, BYTES elements at stringElementBytes beside theirs.
func inferDecodeCost(b []byte, maxElements int) (int64, error) {
	var cost int64
	var inputs, outputs, params int
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, n int) error {
		switch {
		case num == 5 && typ == protowire.BytesType: // inputs
			if inputs++; inputs > maxTensors {
				return fmt.Errorf("%w: more than %d inputs", runtimeapi.ErrInvalid, maxTensors)
			}
			c, err := inputDecodeCost(v, maxElements)
			cost += decodedMessageBytes + c
			return err
		case num == 6 && typ == protowire.BytesType: // outputs
			if outputs++; outputs > maxTensors {
				return fmt.Errorf("%w: more than %d outputs", runtimeapi.ErrInvalid, maxTensors)
			}
			c, err := outputDecodeCost(v)
			cost += decodedMessageBytes + c
			return err
		case num == 4 && typ == protowire.BytesType: // parameters: one map entry
			if params++; params > maxParams {
				return fmt.Errorf("%w: more than %d request parameters", runtimeapi.ErrInvalid, maxParams)
			}
		}
		cost += fieldCost(typ, n)
		return nil
	})
	return cost, err
}

// eachField calls f for each field of the message b, in order, with its value's bytes
// (a length-delimited field's contents; nil for a number) and the bytes the value takes;
// errMalformedMessage at a group or at bytes that are not a field.
func eachField(b []byte, f func(num protowire.Number, typ protowire.Type, v []byte, n int) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 || typ == protowire.StartGroupType || typ == protowire.EndGroupType {
			return errMalformedMessage
		}
		b = b[n:]
		var v []byte
		if typ == protowire.BytesType {
			v, n = protowire.ConsumeBytes(b)
		} else {
			n = protowire.ConsumeFieldValue(num, typ, b)
		}
		if n < 0 {
			return errMalformedMessage
		}
		if err := f(num, typ, v, n); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// fieldCost is the decoded cost of a field of wire type typ whose value takes n bytes,
// looked at no closer: a length-delimited one may be a string, bytes, a sub-message or
// a map entry; a number is at most 8 bytes, twice for a repeated one.
func fieldCost(typ protowire.Type, n int) int64 {
	if typ == protowire.BytesType {
		return decodedMessageBytes + int64(n)
	}
	return decodedNumberBytes
}

// outputDecodeCost is the decoded cost of one InferRequestedOutputTensor message b.
func outputDecodeCost(b []byte) (int64, error) {
	var cost int64
	var params int
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, n int) error {
		if num == 2 && typ == protowire.BytesType { // parameters: one map entry
			if params++; params > maxParams {
				return fmt.Errorf("%w: output: more than %d parameters", runtimeapi.ErrInvalid, maxParams)
			}
		}
		cost += fieldCost(typ, n)
		return nil
	})
	return cost, err
}

// inputDecodeCost is the decoded cost of one InferInputTensor message b. Its contents
// may come in several occurrences, which decoding merges: their elements and runs add up.
func inputDecodeCost(b []byte, maxElements int) (int64, error) {
	var cost, elements, dims int64
	var params int
	var runs [9]int // packed runs of the contents' fields 1-7, by field number
	var shapeRuns int
	var name []byte
	err := eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, n int) error {
		switch {
		case num == 1 && typ == protowire.BytesType: // name
			name = v
		case num == 3: // shape: int64
			c, count, err := numbersCost(typ, v, 8, false, &shapeRuns)
			if err != nil {
				return err
			}
			if dims += count; dims > maxRank {
				return fmt.Errorf("%w: input %.64q: a shape of more than %d dimensions", runtimeapi.ErrInvalid, name, maxRank)
			}
			cost += c
			return nil
		case num == 4 && typ == protowire.BytesType: // parameters: one map entry
			if params++; params > maxParams {
				return fmt.Errorf("%w: input %.64q: more than %d parameters", runtimeapi.ErrInvalid, name, maxParams)
			}
		case num == 5 && typ == protowire.BytesType: // contents
			c, e, err := contentsDecodeCost(v, &runs)
			cost, elements = cost+decodedMessageBytes+c, elements+e
			return err
		}
		cost += fieldCost(typ, n)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if elements > int64(maxElements) {
		return 0, fmt.Errorf("%w: input %.64q: %d elements, at most %d allowed", runtimeapi.ErrInvalid, name, elements, maxElements)
	}
	return cost, nil
}

// contentsDecodeCost is the decoded cost of an InferTensorContents message b and the
// number of elements it holds; runs counts, by field number, the packed runs of its
// input's contents so far.
func contentsDecodeCost(b []byte, runs *[9]int) (cost, elements int64, err error) {
	// The Go size of each repeated field's elements, by field number; fp32 and fp64
	// (6, 7) are fixed32 and fixed64 on the wire, the others varints.
	sizes := [...]int64{1: 1, 2: 4, 3: 8, 4: 4, 5: 8, 6: 4, 7: 8}
	err = eachField(b, func(num protowire.Number, typ protowire.Type, v []byte, n int) error {
		switch {
		case num >= 1 && num <= 7:
			c, count, err := numbersCost(typ, v, sizes[num], num >= 6, &runs[num])
			cost, elements = cost+c, elements+count
			return err
		case num == 8 && typ == protowire.BytesType: // bytes_contents: one BYTES element
			cost, elements = cost+stringElementBytes+int64(len(v)), elements+1
			return nil
		}
		cost += fieldCost(typ, n)
		return nil
	})
	return cost, elements, err
}

// numbersCost is the decoded cost and count of the numbers of one occurrence of a
// repeated numeric field of Go size size: a packed run v (typ length-delimited), or one
// number. fixed: the numbers are fixed32 or fixed64 on the wire (size bytes each), not
// varints. runs counts the field's packed runs (at most maxPackedRuns).
func numbersCost(typ protowire.Type, v []byte, size int64, fixed bool, runs *int) (cost, count int64, err error) {
	if typ != protowire.BytesType { // one number, unpacked
		return 2 * size, 1, nil
	}
	if *runs++; *runs > maxPackedRuns {
		return 0, 0, fmt.Errorf("%w: a repeated field in more than %d packed runs", runtimeapi.ErrInvalid, maxPackedRuns)
	}
	if fixed {
		count = int64(len(v)) / size
	} else {
		for _, c := range v { // a varint ends at its byte below 0x80
			if c < 0x80 {
				count++
			}
		}
	}
	return count * size, count, nil
}
