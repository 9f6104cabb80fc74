package modelgen

// Element types of TensorProto.DataType used by Echo.
const (
	elemUint8  = 2
	elemInt32  = 6
	elemBool   = 9
	elemDouble = 11
)

// Echo returns a model that exercises datatypes rather than learning anything: inputs
// "i32" INT32 [N], "flag" BOOL [N], "bytes" UINT8 [N, 2] and "f64" FP64 [N, 2]; outputs
// "i32_out", "bytes_out" and "f64_out" (Identity) and "not_flag" BOOL [N] (Not).
func Echo() []byte {
	var g pb
	g = g.msg(1, node("Identity", "id_i32", []string{"i32"}, []string{"i32_out"}))
	g = g.msg(1, node("Not", "not", []string{"flag"}, []string{"not_flag"}))
	g = g.msg(1, node("Identity", "id_bytes", []string{"bytes"}, []string{"bytes_out"}))
	g = g.msg(1, node("Identity", "id_f64", []string{"f64"}, []string{"f64_out"}))
	g = g.str(2, "echo")
	g = g.msg(11, valueInfo("i32", elemInt32, []int64{-1}, "n"))
	g = g.msg(11, valueInfo("flag", elemBool, []int64{-1}, "n"))
	g = g.msg(11, valueInfo("bytes", elemUint8, []int64{-1, 2}, "n"))
	g = g.msg(11, valueInfo("f64", elemDouble, []int64{-1, 2}, "n"))
	g = g.msg(12, valueInfo("i32_out", elemInt32, []int64{-1}, "n"))
	g = g.msg(12, valueInfo("not_flag", elemBool, []int64{-1}, "n"))
	g = g.msg(12, valueInfo("bytes_out", elemUint8, []int64{-1, 2}, "n"))
	g = g.msg(12, valueInfo("f64_out", elemDouble, []int64{-1, 2}, "n"))
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").msg(7, g)
	return model.msg(8, pb{}.str(1, "").int(2, 13))
}

// EchoTypes lists the datatypes of EchoAll, by Open Inference Protocol name, with their
// ONNX TensorProto.DataType.
var EchoTypes = []struct {
	Datatype string
	Elem     int64
}{
	{"BOOL", 9}, {"UINT8", 2}, {"UINT16", 4}, {"UINT32", 12}, {"UINT64", 13},
	{"INT8", 3}, {"INT16", 5}, {"INT32", 6}, {"INT64", 7},
	{"FP16", 10}, {"BF16", 16}, {"FP32", 1}, {"FP64", 11}, {"BYTES", 8},
}

// EchoAll returns a model with one Identity per datatype: input "<datatype>" [N] (e.g.
// "FP16") and output "<datatype>_out" [N], for every datatype of EchoTypes, so that every
// element type travels through ONNX Runtime and back.
func EchoAll() []byte {
	names := make([]string, len(EchoTypes))
	for i, t := range EchoTypes {
		names[i] = t.Datatype
	}
	return EchoOf(names...)
}

// EchoOf is EchoAll for the named datatypes of EchoTypes only, in that order; it panics
// on a name EchoTypes does not have.
func EchoOf(datatypes ...string) []byte {
	elem := func(dt string) int64 {
		for _, t := range EchoTypes {
			if t.Datatype == dt {
				return t.Elem
			}
		}
		panic("modelgen: no datatype " + dt)
	}
	var g pb
	for _, dt := range datatypes {
		g = g.msg(1, node("Identity", "id_"+dt, []string{dt}, []string{dt + "_out"}))
	}
	g = g.str(2, "echo_all")
	for _, dt := range datatypes {
		g = g.msg(11, valueInfo(dt, elem(dt), []int64{-1}, "n"))
	}
	for _, dt := range datatypes {
		g = g.msg(12, valueInfo(dt+"_out", elem(dt), []int64{-1}, "n"))
	}
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").msg(7, g)
	return model.msg(8, pb{}.str(1, "").int(2, 13))
}

// NonZero returns a model whose output shape depends on its input's values, not only on
// its shape: input "x" FP32 [N], output "indices" INT64 [1, K], the positions of x's K
// non-zero elements (ONNX NonZero).
func NonZero() []byte {
	var g pb
	g = g.msg(1, node("NonZero", "nonzero", []string{"x"}, []string{"indices"}))
	g = g.str(2, "nonzero")
	g = g.msg(11, valueInfo("x", elemFloat, []int64{-1}, "n"))
	g = g.msg(12, valueInfo("indices", elemInt64, []int64{1, -1}, "k"))
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").msg(7, g)
	return model.msg(8, pb{}.str(1, "").int(2, 13))
}

// MatMulChain returns a model that is slow on purpose, for tests of cancelling a run:
// input "x" FP32 [n, n], output "y" = x^(k+1) by k MatMul nodes in a row (2·n³·k
// floating-point operations; ORT can stop between any two of them).
func MatMulChain(n, k int) []byte {
	var g pb
	prev := "x"
	for i := range k {
		out := "m" + itoa(i)
		if i == k-1 {
			out = "y"
		}
		g = g.msg(1, node("MatMul", "matmul"+itoa(i), []string{prev, "x"}, []string{out}))
		prev = out
	}
	g = g.str(2, "matmul_chain")
	g = g.msg(11, valueInfo("x", elemFloat, []int64{int64(n), int64(n)}, ""))
	g = g.msg(12, valueInfo("y", elemFloat, []int64{int64(n), int64(n)}, ""))
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").msg(7, g)
	return model.msg(8, pb{}.str(1, "").int(2, 13))
}

// Doubled returns a model whose output is its input twice over: input "x" of datatype dt
// (an EchoTypes name) [N], output "y" [2N] (Concat along axis 0), an output sized
// otherwise than from an input's dimension.
func Doubled(dt string) []byte {
	var elem int64 = -1
	for _, t := range EchoTypes {
		if t.Datatype == dt {
			elem = t.Elem
		}
	}
	if elem < 0 {
		panic("modelgen: no datatype " + dt)
	}
	var g pb
	g = g.msg(1, node("Concat", "double", []string{"x", "x"}, []string{"y"}, intAttr("axis", 0)))
	g = g.str(2, "doubled")
	g = g.msg(11, valueInfo("x", elem, []int64{-1}, "n"))
	g = g.msg(12, valueInfo("y", elem, []int64{-1}, "m"))
	model := pb{}.int(1, 8).str(2, "edgeward-modelgen").msg(7, g)
	return model.msg(8, pb{}.str(1, "").int(2, 13))
}
