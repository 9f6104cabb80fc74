package runtime

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestDecodeDataValues checks what the OIP decoder accepts at each bound, and the values
// it returns: a client is answered from these values, or refused with the reason.
func TestDecodeDataValues(t *testing.T) {
	nested := func(depth int) string { return strings.Repeat("[", depth) + "1" + strings.Repeat("]", depth) }
	tests := []struct {
		data string
		dt   runtimeapi.Datatype
		want values // compared when err is ""
		err  string // a part of the error
	}{
		{"[1,2,3,4]", runtimeapi.FP32, values{F: []float64{1, 2, 3, 4}}, ""}, // exactly the bound of 4
		{"[1,2,3,4,5]", runtimeapi.FP32, values{}, "more than 4 elements"},
		{nested(32), runtimeapi.INT64, values{I: []int64{1}}, ""},
		{nested(33), runtimeapi.INT64, values{}, "nested deeper than 32"},
		{"\t[\r\n1 ,\t-2\n]\r\n", runtimeapi.INT32, values{I: []int64{1, -2}}, ""},
		{"[true,false]", runtimeapi.BOOL, values{B: []bool{true, false}}, ""},
		{"[1]", runtimeapi.BOOL, values{}, "not a BOOL"},
		{"[-0.5,1E2,2.5e-1,-0]", runtimeapi.FP64, values{F: []float64{-0.5, 100, 0.25, 0}}, ""},
		{"[1e39]", runtimeapi.FP32, values{}, "out of range for FP32"},
		{"[1e39]", runtimeapi.FP64, values{F: []float64{1e39}}, ""},
		{"[127,-128]", runtimeapi.INT8, values{I: []int64{127, -128}}, ""},
		{"[128]", runtimeapi.INT8, values{}, "range of INT8"},
		{"[32767]", runtimeapi.INT16, values{I: []int64{32767}}, ""},
		{"[32768]", runtimeapi.INT16, values{}, "range of INT16"},
		{"[2147483648]", runtimeapi.INT32, values{}, "range of INT32"},
		{"[2147483648]", runtimeapi.INT64, values{I: []int64{2147483648}}, ""},
		{"[255]", runtimeapi.UINT8, values{U: []uint64{255}}, ""},
		{"[256]", runtimeapi.UINT8, values{}, "range of UINT8"},
		{"[-1]", runtimeapi.UINT64, values{}, "range of UINT64"},
		{"[65536]", runtimeapi.UINT16, values{}, "range of UINT16"},
		{"[4294967296]", runtimeapi.UINT32, values{}, "range of UINT32"},
		{"[18446744073709551615]", runtimeapi.UINT64, values{U: []uint64{18446744073709551615}}, ""},
		{"[1.5]", runtimeapi.INT64, values{}, "range of INT64"},
		{"[1.]", runtimeapi.FP32, values{}, "not a number"},
		{"[.5]", runtimeapi.FP32, values{}, "not a number"},
		{"[-]", runtimeapi.FP32, values{}, "not a number"},
		{"[1e]", runtimeapi.FP32, values{}, "not a number"},
		{"[1e+]", runtimeapi.FP32, values{}, "not a number"},
		{"[1x]", runtimeapi.FP32, values{}, "not a number"},
		{"[1,x]", runtimeapi.UINT8, values{}, "data element 1"},
		{"[1] x", runtimeapi.FP32, values{}, "trailing characters"},
		{"[1] ", runtimeapi.FP32, values{F: []float64{1}}, ""},
		{"[[1],2]", runtimeapi.FP32, values{F: []float64{1, 2}}, ""},
		{"[[1][2]]", runtimeapi.FP32, values{}, "unexpected '['"},
		{"[1,,2]", runtimeapi.FP32, values{}, "unexpected ','"},
		{"[]]", runtimeapi.FP32, values{}, "trailing characters"},
		{"[1,]", runtimeapi.FP32, values{}, "unbalanced ']'"},
		{"1", runtimeapi.FP32, values{}, "must be a JSON array"},
		{"  ", runtimeapi.FP32, values{}, "must be a JSON array"},
		{"[1", runtimeapi.FP32, values{}, "unterminated"},
		{"[1]", runtimeapi.BYTES, values{}, "not a string"},
		{"[1]", runtimeapi.Datatype("STRING"), values{}, "not supported"},
	}
	for _, tt := range tests {
		td, err := decodeData([]byte(tt.data), tt.dt, 4, nil)
		v := widen(tt.dt, &td)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("decodeData(%q, %s) = %v; want %v", tt.data, tt.dt, err, tt.want)
		case tt.err == "" && !reflect.DeepEqual(v, tt.want):
			t.Errorf("decodeData(%q, %s) = %+v; want %+v", tt.data, tt.dt, v, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("decodeData(%q, %s) = %+v, %v; want an error about %q", tt.data, tt.dt, v, err, tt.err)
		}
	}
}

// TestDecodeInferRequestRefusals: every refusal wraps ErrInvalid (a 400 for the client)
// and says what is wrong; an accepted request gives its inputs and the outputs asked.
func TestDecodeInferRequestRefusals(t *testing.T) {
	in := func(name, dt, data string) string {
		return fmt.Sprintf(`{"name":%q,"shape":[1,2],"datatype":%q,"data":%s}`, name, dt, data)
	}
	for _, tt := range []struct{ body, err string }{
		{``, "request body"},
		{`{"inputs":[` + in("x", "FP32", "[1,2]") + `]}}`, "trailing data"}, // a stray '}'
		{`{"inputs":[` + in("x", "FP32", "[1,2]") + `]} {}`, "trailing data"},
		{`{"inputs":[]}`, "no inputs"},
		{`{"inputs":[` + in("", "FP32", "[1,2]") + `]}`, "input 0 has no name"},
		{`{"inputs":[` + in("x", "FP32", "[1,2]") + `,` + in("y", "STRING", `["a"]`) + `]}`, `input "y": datatype "STRING" is not supported`},
		{`{"inputs":[` + in("x", "FP32", "[1,2,3]") + `]}`, `input "x": data: more than 2 elements`},
		// The protocol's names are case-sensitive: "INPUTS" is not "inputs" (encoding/json
		// matched it), and neither is "DATA" "data".
		{`{"INPUTS":[` + in("x", "FP32", "[1,2]") + `]}`, "no inputs"},
		{`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","DATA":[1,2]}]}`, `input "x"`},
		// A name given twice is refused (encoding/json kept the last).
		{`{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP32","data":[1,2],"data":[3,4]}]}`, "duplicate"},
		{`{"inputs":[` + in("x", "FP32", "[1,2]") + `],"inputs":[]}`, "duplicate"},
		// JSON is UTF-8 (encoding/json replaced invalid bytes with U+FFFD).
		{"{\"id\":\"\xff\",\"inputs\":[" + in("x", "FP32", "[1,2]") + "]}", "UTF-8"},
	} {
		_, _, _, err := DecodeInferRequest([]byte(tt.body), -1, 2)
		if !errors.Is(err, runtimeapi.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("DecodeInferRequest(%s) = %v; want ErrInvalid about %q", tt.body, err, tt.err)
		}
	}
	// Nested data nests as the shape says (it was checked for its count alone).
	for _, tt := range []struct{ data, err string }{
		{`[[1,2,3],[4]]`, "depth 2 holds 3 items"},
		{`[[1,2],3,4]`, "elements at depths 2 and 1"},
		{`[[1],[2],[3],[4]]`, "depth 2 holds 1 items"},
		{`[[[1,2],[3,4]]]`, "depth 3"},
		{`[[],[1,2,3,4]]`, "empty array"},
	} {
		_, _, _, err := DecodeInferRequest([]byte(`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":`+tt.data+`}]}`), -1, 4)
		if !errors.Is(err, runtimeapi.ErrInvalid) || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("data %s for shape [2,2]: %v; want ErrInvalid about %q", tt.data, err, tt.err)
		}
	}
	for _, ok := range []string{`[[1,2],[3,4]]`, `[1,2,3,4]`, ` [ [ 1 , 2 ] , [ 3 , 4 ] ] `} {
		if _, _, _, err := DecodeInferRequest([]byte(`{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":`+ok+`}]}`), -1, 4); err != nil {
			t.Errorf("data %s for shape [2,2]: %v", ok, err)
		}
	}
	if _, _, _, err := DecodeInferRequest([]byte(`{"inputs":[{"name":"s","shape":[2,1],"datatype":"BYTES","data":[["a,[b"],["]\"c"]]}]}`), -1, 4); err != nil {
		t.Errorf("nested BYTES with brackets and commas inside the strings: %v", err)
	}
	req, inputs, outputs, err := DecodeInferRequest([]byte(`{"id":"r1","inputs":[`+in("x", "INT8", "[1,-2]")+`,`+in("b", "BOOL", "[true,false]")+`],"outputs":[{"name":"label"},{"name":"probabilities"}]} `), -1, 2)
	if err != nil {
		t.Fatalf("DecodeInferRequest(valid) = %v", err)
	}
	want := []Input{
		{Name: "x", Datatype: runtimeapi.INT8, Shape: []int64{1, 2}, tensorData: tensorData{raw: []byte{1, 0xfe}, n: 2}},
		{Name: "b", Datatype: runtimeapi.BOOL, Shape: []int64{1, 2}, tensorData: tensorData{raw: []byte{1, 0}, n: 2}},
	}
	if req.ID != "r1" || !reflect.DeepEqual(inputs, want) || !reflect.DeepEqual(outputs, []string{"label", "probabilities"}) {
		t.Errorf("DecodeInferRequest(valid) = %q, %+v, %q; want r1, %+v, [label probabilities]", req.ID, inputs, outputs, want)
	}
}

// TestRefusedRequestsCountForTheServedVersion: a request refused before it reaches the
// model (malformed body) is counted under the version it was for, so an operator sees
// which version's clients send bad requests; one for no loaded model under none (no
// label a client can choose).
func TestRefusedRequestsCountForTheServedVersion(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	runHTTPCases(t, r.Handler(), []httpCase{
		{"malformed", "POST", "/v2/models/iris/infer", `{"inputs":[`, 400, "request body"},
		{"malformed, unknown model", "POST", "/v2/models/nothing/infer", `{"inputs":[`, 400, "request body"},
		{"counted for 1.0.0", "GET", "/metrics", "", 200, `edgeward_runtime_request_errors_total{code="400",model="iris",version="1.0.0"} 1`},
		{"counted for no version", "GET", "/metrics", "", 200, `edgeward_runtime_request_errors_total{code="400",model="",version=""} 1`},
	})
}
