package runtime

import (
	"bytes"
	"fmt"
	"net/http"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"testing"
)

// TestRequestBoundsBeforeDecoding: a JSON request whose parameters, tensors or shape
// pass their bounds is refused with 400 naming the bound, by the fast decoder and the
// reference alike (escaped names take the reference's path), and without decoding it:
// 1.15 million parameters used to be decoded into a map (four such requests took the
// runtime from 46 MB to 688 MB) and answered 200. Requests at the bounds are decoded
// as before.
func TestRequestBoundsBeforeDecoding(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	h := r.Handler()
	params := func(n int, key string) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteByte(',')
			}
			fmt.Fprintf(&b, `"%s%d":1`, key, i)
		}
		return b.String()
	}
	input := `{"name":"X","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}`
	many := func(n int, s string) string { return strings.TrimSuffix(strings.Repeat(s+",", n), ",") }
	shape := func(n int) string { return "[1,4" + strings.Repeat(",1", n-2) + "]" }
	for _, tt := range []struct {
		name, body string
		code       int
		says       string
	}{
		{"64 parameters", `{"parameters":{` + params(64, "p") + `},"inputs":[` + input + `]}`, 200, ""},
		{"65 parameters", `{"parameters":{` + params(65, "p") + `},"inputs":[` + input + `]}`, 400, "more than 64 members"},
		{"65 parameters, escaped names", `{"parameters":{` + params(65, `\u0070`) + `},"inputs":[` + input + `]}`, 400, "more than 64 members"},
		{"65 tensor parameters", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","parameters":{` + params(65, "p") + `},"data":[5.1,3.5,1.4,0.2]}]}`, 400, "more than 64 members"},
		{"1,025 outputs", `{"inputs":[` + input + `],"outputs":[` + many(1025, `{"name":"output_label"}`) + `]}`, 400, "more than 1024 outputs"},
		{"1,025 inputs", `{"inputs":[` + many(1025, input) + `]}`, 400, "more than 1024 inputs"},
		{"a shape of 64", `{"inputs":[{"name":"X","shape":` + shape(64) + `,"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`, 400, "rank"},
		{"a shape of 65", `{"inputs":[{"name":"X","shape":` + shape(65) + `,"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`, 400, "more than 64 dimensions"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("POST", "/v2/models/iris/infer", strings.NewReader(tt.body)))
		if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.says) {
			t.Errorf("%s: %d %.200s; want %d saying %q", tt.name, rec.Code, rec.Body.String(), tt.code, tt.says)
		}
	}

	body := []byte(`{"parameters":{` + params(1_150_000, "p") + `},"inputs":[` + input + `]}`)
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("POST", "/v2/models/iris/infer", bytes.NewReader(body)))
	goruntime.ReadMemStats(&after)
	if rec.Code != http.StatusBadRequest {
		t.Fatalf("1.15 million parameters: %d %.200s; want 400", rec.Code, rec.Body.String())
	}
	// Reading the body takes about twice its size (doubling buffers); decoding the
	// parameters took some 150 bytes each, 170 MB.
	if got := after.TotalAlloc - before.TotalAlloc; got > 4*uint64(len(body)) {
		t.Errorf("the refused request allocated %d bytes; want under four times its %d-byte body", got, len(body))
	}
}
