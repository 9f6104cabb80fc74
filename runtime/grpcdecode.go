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

func (c inferCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if r, ok := v.(*rawInfer); ok {
		r.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
		return nil
	}
	return c.CodecV2.Unmarshal(data, v)
}

// decodeInfer decodes raw into a ModelInferRequest if what that allocates
// (inferDecodeCost) fits the byte budget (errNoRoom otherwise, as for an HTTP request;
// reserved while it decodes), and no input has more than maxElements elements
// (ErrInvalid).
func (r *Runtime) decodeInfer(raw *rawInfer) (*inference.ModelInferRequest, error) {
	b := raw.buf.ReadOnlyData()
	cost, err := inferDecodeCost(b, r.cfg.maxElements())
	if err != nil {
		return nil, err
	}
	// Reserved while decoding, so that concurrent decodings together stay within the
	// budget; once decoded, the request takes what it holds (grpcService.infer).
	if !r.bodies.take(cost) {
		return nil, errNoRoom
	}
	defer r.bodies.give(cost)
	req := new(inference.ModelInferRequest)
	if err := proto.Unmarshal(b, req); err != nil {
		return nil, fmt.Errorf("%w: the request message: %v", runtimeapi.ErrInvalid, err)
	}
	return req, nil
}

// Costs of decoding, in bytes beyond what the wire holds, as inferDecodeCost counts
// them: a sub-message or a map entry (a struct, its pointer, protobuf's state, a map
// slot), a string or bytes (a header, an allocation), a BYTES element (what it holds
// while served, stringElementBytes, which covers its decoding).
const (
	decodedMessageBytes = 256
	decodedStringBytes  = 48
)

// inferDecodeCost estimates what decoding a ModelInferRequest message b allocates, from
// its wire form alone, and checks every input's element count against maxElements
// (ErrInvalid). It overestimates rather than under: each field's decoded size, packed
// numbers at their Go size, unpacked ones twice that (append's growth), BYTES elements at
// stringElementBytes beside their bytes. A malformed message is not an error here:
// proto.Unmarshal says what is wrong with it.
func inferDecodeCost(b []byte, maxElements int) (int64, error) {
	var cost int64
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return cost, nil
		}
		b = b[n:]
		if num == 5 && typ == protowire.BytesType { // inputs
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return cost, nil
			}
			c, err := inputDecodeCost(v, maxElements)
			if err != nil {
				return 0, err
			}
			cost += decodedMessageBytes + c
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return cost, nil
		}
		cost += genericDecodeCost(typ, n)
		b = b[n:]
	}
	return cost, nil
}

// genericDecodeCost is the decoded cost of a field of wire type typ taking n bytes that
// inferDecodeCost does not look into: a length-delimited one may be a string, bytes, a
// sub-message or a map entry; a number is at most 8 bytes, twice for a repeated one.
func genericDecodeCost(typ protowire.Type, n int) int64 {
	if typ == protowire.BytesType {
		return decodedMessageBytes + int64(n)
	}
	return 16
}

// inputDecodeCost is inferDecodeCost for one InferInputTensor message b.
func inputDecodeCost(b []byte, maxElements int) (int64, error) {
	var cost, elements int64
	var name []byte
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			break
		}
		b = b[n:]
		switch {
		case num == 1 && typ == protowire.BytesType: // name
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return cost, nil
			}
			name, cost = v, cost+decodedStringBytes+int64(len(v))
			b = b[n:]
			continue
		case num == 3: // shape: int64
			c, _, n := numbersCost(typ, b, 8, false)
			if n < 0 {
				return cost, nil
			}
			cost += c
			b = b[n:]
			continue
		case num == 5 && typ == protowire.BytesType: // contents
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return cost, nil
			}
			c, e := contentsDecodeCost(v)
			cost, elements = cost+decodedMessageBytes+c, elements+e
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			break
		}
		cost += genericDecodeCost(typ, n)
		b = b[n:]
	}
	if elements > int64(maxElements) {
		return 0, fmt.Errorf("%w: input %.64q: %d elements, at most %d allowed", runtimeapi.ErrInvalid, name, elements, maxElements)
	}
	return cost, nil
}

// contentsDecodeCost is the decoded cost of an InferTensorContents message b and the
// number of elements it holds.
func contentsDecodeCost(b []byte) (cost, elements int64) {
	// The Go size of each repeated field's elements, by field number; fp32 and fp64
	// (6, 7) are fixed32 and fixed64 on the wire, the others varints.
	sizes := [...]int64{1: 1, 2: 4, 3: 8, 4: 4, 5: 8, 6: 4, 7: 8}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return cost, elements
		}
		b = b[n:]
		switch {
		case num >= 1 && num <= 7:
			c, e, n := numbersCost(typ, b, sizes[num], num >= 6)
			if n < 0 {
				return cost, elements
			}
			cost, elements = cost+c, elements+e
			b = b[n:]
		case num == 8 && typ == protowire.BytesType: // bytes_contents: one BYTES element
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return cost, elements
			}
			cost, elements = cost+stringElementBytes+int64(len(v)), elements+1
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return cost, elements
			}
			cost += genericDecodeCost(typ, n)
			b = b[n:]
		}
	}
	return cost, elements
}

// numbersCost is the decoded cost and count of the numbers of a repeated numeric field
// of Go size size at b, the field's value of wire type typ (packed: length-delimited),
// and the bytes it takes (negative: malformed). fixed: the numbers are fixed32 or
// fixed64 on the wire (size bytes each), not varints.
func numbersCost(typ protowire.Type, b []byte, size int64, fixed bool) (cost, count int64, n int) {
	if typ != protowire.BytesType { // one number, unpacked
		n = protowire.ConsumeFieldValue(0, typ, b)
		return 2 * size, 1, n
	}
	v, n := protowire.ConsumeBytes(b)
	if n < 0 {
		return 0, 0, n
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
	return count * size, count, n
}
