package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestErrorAnswersAreBounded: what an error answer quotes of the request (a path, a
// model, input or datatype name) is cut to maxErrorText bytes, over HTTP and gRPC,
// saying how much was cut. Before, a GET with 900 KB of '<' in its path got a 5.4 MB 404
// (each '<' JSON-escaped to six bytes), an input named with 3 MB a 7 MB 400, and over
// gRPC a 6 MB status message: clients that never read their answers held that in the
// server's memory (found from outside, 2 Dec).
func TestErrorAnswersAreBounded(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	long := strings.Repeat("<", 100<<10)
	check := func(what string, resp *http.Response, err error, code int, cut bool) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Error string }
		if resp.StatusCode != code || json.Unmarshal(b, &e) != nil || len(e.Error) > maxErrorText+64 || cut != strings.Contains(e.Error, "bytes more)") {
			t.Errorf("%s = %d, %d bytes (%.120s); want %d with an error of at most %d bytes saying it was cut", what, resp.StatusCode, len(b), b, code, maxErrorText+64)
		}
	}
	for _, path := range []string{"/v2/models/" + long + "/ready", "/v2/models/" + long, "/nowhere/" + long} {
		resp, err := http.Get(srv.URL + path)
		check("GET "+path[:20]+"…", resp, err, http.StatusNotFound, true)
	}
	body := `{"inputs":[{"name":"` + long + `","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}`
	resp, err := http.Post(srv.URL+"/v2/models/iris/infer", "application/json", strings.NewReader(body))
	check("infer with a long input name", resp, err, http.StatusBadRequest, false) // quoted to 64 characters
	body = `{"inputs":[{"name":"` + long + `","shape":[1,4],"datatype":"` + strings.Repeat("F", 900<<10) + `","data":[1,2,3,4]}]}`
	resp, err = http.Post(srv.URL+"/v2/models/iris/infer", "application/json", bytes.NewReader([]byte(body)))
	check("infer with a long name and datatype", resp, err, http.StatusBadRequest, true)
	bin, hl := binaryRequest(`{"inputs":[{"name":"`+long+`","shape":[1,4],"datatype":"FP32","parameters":{"binary_data_size":15}}]}`, make([]byte, 15))
	breq, _ := http.NewRequest("POST", srv.URL+"/v2/models/iris/infer", bytes.NewReader(bin))
	breq.Header.Set("Content-Type", "application/octet-stream")
	breq.Header.Set(runtimeapi.HeaderLengthHeader, strconv.Itoa(hl))
	resp, err = http.DefaultClient.Do(breq)
	check("binary infer with a long name and a wrong size", resp, err, http.StatusBadRequest, true)

	c := grpcClient(t, r)
	req := irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1)
	req.Inputs[0].Name, req.Inputs[0].Datatype = strings.Repeat("x", 3<<20), strings.Repeat("Q", 1<<20)
	_, err = c.ModelInfer(context.Background(), req)
	if msg := status.Convert(err).Message(); err == nil || len(msg) > maxErrorText+64 || !strings.Contains(msg, "bytes more)") {
		t.Errorf("gRPC ModelInfer with a 3 MB input name = %d bytes of status message (%.120s); want at most %d, saying it was cut", len(msg), msg, maxErrorText+64)
	}
	_, err = c.ModelReady(context.Background(), &inference.ModelReadyRequest{Name: strings.Repeat("y", 1<<20)})
	if msg := status.Convert(err).Message(); err == nil || len(msg) > maxErrorText+64 {
		t.Errorf("gRPC ModelReady with a 1 MB name = %d bytes of status message; want at most %d", len(msg), maxErrorText+64)
	}
}

// TestWrongMethodAndEncoding: a path the API serves under other methods answers 405 with
// Allow (RFC 9110), not 404; a compressed request body (Content-Encoding, which Triton's
// clients can send) is 415 naming the encoding, not a 400 about the JSON's first byte;
// both in JSON like every error (found from outside, 2 Dec).
func TestWrongMethodAndEncoding(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	for _, tc := range []struct {
		method, path string
		code         int
		allow        string
	}{
		{"GET", "/v2/models/iris/infer", 405, "POST"},
		{"PUT", "/v2/models/iris/versions/1.0.0/infer", 405, "POST"},
		{"POST", "/v2/health/ready", 405, "GET, HEAD"},
		{"OPTIONS", "/v2/models/iris", 405, "GET, HEAD"},
		{"DELETE", "/metrics", 405, "GET, HEAD"},
		{"GET", "/v2/nowhere", 404, ""},
		{"POST", "/v3/models/iris/infer", 404, ""},
		{"GET", "/v2/health/live", 200, ""},
	} {
		req, _ := http.NewRequest(tc.method, srv.URL+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var e struct{ Error string }
		if resp.StatusCode != tc.code || resp.Header.Get("Allow") != tc.allow || (tc.code >= 400 && (json.Unmarshal(b, &e) != nil || e.Error == "")) {
			t.Errorf("%s %s = %d, Allow %q, %s; want %d, Allow %q, a JSON error", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Allow"), b, tc.code, tc.allow)
		}
	}
	req, _ := http.NewRequest("POST", srv.URL+"/v2/models/iris/infer", strings.NewReader("\x1f\x8b\x08\x00"))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Content-Encoding", "gzip")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType || !strings.Contains(string(b), "gzip") {
		t.Errorf("a gzip request = %d %s; want 415 naming the encoding", resp.StatusCode, b)
	}
	// Every Content-Encoding header counts: "identity" first hid a "gzip" after it.
	req, _ = http.NewRequest("POST", srv.URL+"/v2/models/iris/infer", strings.NewReader("\x1f\x8b\x08\x00"))
	req.Header.Set("Content-Type", "application/json")
	req.Header["Content-Encoding"] = []string{"identity", "gzip"}
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("a request with Content-Encoding identity, then gzip = %d; want 415", resp.StatusCode)
	}
}
