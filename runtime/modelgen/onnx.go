// Package modelgen writes small ONNX models and their probe sets for Edgeward's update
// story: a multilayer perceptron (MatMul, Add, Relu, Softmax, ArgMax) whose weights are
// trained in Go on a synthetic vibration-anomaly data set. Versions 1.0.0 (good),
// 1.1.0 (better) and 2.0.0 (deliberately degraded, must fail its probe) are
// deterministic, so tests, e2e scenarios and demos can generate them on the fly.
//
// The ONNX protobuf is encoded by hand (the few messages and fields an MLP needs, see
// onnx.proto in github.com/onnx/onnx), so the package has no dependencies.
package modelgen

import (
	"encoding/binary"
	"math"
)

// pb is a protobuf message under construction.
type pb []byte

func (b pb) varint(v uint64) pb { return binary.AppendUvarint(b, v) }
func (b pb) tag(field, wire int) pb {
	return b.varint(uint64(field)<<3 | uint64(wire))
}

// int appends a varint field (int32, int64 and enums share the encoding).
func (b pb) int(field int, v int64) pb { return b.tag(field, 0).varint(uint64(v)) }

func (b pb) bytes(field int, v []byte) pb {
	return append(b.tag(field, 2).varint(uint64(len(v))), v...)
}

func (b pb) str(field int, s string) pb { return b.bytes(field, []byte(s)) }
func (b pb) msg(field int, m pb) pb     { return b.bytes(field, m) }

// ONNX field numbers (onnx.proto, IR version 8).
const (
	elemFloat = 1 // TensorProto.DataType FLOAT
	elemInt64 = 7 // TensorProto.DataType INT64

	attrInt = 2 // AttributeProto.AttributeType INT
)

// tensorProto is an initializer: dims(1), data_type(2), name(8), raw_data(9, little endian).
func tensorProto(name string, dims []int64, data []float32) pb {
	var t pb
	for _, d := range dims {
		t = t.int(1, d)
	}
	t = t.int(2, elemFloat).str(8, name)
	raw := make([]byte, 0, 4*len(data))
	for _, f := range data {
		raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(f))
	}
	return t.bytes(9, raw)
}

// valueInfo is a graph input or output: name(1), type(2) = TypeProto{tensor_type(1) =
// {elem_type(1), shape(2) = TensorShapeProto{dim(1) = {dim_value(1) | dim_param(2)}}}}.
// A negative dimension is dynamic, named by param.
func valueInfo(name string, elem int64, dims []int64, param string) pb {
	var shape pb
	for _, d := range dims {
		var dim pb
		if d < 0 {
			dim = dim.str(2, param)
		} else {
			dim = dim.int(1, d)
		}
		shape = shape.msg(1, dim)
	}
	tensor := pb{}.int(1, elem).msg(2, shape)
	return pb{}.str(1, name).msg(2, pb{}.msg(1, tensor))
}

// node is a NodeProto: input(1), output(2), name(3), op_type(4), attribute(5).
func node(op, name string, inputs, outputs []string, attrs ...pb) pb {
	var n pb
	for _, in := range inputs {
		n = n.str(1, in)
	}
	for _, out := range outputs {
		n = n.str(2, out)
	}
	n = n.str(3, name).str(4, op)
	for _, a := range attrs {
		n = n.msg(5, a)
	}
	return n
}

// intAttr is an AttributeProto: name(1), i(3), type(20).
func intAttr(name string, v int64) pb {
	return pb{}.str(1, name).int(3, v).int(20, attrInt)
}

// Layer is a dense layer: Y = X·W + B, W row-major [In, Out].
type Layer struct {
	In, Out int
	W, B    []float32
}

// MLP is a classifier: dense layers with ReLU between them, softmax at the end.
type MLP struct {
	Layers []Layer
}

// ONNX encodes the MLP as a ModelProto (IR 8, opset 13) with input "x" FP32 [N, In]
// and outputs "probabilities" FP32 [N, classes] and "label" INT64 [N]. meta becomes the
// model's metadata_props (e.g. the drift baseline).
func (m *MLP) ONNX(graphName string, meta map[string]string, metaKeys []string) []byte {
	var g pb
	cur := "x"
	for i, l := range m.Layers {
		w, b := "W"+itoa(i), "B"+itoa(i)
		g = g.msg(5, tensorProto(w, []int64{int64(l.In), int64(l.Out)}, l.W))
		g = g.msg(5, tensorProto(b, []int64{int64(l.Out)}, l.B))
		mm, add := "matmul"+itoa(i), "dense"+itoa(i)
		g = g.msg(1, node("MatMul", mm, []string{cur, w}, []string{mm}))
		g = g.msg(1, node("Add", add, []string{mm, b}, []string{add}))
		cur = add
		if i < len(m.Layers)-1 {
			relu := "relu" + itoa(i)
			g = g.msg(1, node("Relu", relu, []string{cur}, []string{relu}))
			cur = relu
		}
	}
	g = g.msg(1, node("Softmax", "softmax", []string{cur}, []string{"probabilities"}, intAttr("axis", -1)))
	g = g.msg(1, node("ArgMax", "argmax", []string{"probabilities"}, []string{"label"}, intAttr("axis", 1), intAttr("keepdims", 0)))
	g = g.str(2, graphName)
	in, classes := int64(m.Layers[0].In), int64(m.Layers[len(m.Layers)-1].Out)
	g = g.msg(11, valueInfo("x", elemFloat, []int64{-1, in}, "batch"))
	g = g.msg(12, valueInfo("probabilities", elemFloat, []int64{-1, classes}, "batch"))
	g = g.msg(12, valueInfo("label", elemInt64, []int64{-1}, "batch"))

	// ModelProto: ir_version(1), producer_name(2), producer_version(3), graph(7),
	// opset_import(8) = {domain(1), version(2)}, metadata_props(14) = {key(1), value(2)}.
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").str(3, "1").msg(7, g)
	model = model.msg(8, pb{}.str(1, "").int(2, 13))
	for _, k := range metaKeys {
		model = model.msg(14, pb{}.str(1, k).str(2, meta[k]))
	}
	return model
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}
