package runtime

import (
	"errors"
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
