package runtime

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// FuzzDecodeInferRequest feeds arbitrary bodies to the request decoder: it must never
// panic, must reject with ErrInvalid, and what it accepts must respect the element bound
// and the datatype's field.
func FuzzDecodeInferRequest(f *testing.F) {
	for _, s := range []string{
		irisRow,
		`{"inputs":[{"name":"X","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4]]}]}`,
		`{"inputs":[{"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]}]}`,
		`{"inputs":[{"name":"u","shape":[1],"datatype":"UINT8","data":[255]}],"outputs":[{"name":"o"}]}`,
		`{"inputs":[{"name":"i","shape":[1],"datatype":"INT64","data":[-9223372036854775808]}]}`,
		`{"inputs":[{"name":"X","shape":[1],"datatype":"FP64","data":[[[[1e308]]]]}]}`,
		`{"inputs":[{"name":"X","data":[1,,2]}]}`, `{"inputs":[{"data":"[1]"}]}`, `[`, ``,
	} {
		f.Add([]byte(s))
	}
	const max = 64
	f.Fuzz(func(t *testing.T, body []byte) {
		_, inputs, _, err := DecodeInferRequest(body, -1, max)
		if err != nil {
			if !errors.Is(err, runtimeapi.ErrInvalid) {
				t.Fatalf("DecodeInferRequest(%q) error %v does not wrap ErrInvalid", body, err)
			}
			return
		}
		for _, in := range inputs {
			if in.n > max {
				t.Fatalf("input %q has %d elements; bound %d", in.Name, in.n, max)
			}
			if !in.consistent(in.Datatype) {
				t.Fatalf("input %q of %s holds values of another kind", in.Name, in.Datatype)
			}
		}
	})
}

func TestDecodeData(t *testing.T) {
	tests := []struct {
		data    string
		dt      runtimeapi.Datatype
		wantLen int
		wantErr bool
	}{
		{"[1,2,3]", runtimeapi.FP32, 3, false},
		{"[[1,2],[3,4]]", runtimeapi.INT64, 4, false},
		{" [ [ true ] , [false] ] ", runtimeapi.BOOL, 2, false},
		{"[]", runtimeapi.FP32, 0, false},
		{"[-0.5e-3]", runtimeapi.FP64, 1, false},
		{"[1,]", runtimeapi.FP32, 0, true},
		{"[,1]", runtimeapi.FP32, 0, true},
		{"[1 2]", runtimeapi.FP32, 0, true},
		{"[[1]", runtimeapi.FP32, 0, true},
		{"[1]]", runtimeapi.FP32, 0, true},
		{"[1][2]", runtimeapi.FP32, 0, true},
		{"[01]", runtimeapi.INT64, 0, true},
		{"[+1]", runtimeapi.INT64, 0, true},
		{"[0x10]", runtimeapi.INT64, 0, true},
		{"[1e2]", runtimeapi.INT64, 0, true},
		{"[Infinity]", runtimeapi.FP64, 0, true},
		{"[1,2,3,4,5]", runtimeapi.FP32, 0, true}, // over the bound of 4
		{"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]", runtimeapi.FP32, 0, true},
		{`["a"]`, runtimeapi.BOOL, 0, true},
	}
	for _, tt := range tests {
		v, err := decodeData([]byte(tt.data), tt.dt, 4, nil)
		if (err != nil) != tt.wantErr || (err == nil && v.n != tt.wantLen) {
			t.Errorf("decodeData(%q, %s) = %d values, %v; want %d, error %v", tt.data, tt.dt, v.n, err, tt.wantLen, tt.wantErr)
		}
	}
}

// FuzzFastUnmarshal checks the request decoder's fast path against its reference,
// unmarshalRequest: every body the fast path accepts must be one unmarshalRequest accepts too, decoded to an equal
// InferRequest (nil and empty slices and maps told apart), so that the fast path changes
// no result and no error.
func FuzzFastUnmarshal(f *testing.F) {
	for _, s := range fastUnmarshalSeeds {
		f.Add([]byte(s.body))
	}
	f.Fuzz(checkFastUnmarshal)
}

// checkFastUnmarshal is FuzzFastUnmarshal's property for one body.
func checkFastUnmarshal(t *testing.T, body []byte) {
	t.Helper()
	var fast, ref runtimeapi.InferRequest
	if !fastUnmarshal(body, &fast) {
		if !reflect.DeepEqual(fast, runtimeapi.InferRequest{}) {
			t.Fatalf("fastUnmarshal(%q) declined but left %+v", body, fast)
		}
		return
	}
	if err := unmarshalRequest(body, &ref); err != nil {
		t.Fatalf("fastUnmarshal(%q) accepted; unmarshalRequest: %v", body, err)
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("fastUnmarshal(%q) = %#v; unmarshalRequest = %#v", body, fast, ref)
	}
	// Decoding into a value that held another request (a pooled one) reuses its
	// memory and must give the same result.
	var reused runtimeapi.InferRequest
	if !fastUnmarshal([]byte(reuseBody), &reused) || !fastUnmarshal(body, &reused) {
		t.Fatalf("fastUnmarshal(%q) after another request declined", body)
	}
	if !reflect.DeepEqual(reused, ref) {
		t.Fatalf("fastUnmarshal(%q) after another request = %#v; unmarshalRequest = %#v", body, reused, ref)
	}
}

// reuseBody fills a request value before the fuzzed body is decoded into it again.
const reuseBody = `{"id":"a","inputs":[{"name":"X","shape":[1,4,1],"datatype":"FP32","data":[1,2,3,4]},{"name":"Y","shape":[],"datatype":"BOOL","data":[]}],"outputs":[{"name":"o"},{"name":"p"}]}`

// fastUnmarshalSeeds are FuzzFastUnmarshal's seeds and TestFastUnmarshal's table: fast
// says whether the fast path takes the body (else unmarshalRequest decodes it).
var fastUnmarshalSeeds = []struct {
	body string
	fast bool
}{
	{irisJSON, true},
	{irisRow, true},
	{" \n{ \"id\" : \"r1\" , \"inputs\" : [ { \"name\" : \"X\" , \"shape\" : [ 2 , 2 ] , \"datatype\" : \"FP32\" , \"data\" : [ [ 1 , 2.5e-3 ] , [ -0 , 4 ] ] } ] } \r\n", true},
	{`{"inputs":[{"name":"b","shape":[2],"datatype":"BOOL","data":[true,false]}],"outputs":[{"name":"o","parameters":{"binary_data":true}}]}`, true},
	{`{"parameters":{"binary_data_output":true,"n":-1.5E+3,"s":"np"},"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":16}}]}`, true},
	{`{"inputs":[{"data":[[],[[]]],"datatype":"INT64","shape":[],"name":"é"}],"outputs":[],"parameters":{}}`, true},
	{`{"inputs":[]}`, true},
	{`{}`, true},
	{`{"inputs":[{"name":"i","shape":[1],"datatype":"INT64","data":[-9223372036854775808]}]}`, true},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP64","data":[[[[1e308]]]]}]}`, true},
	{`{"id":"a b","inputs":[{"name":"X","shape":[3],"datatype":"FP32","data":[0,9,0.5]}]}`, true}, // a space in a string; numbers starting with 0 and 9
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":` + strings.Repeat("[", maxNesting) + "1" + strings.Repeat("]", maxNesting) + `}]}`, true},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":` + strings.Repeat("[", maxNesting+1) + "1" + strings.Repeat("]", maxNesting+1) + `}]}`, false},                                                                                     // decodeData refuses it
	{`{"inputs":[{"name":"X","shape":[3],"datatype":"INT64","data":[1,2,3]},{"name":"Y","shape":[1],"datatype":"BOOL","data":[true]},{"name":"Z","shape":[],"datatype":"FP32","data":[]}],"outputs":[{"name":"a"},{"name":"b"},{"name":"c"}]}`, true}, // more inputs and outputs than reuseBody's
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}],"inputs":[{"name":"Y"}]}`, false},                                                                                                                                             // repeated member
	{`{"Inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}`, false},                                                                                                                                                                     // letter case
	{`{"inputs":[{"name":"X\u0041","shape":[1],"datatype":"FP32","data":[1]}]}`, false},                                                                                                                                                               // escape
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"BYTES","data":["a"]}]}`, false},                                                                                                                                                                  // BYTES strings
	{`{"inputs":[{"name":"X","shape":[1.0],"datatype":"FP32","data":[1]}]}`, false},
	{`{"inputs":[{"name":"X","shape":[9223372036854775808],"datatype":"FP32","data":[1]}]}`, false},
	{`{"inputs":[{"name":"X","shape":null,"datatype":"FP32","data":[1]}]}`, false},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[01]}]}`, false},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1,]}]}`, false},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":1}]}`, false},
	{`{"inputs":[{"name":"X","shape":[1],"datatype":"FP32","data":[1]}],"extra":1}`, false},
	{`{"inputs":[{"name":"X","data":[1]}]} x`, false},
	{"{\"inputs\":[{\"name\":\"\xff\",\"data\":[1]}]}", false}, // invalid UTF-8
	{`{"id":1,"inputs":[]}`, false},
	{`{"parameters":{"a":{"b":1}},"inputs":[]}`, false},
	{`{"parameters":{"a":null},"inputs":[]}`, false},
	{`{"inputs":[{"name":"X","data":[1,,2]}]}`, false},
	{`{"inputs":[{"data":"[1]"}]}`, false},
	{"{\"id\":\"\x80\",\"inputs\":[]}", false},       // a lone continuation byte: encoding/json replaces it
	{"{\"id\":\"a\tb\",\"inputs\":[]}", false},       // a control character in a string
	{`{"inputs":[{"name":"X","data":[1.]}]}`, false}, // numbers json refuses
	{`{"inputs":[{"name":"X","data":[-]}]}`, false},
	{`{"inputs":[{"name":"X","data":[1e]}]}`, false},
	{`{"inputs":[{"name":"X","data":[1e+]}]}`, false},
	{`{"inputs":[{"name":"X","data":[.5]}]}`, false},
	{`{"inputs":[{"name":"X","data":[tru]}]}`, false},
	{`{"parameters":{"a":fals},"inputs":[]}`, false},
	{`[`, false},
	{``, false},
	{`null`, false},
}

func TestFastUnmarshal(t *testing.T) {
	for _, s := range fastUnmarshalSeeds {
		var fast, ref runtimeapi.InferRequest
		got := fastUnmarshal([]byte(s.body), &fast)
		if got != s.fast {
			t.Errorf("fastUnmarshal(%q) = %v; want %v", s.body, got, s.fast)
			continue
		}
		if !got {
			continue
		}
		if err := unmarshalRequest([]byte(s.body), &ref); err != nil {
			t.Errorf("fastUnmarshal(%q) accepted; unmarshalRequest: %v", s.body, err)
		} else if !reflect.DeepEqual(fast, ref) {
			t.Errorf("fastUnmarshal(%q) = %#v; unmarshalRequest = %#v", s.body, fast, ref)
		}
	}
}

// TestFastUnmarshalPrefixes cuts each seed at every byte: a request cut short (a body
// truncated in transit, a client that stops writing) ends inside a string, a number, a
// literal or an array, where the fast path reads one byte past what it checked unless
// each bound holds. Every prefix must keep FuzzFastUnmarshal's property (no panic, and
// what the fast path accepts unmarshalRequest decodes the same), and a prefix
// unmarshalRequest refuses must be declined.
func TestFastUnmarshalPrefixes(t *testing.T) {
	for _, s := range fastUnmarshalSeeds {
		for n := range len(s.body) {
			body := []byte(s.body[:n])
			checkFastUnmarshal(t, body)
			var fast, ref runtimeapi.InferRequest
			if unmarshalRequest(body, &ref) != nil && fastUnmarshal(body, &fast) {
				t.Fatalf("fastUnmarshal(%q) accepted what unmarshalRequest refuses", body)
			}
		}
	}
}
