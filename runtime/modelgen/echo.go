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
