package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// binaryRequest is a binary tensor data request: the JSON header, then the chunks.
func binaryRequest(header string, chunks ...[]byte) ([]byte, int) {
	body := []byte(header)
	for _, c := range chunks {
		body = append(body, c...)
	}
	return body, len(header)
}

// postBinary sends body with the header length hl (none when negative) and returns the
// response, its JSON header and its binary part.
func postBinary(t *testing.T, h http.Handler, path string, body []byte, hl int) (*httptest.ResponseRecorder, runtimeapi.InferResponse, []byte) {
	t.Helper()
	req := httptest.NewRequest("POST", path, bytes.NewReader(body))
	if hl >= 0 {
		req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
		req.Header.Set("Content-Type", "application/octet-stream")
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var ir runtimeapi.InferResponse
	if rec.Code != http.StatusOK {
		return rec, ir, nil
	}
	out := rec.Body.Bytes()
	n := len(out)
	if v := rec.Header().Get(runtimeapi.HeaderLengthHeader); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n > len(out) {
			t.Fatalf("response %s %q for a %d-byte body", runtimeapi.HeaderLengthHeader, v, len(out))
		}
	}
	if err := json.Unmarshal(out[:n], &ir); err != nil {
		t.Fatalf("response header %q: %v", out[:n], err)
	}
	return rec, ir, out[n:]
}

func loadEchoAll(t *testing.T, r *Runtime) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "echo-all.onnx")
	if err := os.WriteFile(path, modelgen.EchoAll(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatalf("Load(echo-all): %v", err)
	}
}

// echoCase is three elements of one datatype: their binary data and their JSON.
type echoCase struct {
	dt   string
	bin  []byte
	json string
}

func echoCases() []echoCase {
	le := binary.LittleEndian
	u16 := func(v ...uint16) []byte {
		var b []byte
		for _, x := range v {
			b = le.AppendUint16(b, x)
		}
		return b
	}
	var f32, f64, i64, u64, u32, i32 []byte
	for _, f := range []float32{1.5, -0.25, 3e38} {
		f32 = le.AppendUint32(f32, math.Float32bits(f))
	}
	for _, f := range []float64{0.1, -2.5e300, 4} {
		f64 = le.AppendUint64(f64, math.Float64bits(f))
	}
	for _, x := range []int64{math.MinInt64, -1, math.MaxInt64} {
		i64 = le.AppendUint64(i64, uint64(x))
	}
	for _, x := range []uint64{0, 1 << 53, math.MaxUint64} {
		u64 = le.AppendUint64(u64, x)
	}
	for _, x := range []uint32{0, 7, math.MaxUint32} {
		u32 = le.AppendUint32(u32, x)
	}
	for _, x := range []int32{math.MinInt32, 0, math.MaxInt32} {
		i32 = le.AppendUint32(i32, uint32(x))
	}
	var strs []byte
	for _, s := range []string{"", "héllo", "a\"b"} {
		strs = le.AppendUint32(strs, uint32(len(s)))
		strs = append(strs, s...)
	}
	return []echoCase{
		{"BOOL", []byte{1, 0, 1}, "[true,false,true]"},
		{"UINT8", []byte{0, 128, 255}, "[0,128,255]"},
		{"UINT16", u16(0, 1, 65535), "[0,1,65535]"},
		{"UINT32", u32, "[0,7,4294967295]"},
		{"UINT64", u64, "[0,9007199254740992,18446744073709551615]"},
		{"INT8", []byte{0x80, 0xff, 0x7f}, "[-128,-1,127]"},
		{"INT16", u16(0x8000, 0xffff, 0x7fff), "[-32768,-1,32767]"},
		{"INT32", i32, "[-2147483648,0,2147483647]"},
		{"INT64", i64, "[-9223372036854775808,-1,9223372036854775807]"},
		{"FP16", u16(0x3c00, 0xc000, 0x7bff), "[1,-2,65504]"},
		{"BF16", u16(0x3f80, 0xc020, 0x4049), "[1,-2.5,3.140625]"},
		{"FP32", f32, "[1.5,-0.25,3e+38]"},
		{"FP64", f64, "[0.1,-2.5e+300,4]"},
		{"BYTES", strs, `["","héllo","a\"b"]`},
	}
}

// TestBinaryEveryDatatype sends every datatype as binary tensor data through ONNX Runtime
// (an Identity per datatype) and back, as binary and as JSON, and as JSON both ways.
func TestBinaryEveryDatatype(t *testing.T) {
	r := newTestRuntime(t)
	loadEchoAll(t, r)
	h := r.Handler()
	cases := echoCases()
	var header, jsonReq strings.Builder
	header.WriteString(`{"inputs":[`)
	jsonReq.WriteString(`{"inputs":[`)
	var chunks [][]byte
	for i, c := range cases {
		if i > 0 {
			header.WriteByte(',')
			jsonReq.WriteByte(',')
		}
		fmt.Fprintf(&header, `{"name":%q,"datatype":%q,"shape":[3],"parameters":{"binary_data_size":%d}}`, c.dt, c.dt, len(c.bin))
		fmt.Fprintf(&jsonReq, `{"name":%q,"datatype":%q,"shape":[3],"data":%s}`, c.dt, c.dt, c.json)
		chunks = append(chunks, c.bin)
	}
	jsonReq.WriteString(`]}`)
	check := func(t *testing.T, ir runtimeapi.InferResponse, bin []byte, binaryOut bool) {
		t.Helper()
		if len(ir.Outputs) != len(cases) {
			t.Fatalf("%d outputs; want %d", len(ir.Outputs), len(cases))
		}
		for i, c := range cases {
			o := ir.Outputs[i]
			if o.Name != c.dt+"_out" || string(o.Datatype) != c.dt || len(o.Shape) != 1 || o.Shape[0] != 3 {
				t.Errorf("output %d = %s %s %v; want %s_out %s [3]", i, o.Name, o.Datatype, o.Shape, c.dt, c.dt)
			}
			if !binaryOut {
				if string(o.Data) != c.json {
					t.Errorf("output %s data = %s; want %s", o.Name, o.Data, c.json)
				}
				continue
			}
			if o.Data != nil || string(o.Parameters[runtimeapi.ParamBinarySize]) != strconv.Itoa(len(c.bin)) {
				t.Errorf("output %s: data %s, parameters %s; want binary_data_size %d", o.Name, o.Data, o.Parameters, len(c.bin))
				continue
			}
			if !bytes.Equal(bin[:len(c.bin)], c.bin) {
				t.Errorf("output %s binary = %x; want %x", o.Name, bin[:len(c.bin)], c.bin)
			}
			bin = bin[len(c.bin):]
		}
		if binaryOut && len(bin) != 0 {
			t.Errorf("%d bytes after the last output", len(bin))
		}
	}
	t.Run("binary in, binary out", func(t *testing.T) {
		body, hl := binaryRequest(header.String()+`],"parameters":{"binary_data_output":true}}`, chunks...)
		rec, ir, bin := postBinary(t, h, "/v2/models/echo/infer", body, hl)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if ct := rec.Header().Get("Content-Type"); ct != "application/octet-stream" {
			t.Errorf("Content-Type %q; want application/octet-stream", ct)
		}
		check(t, ir, bin, true)
	})
	t.Run("binary in, JSON out", func(t *testing.T) {
		body, hl := binaryRequest(header.String()+`]}`, chunks...)
		rec, ir, bin := postBinary(t, h, "/v2/models/echo/infer", body, hl)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		if rec.Header().Get(runtimeapi.HeaderLengthHeader) != "" || len(bin) != 0 {
			t.Errorf("a JSON response has %s %q and %d binary bytes", runtimeapi.HeaderLengthHeader, rec.Header().Get(runtimeapi.HeaderLengthHeader), len(bin))
		}
		check(t, ir, bin, false)
	})
	t.Run("JSON in, binary out", func(t *testing.T) {
		body := strings.Replace(jsonReq.String(), `]}`, `],"parameters":{"binary_data_output":true}}`, 1)
		body = body[:strings.LastIndex(body, `]}`)] + `],"parameters":{"binary_data_output":true}}`
		rec, ir, bin := postBinary(t, h, "/v2/models/echo/infer", []byte(body), -1)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		check(t, ir, bin, true)
	})
	t.Run("JSON in, JSON out", func(t *testing.T) {
		rec, ir, _ := postBinary(t, h, "/v2/models/echo/infer", []byte(jsonReq.String()), -1)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		check(t, ir, nil, false)
	})
}

// TestBinarySpecExample is the request and response of the binary tensor data
// extension's specification (Triton docs/protocol/extension_binary_data.md, KServe's
// binary data extension), on the Echo model: one input in JSON, the others binary; one
// output asked in binary, one in JSON.
func TestBinarySpecExample(t *testing.T) {
	r := newTestRuntime(t)
	path := filepath.Join(t.TempDir(), "echo.onnx")
	if err := os.WriteFile(path, modelgen.Echo(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "mymodel", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	f64 := binary.LittleEndian.AppendUint64(nil, math.Float64bits(0.5))
	f64 = binary.LittleEndian.AppendUint64(f64, math.Float64bits(-1))
	header := `{
  "model_name" : "mymodel",
  "inputs" : [
    {"name" : "i32", "shape" : [ 1 ], "datatype" : "INT32", "data" : [ 7 ]},
    {"name" : "flag", "shape" : [ 1 ], "datatype" : "BOOL", "parameters" : { "binary_data_size" : 1 }},
    {"name" : "bytes", "shape" : [ 1, 2 ], "datatype" : "UINT8", "parameters" : { "binary_data_size" : 2 }},
    {"name" : "f64", "shape" : [ 1, 2 ], "datatype" : "FP64", "parameters" : { "binary_data_size" : 16 }}
  ],
  "outputs" : [
    {"name" : "f64_out", "parameters" : { "binary_data" : true }},
    {"name" : "i32_out"}
  ]
}`
	body, hl := binaryRequest(header, []byte{1}, []byte{9, 200}, f64)
	rec, ir, bin := postBinary(t, r.Handler(), "/v2/models/mymodel/infer", body, hl)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	n, _ := strconv.Atoi(rec.Header().Get(runtimeapi.HeaderLengthHeader))
	if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(n+16) {
		t.Errorf("Content-Length %s; want header %d + 16", cl, n)
	}
	want := `{"model_name":"mymodel","model_version":"1.0.0","outputs":[` +
		`{"name":"i32_out","datatype":"INT32","shape":[1],"data":[7]},` +
		`{"name":"f64_out","datatype":"FP64","shape":[1,2],"parameters":{"binary_data_size":16}}]}`
	if got := rec.Body.String()[:n]; got != want {
		t.Errorf("response header\n%s\nwant\n%s", got, want)
	}
	if !bytes.Equal(bin, f64) || len(ir.Outputs) != 2 {
		t.Errorf("binary part %x; want %x", bin, f64)
	}
	// binary_data false on an output overrides binary_data_output.
	body, hl = binaryRequest(strings.Replace(strings.Replace(header, `"binary_data" : true`, `"binary_data" : false`, 1), `"model_name" : "mymodel",`, `"parameters":{"binary_data_output":true},`, 1), []byte{1}, []byte{9, 200}, f64)
	rec, ir, bin = postBinary(t, r.Handler(), "/v2/models/mymodel/infer", body, hl)
	if rec.Code != 200 || len(ir.Outputs) != 2 || string(ir.Outputs[1].Data) != "[0.5,-1]" || ir.Outputs[0].Data != nil || !bytes.Equal(bin, []byte{7, 0, 0, 0}) {
		t.Errorf("binary_data false with binary_data_output: %d %+v %x", rec.Code, ir, bin)
	}
}

// TestBinaryRefusals: hostile or inconsistent binary requests get a 400 that names the
// problem, before ONNX Runtime sees anything.
func TestBinaryRefusals(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	loadEchoAll(t, r)
	h := r.Handler()
	x := func(params string) string {
		return `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{` + params + `}}]}`
	}
	row := make([]byte, 16)
	one := func(dt string, shape string, size int) string {
		return fmt.Sprintf(`{"inputs":[{"name":%q,"shape":%s,"datatype":%q,"parameters":{"binary_data_size":%d}}]}`, dt, shape, dt, size)
	}
	le := binary.LittleEndian
	for _, c := range []struct {
		name   string
		header []string // Inference-Header-Content-Length values; nil: the JSON's length
		json   string
		bin    []byte
		code   int
		err    string
	}{
		{"header not a number", []string{"abc"}, x(`"binary_data_size":16`), row, 400, "not a byte count"},
		{"header negative", []string{"-1"}, x(`"binary_data_size":16`), row, 400, "not a byte count"},
		{"header huge", []string{"99999999999999999999"}, x(`"binary_data_size":16`), row, 400, "not a byte count"},
		{"header twice", []string{"10", "10"}, x(`"binary_data_size":16`), row, 400, "given 2 times"},
		{"header past the body", []string{"1000"}, x(`"binary_data_size":16`), row, 400, "but the body has"},
		{"header cuts the JSON", []string{"20"}, x(`"binary_data_size":16`), row, 400, "request body"},
		{"size without header", []string{}, x(`"binary_data_size":0`), nil, 400, "without the Inference-Header-Content-Length header"},
		{"data and size", nil, `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,4],"parameters":{"binary_data_size":16}}]}`, row, 400, "both data and binary_data_size"},
		{"size past the data", nil, x(`"binary_data_size":17`), row, 400, "exceeds the 16 bytes of binary data left"},
		{"size huge", nil, x(`"binary_data_size":9223372036854775807`), row, 400, "exceeds the 16 bytes"},
		{"size overflows int64", nil, x(`"binary_data_size":9223372036854775808`), row, 400, "not a byte count"},
		{"size negative", nil, x(`"binary_data_size":-16`), row, 400, "not a byte count"},
		{"size fraction", nil, x(`"binary_data_size":16.0`), row, 400, "not a byte count"},
		{"size string", nil, x(`"binary_data_size":"16"`), row, 400, "not a byte count"},
		{"size short of the shape", nil, x(`"binary_data_size":12`), row[:12], 400, "shape [1 4] of FP32 needs 16 bytes"},
		{"size not whole elements", nil, x(`"binary_data_size":15`), row[:15], 400, "needs 16 bytes"},
		{"data left over", nil, x(`"binary_data_size":16`), append(row, 0), 400, "1 bytes of binary data that no input"},
		{"binary without any input using it", nil, `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, row, 400, "16 bytes of binary data that no input"},
		{"shape overflow", nil, `{"inputs":[{"name":"X","shape":[4611686018427387904,4611686018427387904],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`, row, 400, "more than"},
		{"negative dim", nil, `{"inputs":[{"name":"X","shape":[-1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`, row, 400, "negative dimension"},
		{"binary_data not a bool", nil, x(`"binary_data_size":16`)[:len(x(`"binary_data_size":16`))-1] + `,"outputs":[{"name":"output_label","parameters":{"binary_data":"yes"}}]}`, row, 400, "not true or false"},
		{"binary_data_output not a bool", nil, x(`"binary_data_size":16`)[:len(x(`"binary_data_size":16`))-1] + `,"parameters":{"binary_data_output":1}}`, row, 400, "not true or false"},
		{"BOOL byte 2", nil, one("BOOL", "[2]", 2), []byte{1, 2}, 400, "BOOL element 1 is byte 2"},
		{"BYTES length past the data", nil, one("BYTES", "[1]", 6), append(le.AppendUint32(nil, 0xffffffff), 'a', 'b'), 400, "length 4294967295 exceeds the 2 bytes left"},
		{"BYTES truncated length", nil, one("BYTES", "[2]", 6), append(le.AppendUint32(nil, 0), 1, 0), 400, "less than its 4-byte length"},
		{"BYTES more than the shape", nil, one("BYTES", "[1]", 8), append(le.AppendUint32(nil, 0), le.AppendUint32(nil, 0)...), 400, "more than the 1 elements"},
		{"BYTES fewer than the shape", nil, one("BYTES", "[2]", 4), le.AppendUint32(nil, 0), 400, "holds 1 elements, shape [2] needs 2"},
		{"BYTES NUL", nil, `{"inputs":[` + strings.Join(echoInputsExcept("BYTES"), ",") + `,{"name":"BYTES","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}`, append(le.AppendUint32(nil, 2), 'a', 0), 400, "NUL byte"},
		{"FP32 for an FP16 input", nil, `{"inputs":[` + strings.Join(echoInputsExcept("FP16"), ",") + `,{"name":"FP16","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":4}}]}`, row[:4], 400, "datatype FP32, model wants FP16"},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := append([]byte(c.json), c.bin...)
			model := "iris"
			if !strings.Contains(c.json, `"X"`) {
				model = "echo"
			}
			req := httptest.NewRequest("POST", "/v2/models/"+model+"/infer", bytes.NewReader(body))
			switch {
			case c.header == nil:
				req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(len(c.json)))
			default:
				for _, v := range c.header {
					req.Header.Add(runtimeapi.HeaderLengthHeader, v)
				}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.code || !strings.Contains(rec.Body.String(), c.err) {
				t.Errorf("status %d %s; want %d about %q", rec.Code, rec.Body, c.code, c.err)
			}
		})
	}
}

// echoInputsExcept returns one-element JSON inputs for every EchoAll input but skip.
func echoInputsExcept(skip string) []string {
	var out []string
	for _, c := range echoCases() {
		if c.dt == skip {
			continue
		}
		first := c.json[1:]
		if i := strings.IndexByte(first, ','); i >= 0 {
			first = first[:i]
		}
		out = append(out, fmt.Sprintf(`{"name":%q,"shape":[1],"datatype":%q,"data":[%s]}`, c.dt, c.dt, strings.TrimSuffix(first, "]")))
	}
	return out
}

// TestServerAdvertisesBinary: GET /v2 lists the binary tensor data extension.
func TestServerAdvertisesBinary(t *testing.T) {
	r := newTestRuntime(t)
	runHTTPCases(t, r.Handler(), []httpCase{{"extensions", "GET", "/v2", "", 200, `"binary_tensor_data"`}})
}

func TestFloat16(t *testing.T) {
	for _, c := range []struct {
		f float32
		h uint16
	}{
		{0, 0}, {float32(math.Copysign(0, -1)), 0x8000}, {1, 0x3c00}, {-2, 0xc000}, {65504, 0x7bff},
		{65519, 0x7bff}, {65520, 0x7c00}, {float32(math.Inf(-1)), 0xfc00}, {0.1, 0x2e66},
		{5.9604645e-8, 0x0001}, {2.9802322e-8, 0}, {2.9802326e-8, 0x0001}, {6.097555e-5, 0x03ff},
		{6.1035156e-5, 0x0400}, {1.0009765625, 0x3c01}, {1.00048828125, 0x3c00}, {1.00146484375, 0x3c02},
	} {
		if got := f32ToF16(c.f); got != c.h {
			t.Errorf("f32ToF16(%g) = %#04x; want %#04x", c.f, got, c.h)
		}
	}
	for h := range 1 << 16 {
		f := f16ToF32(uint16(h))
		if math.IsNaN(float64(f)) {
			if got := f32ToF16(f); got&0x7c00 != 0x7c00 || got&0x3ff == 0 {
				t.Errorf("NaN %#04x came back as %#04x", h, got)
			}
			continue
		}
		if got := f32ToF16(f); got != uint16(h) {
			t.Fatalf("f32ToF16(f16ToF32(%#04x) = %g) = %#04x", h, f, got)
		}
	}
	for _, c := range []struct {
		f float32
		h uint16
	}{{1, 0x3f80}, {-2.5, 0xc020}, {3.14159, 0x4049}, {1.00390625, 0x3f80}, {1.01171875, 0x3f82}} {
		if got := f32ToBF16(c.f); got != c.h {
			t.Errorf("f32ToBF16(%g) = %#04x; want %#04x", c.f, got, c.h)
		}
	}
	if got := f32ToBF16(float32(math.NaN())); got&0x7f80 != 0x7f80 || got&0x7f == 0 {
		t.Errorf("f32ToBF16(NaN) = %#04x", got)
	}
}

// FuzzDecodeBinaryRequest feeds arbitrary JSON headers and binary data to the binary
// tensor data decoder: it must never panic, must refuse with ErrInvalid, and what it
// accepts must hold at most the bound of elements, consistent with its datatype.
func FuzzDecodeBinaryRequest(f *testing.F) {
	le := binary.LittleEndian
	for _, c := range []struct {
		header string
		bin    []byte
	}{
		{`{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`, make([]byte, 16)},
		{`{"inputs":[{"name":"b","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":9}}]}`, append(append(le.AppendUint32(nil, 1), 'a'), le.AppendUint32(nil, 0)...)},
		{`{"inputs":[{"name":"h","shape":[2],"datatype":"FP16","parameters":{"binary_data_size":4}},{"name":"j","shape":[1],"datatype":"BOOL","data":[true]}],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}`, []byte{0, 0x3c, 0, 0xc0}},
		{`{"inputs":[{"name":"u","shape":[3],"datatype":"BOOL","parameters":{"binary_data_size":3}}],"parameters":{"binary_data_output":true}}`, []byte{0, 1, 2}},
		{`{"inputs":[{"name":"b","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":4}}]}`, le.AppendUint32(nil, 0xffffffff)},
		{`{"inputs":[]}`, nil},
	} {
		f.Add([]byte(c.header), c.bin)
	}
	const max = 64
	f.Fuzz(func(t *testing.T, header, bin []byte) {
		body := append(append([]byte(nil), header...), bin...)
		_, inputs, _, err := DecodeInferRequest(body, len(header), max)
		if err != nil {
			if !errors.Is(err, runtimeapi.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		for _, in := range inputs {
			if in.n > max {
				t.Fatalf("input %q has %d elements; bound %d", in.Name, in.n, max)
			}
			if !in.consistent(in.Datatype) {
				t.Fatalf("input %q of %s holds inconsistent data", in.Name, in.Datatype)
			}
		}
	})
}

// TestBytesElementsCountAgainstTheBound: a BYTES element costs far more than its bytes
// once served (Go string, C copy, ORT's std::string, the output's copies), so each is
// counted at stringElementBytes beside its bytes. 100,000 one-byte elements are a 500 KB
// request but hold about 16 MB: refused within a 1 MiB bound, while 1,000 of them are
// served, or refused while others hold most of the bound. A request that could never fit
// is 413 over HTTP and RESOURCE_EXHAUSTED over gRPC (a retry cannot help it; it was 503,
// "retry later", found from outside); one that waits for others is 503 and UNAVAILABLE.
// Before, the bound counted the request's bytes alone: one request of 3 million
// elements raised RSS by 454 MB.
func TestBytesElementsCountAgainstTheBound(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "echo-bytes.onnx")
	if err := os.WriteFile(path, modelgen.EchoOf("BYTES"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	h := r.Handler()
	for _, c := range []struct {
		n     int
		other int64 // bytes others hold
		code  int
	}{
		{1000, 0, http.StatusOK},
		{1000, 960 << 10, http.StatusServiceUnavailable},
		{100_000, 0, http.StatusRequestEntityTooLarge},
	} {
		var raw []byte
		elems := make([][]byte, c.n)
		for i := range c.n {
			raw = append(binary.LittleEndian.AppendUint32(raw, 1), 'a')
			elems[i] = []byte{'a'}
		}
		body, hl := binaryRequest(fmt.Sprintf(`{"inputs":[{"name":"BYTES","shape":[%d],"datatype":"BYTES","parameters":{"binary_data_size":%d}}],"outputs":[{"name":"BYTES_out","parameters":{"binary_data":true}}]}`, c.n, len(raw)), raw)
		req := httptest.NewRequest("POST", "/v2/models/echo/infer", bytes.NewReader(body))
		req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
		rec := httptest.NewRecorder()
		if !r.bodies.take(c.other) {
			t.Fatal("the budget refused what others hold")
		}
		var before, after goruntime.MemStats
		goruntime.ReadMemStats(&before)
		h.ServeHTTP(rec, req)
		goruntime.ReadMemStats(&after)
		if rec.Code != c.code {
			t.Fatalf("%d BYTES elements beside %d bytes held, over HTTP: %d %.200s; want %d", c.n, c.other, rec.Code, rec.Body.String(), c.code)
		}
		// Refused before its strings are decoded: what reading the body (500 KB) takes, in
		// doubling buffers, and little more.
		if got := after.TotalAlloc - before.TotalAlloc; c.code != http.StatusOK && got > 4*uint64(len(body)) {
			t.Errorf("the refused request of %d elements allocated %d bytes; want under four times its %d-byte body (reading it takes two)", c.n, got, len(body))
		}
		_, err := grpcClient(t, r).ModelInfer(context.Background(), &inference.ModelInferRequest{ModelName: "echo",
			Inputs: []*inference.ModelInferRequest_InferInputTensor{{Name: "BYTES", Datatype: "BYTES", Shape: []int64{int64(c.n)},
				Contents: &inference.InferTensorContents{BytesContents: elems}}}})
		r.bodies.give(c.other)
		if want := map[int]codes.Code{200: codes.OK, 503: codes.Unavailable, 413: codes.ResourceExhausted}[c.code]; status.Code(err) != want {
			t.Fatalf("%d BYTES elements beside %d bytes held, over gRPC: %v; want %v", c.n, c.other, err, want)
		}
		if got := r.bodies.used.Load(); got != 0 {
			t.Fatalf("after %d elements: %d bytes still taken", c.n, got)
		}
	}
}

// TestErrorsNeitherLeakNorEcho: a run ONNX Runtime refuses is a 400 whose message keeps
// ORT's reason but not its build tree's paths and C++ signatures, and errors that name
// what the client sent bound it: a 100 KB input name or a shape of 100,000 dimensions
// made errors of their size (found from outside).
func TestErrorsNeitherLeakNorEcho(t *testing.T) {
	r := newTestRuntime(t)
	path := filepath.Join(t.TempDir(), "echo-int32-fp16.onnx")
	if err := os.WriteFile(path, modelgen.EchoOf("INT32", "FP16"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	h := r.Handler()
	post := func(body []byte, hl int) *httptest.ResponseRecorder {
		req := httptest.NewRequest("POST", "/v2/models/echo/infer", bytes.NewReader(body))
		if hl >= 0 {
			req.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	// The FP16 output is allocated before the run at the first input's length (3), and
	// ORT refuses to write 5 elements into it.
	body, hl := binaryRequest(`{"inputs":[{"name":"INT32","shape":[3],"datatype":"INT32","parameters":{"binary_data_size":12}},{"name":"FP16","shape":[5],"datatype":"FP16","parameters":{"binary_data_size":10}}]}`,
		make([]byte, 12), make([]byte, 10))
	rec := post(body, hl)
	if rec.Code != http.StatusBadRequest || strings.Contains(rec.Body.String(), "onnxruntime_src") || strings.Contains(rec.Body.String(), "::") || len(rec.Body.String()) < 40 {
		t.Errorf("a run ORT refused: %d %s; want 400 with ORT's reason and no source paths", rec.Code, rec.Body.String())
	}
	t.Logf("a run ORT refused: %s", rec.Body.String())

	long := strings.Repeat("x", 100<<10)
	rec = post([]byte(`{"inputs":[{"name":"`+long+`","shape":[1],"datatype":"INT32","data":[1]}]}`), -1)
	if rec.Code != http.StatusBadRequest || rec.Body.Len() > 1024 {
		t.Errorf("an unknown 100 KB input name: %d, %d bytes of error; want 400 within 1 KB", rec.Code, rec.Body.Len())
	}
	dims := strings.TrimSuffix(strings.Repeat("1,", 100_000), ",")
	rec = post([]byte(`{"inputs":[{"name":"INT32","shape":[`+dims+`],"datatype":"INT32","data":[1]},{"name":"FP16","shape":[1],"datatype":"FP16","data":[1]}]}`), -1)
	if rec.Code != http.StatusBadRequest || rec.Body.Len() > 1024 {
		t.Errorf("a shape of 100,000 dimensions: %d, %d bytes of error; want 400 within 1 KB", rec.Code, rec.Body.Len())
	}
}
