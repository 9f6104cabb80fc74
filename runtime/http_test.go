package runtime

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

type httpCase struct {
	name       string
	method     string
	path       string
	body       string
	wantCode   int
	wantInBody string // substring of the response body
}

func runHTTPCases(t *testing.T, h http.Handler, cases []httpCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			req := httptest.NewRequest(c.method, c.path, strings.NewReader(c.body))
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			body := rec.Body.String()
			if rec.Code != c.wantCode {
				t.Fatalf("%s %s = %d %s; want %d", c.method, c.path, rec.Code, body, c.wantCode)
			}
			if c.wantInBody != "" && !strings.Contains(body, c.wantInBody) {
				t.Errorf("%s %s body = %s; want it to contain %q", c.method, c.path, body, c.wantInBody)
			}
			if rec.Code >= 400 && !strings.HasPrefix(c.path, "/metrics") {
				var e struct{ Error string }
				if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil && rec.Code != http.StatusMethodNotAllowed {
					t.Errorf("%s %s error body %q is not {\"error\":…}: %v", c.method, c.path, body, err)
				}
			}
		})
	}
}

const irisRow = `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[6.3,2.3,4.4,1.3]}]}`

func TestHTTPEmptyRuntime(t *testing.T) {
	r := newTestRuntime(t)
	runHTTPCases(t, r.Handler(), []httpCase{
		{"server: the public port advertises what it serves", "GET", "/v2", "", 200, `"extensions":["binary_tensor_data"]`},
		{"live", "GET", "/v2/health/live", "", 200, `"live":true`},
		{"not ready without models", "GET", "/v2/health/ready", "", 503, `"ready":false`},
		// Before its first model has loaded the runtime is starting: 503, retry
		// (TestStartingRuntimeSaysRetry), not 404.
		{"model metadata before any load", "GET", "/v2/models/iris", "", 503, "the runtime is starting"},
		{"infer before any load", "POST", "/v2/models/iris/infer", irisRow, 503, "the runtime is starting"},
		{"unknown path", "GET", "/v3/nothing", "", 404, "no endpoint"},
		{"the repository extension is not on the public port", "POST", "/v2/repository/index", "", 404, "no endpoint"},
		{"control not public", "POST", "/v2/repository/models/iris/load", `{}`, 404, "no endpoint"},
	})
}

func TestHTTPProtocol(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	h := r.ControlHandler()
	big := `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[` + strings.Repeat("1,", 9<<20) + `1]}]}`
	runHTTPCases(t, h, []httpCase{
		{"server: the control API adds its extensions", "GET", "/v2", "", 200, `"extensions":["binary_tensor_data","model_repository","edgeward_probe"]`},
		{"ready", "GET", "/v2/health/ready", "", 200, `"ready":true`},
		{"metadata", "GET", "/v2/models/iris", "", 200, `"inputs":[{"name":"X","datatype":"FP32","shape":[-1,4]}]`},
		{"metadata version", "GET", "/v2/models/iris/versions/1.0.0", "", 200, `"versions":["1.0.0"]`},
		{"metadata unknown version", "GET", "/v2/models/iris/versions/9.9.9", "", 404, "no loaded version"},
		{"model ready", "GET", "/v2/models/iris/ready", "", 200, `"ready":true`},
		{"version ready", "GET", "/v2/models/iris/versions/1.0.0/ready", "", 200, `"ready":true`},
		{"version not ready", "GET", "/v2/models/iris/versions/2.0.0/ready", "", 404, "no loaded version"},
		{"infer flat", "POST", "/v2/models/iris/infer", irisRow, 200,
			`"outputs":[{"name":"output_label","datatype":"INT64","shape":[1],"data":[1]}]`},
		{"infer nested batch", "POST", "/v2/models/iris/versions/1.0.0/infer",
			`{"id":"r1","inputs":[{"name":"X","shape":[2,4],"datatype":"FP32","data":[[5.1,3.5,1.4,0.2],[7.7,2.8,6.7,2.0]]}],"outputs":[{"name":"output_label"}]}`,
			200, `"id":"r1","outputs":[{"name":"output_label","datatype":"INT64","shape":[2],"data":[0,2]}]`},
		{"wrong datatype", "POST", "/v2/models/iris/infer", strings.Replace(irisRow, "FP32", "FP64", 1), 400, "model wants FP32"},
		{"unsupported datatype", "POST", "/v2/models/iris/infer", strings.Replace(irisRow, "FP32", "STRING", 1), 400, "not supported"},
		{"BYTES for an FP32 input", "POST", "/v2/models/iris/infer", strings.Replace(irisRow, "FP32", "BYTES", 1), 400, "not a string"},
		{"wrong rank", "POST", "/v2/models/iris/infer", strings.Replace(irisRow, "[1,4]", "[4]", 1), 400, "rank"},
		{"wrong dim", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}`, 400, "model wants [-1 4]"},
		{"zero dim", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[0,4],"datatype":"FP32","data":[]}]}`, 400, "at least 1"},
		{"negative dim", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[-1,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "at least 1"},
		{"huge shape", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[4611686018427387904,4],"datatype":"FP32","data":[1]}]}`, 400, "too large"},
		{"count mismatch", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[2,4],"datatype":"FP32","data":[1,2,3,4]}]}`, 400, "needs 8 elements"},
		{"unknown input", "POST", "/v2/models/iris/infer", strings.Replace(irisRow, `"X"`, `"Y"`, 1), 400, `no input \"Y\"`},
		{"two inputs", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,1],"datatype":"FP32","data":[1]},{"name":"X","shape":[1],"datatype":"FP32","data":[1]}]}`, 400, "takes 1 inputs"},
		{"no inputs", "POST", "/v2/models/iris/infer", `{"inputs":[]}`, 400, "no inputs"},
		{"unknown output", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}],"outputs":[{"name":"output_probability"}]}`, 400, `no output \"output_probability\"`},
		{"string data", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":["1",2,3,4]}]}`, 400, "not a number"},
		{"null data", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[null,2,3,4]}]}`, 400, "not a number"},
		{"data not array", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":7}]}`, 400, "must be a JSON array"},
		{"float overflow", "POST", "/v2/models/iris/infer", `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[1e39,2,3,4]}]}`, 400, "out of range"},
		{"malformed json", "POST", "/v2/models/iris/infer", `{"inputs":[`, 400, "request body"},
		{"trailing json", "POST", "/v2/models/iris/infer", irisRow + `{}`, 400, "trailing"},
		{"body too large", "POST", "/v2/models/iris/infer", big, 413, "larger than"},
		{"infer wrong method", "GET", "/v2/models/iris/infer", "", 405, "method GET not allowed"},
		{"metrics", "GET", "/metrics", "", 200, `edgeward_runtime_requests_total{code="200",model="iris",version="1.0.0"}`},
		{"metrics errors", "GET", "/metrics", "", 200, `edgeward_runtime_request_errors_total{code="400",model="iris",version="1.0.0"}`},
		{"metrics loaded", "GET", "/metrics", "", 200, `edgeward_runtime_model_loaded{default="true",model="iris",version="1.0.0"} 1`},
		{"metrics latency", "GET", "/metrics", "", 200, `edgeward_runtime_request_duration_seconds_bucket{model="iris",version="1.0.0"`},
		{"index", "POST", "/v2/repository/index", "", 200, `"name":"iris","version":"1.0.0","state":"READY","default":true`},
	})
}

// TestHTTPControl exercises the repository extension and probe endpoints, including
// their error paths.
func TestHTTPControl(t *testing.T) {
	r := newTestRuntime(t)
	h := r.ControlHandler()
	iris := irisModel(t)
	notModel := filepath.Join(t.TempDir(), "bad.onnx")
	if err := os.WriteFile(notModel, []byte("not an onnx model"), 0o644); err != nil {
		t.Fatal(err)
	}
	probe, err := os.ReadFile("testdata/probes/iris/1.0.0.json")
	if err != nil {
		t.Fatal(err)
	}
	probeReq := `{"probe":` + string(probe) + `,"gates":{"min_accuracy":0.95}}`
	strict := `{"probe":` + string(probe) + `,"gates":{"min_accuracy":0.999}}`
	load := func(v string) string { return `{"version":"` + v + `","path":"` + iris + `"}` }
	runHTTPCases(t, h, []httpCase{
		{"load bad name", "POST", "/v2/repository/models/Iris!/load", load("1.0.0"), 400, "model name"},
		{"load bad version", "POST", "/v2/repository/models/iris/load", load("v1"), 400, "semantic version"},
		{"load no path", "POST", "/v2/repository/models/iris/load", `{"version":"1.0.0"}`, 400, "path is required"},
		{"load missing file", "POST", "/v2/repository/models/iris/load", `{"version":"1.0.0","path":"/nonexistent.onnx"}`, 404, "model file"},
		{"load not onnx", "POST", "/v2/repository/models/iris/load", `{"version":"1.0.0","path":"` + notModel + `"}`, 400, "not a loadable ONNX model"},
		{"load wrong sha", "POST", "/v2/repository/models/iris/load", `{"version":"1.0.0","path":"` + iris + `","sha256":"00"}`, 400, "sha256"},
		{"load unknown field", "POST", "/v2/repository/models/iris/load", `{"version":"1.0.0","pth":"x"}`, 400, "unknown field"},
		{"load", "POST", "/v2/repository/models/iris/load", load("1.0.0"), 200, `"sha256":"`},
		{"load again", "POST", "/v2/repository/models/iris/load", load("1.0.0"), 409, "already loaded"},
		{"load second", "POST", "/v2/repository/models/iris/load", load("1.1.0"), 200, `"versions":["1.1.0"]`},
		{"default still first", "GET", "/v2/models/iris", "", 200, `"versions":["1.0.0","1.1.0"]`},
		{"probe passes", "POST", "/v2/models/iris/versions/1.1.0/probe", probeReq, 200, `"pass":true`},
		{"probe fails gate", "POST", "/v2/models/iris/versions/1.1.0/probe", strict, 200, `"failures":["accuracy 0.9867 \u003c min_accuracy 0.9990"]`},
		{"probe unknown version", "POST", "/v2/models/iris/versions/3.0.0/probe", probeReq, 404, "no loaded version"},
		{"probe bad set", "POST", "/v2/models/iris/versions/1.1.0/probe", `{"probe":{"inputs":[],"output":""}}`, 400, "needs inputs"},
		{"probe label count", "POST", "/v2/models/iris/versions/1.1.0/probe", `{"probe":{"inputs":[{"name":"X","datatype":"FP32","shape":[1,4],"data":[1,2,3,4]}],"output":"output_label","labels":[1,2]}}`, 400, "2 labels"},
		{"unload default refused", "POST", "/v2/repository/models/iris/unload", `{"version":"1.0.0"}`, 409, "is the default"},
		{"set default", "POST", "/v2/repository/models/iris/versions/1.1.0/default", "", 200, `"default":"1.1.0"`},
		{"set default unknown", "POST", "/v2/repository/models/iris/versions/7.0.0/default", "", 404, "not loaded"},
		{"metrics default moved", "GET", "/metrics", "", 200, `edgeward_runtime_model_loaded{default="false",model="iris",version="1.0.0"} 1`},
		{"unload old", "POST", "/v2/repository/models/iris/unload", `{"version":"1.0.0"}`, 200, "UNAVAILABLE"},
		{"unload again", "POST", "/v2/repository/models/iris/unload", `{"version":"1.0.0"}`, 404, "not loaded"},
		{"infer new default", "POST", "/v2/models/iris/infer", irisRow, 200, `"model_version":"1.1.0"`},
		{"index", "POST", "/v2/repository/index", "", 200, `[{"name":"iris","version":"1.1.0","state":"READY","default":true,`},
		{"unload last", "POST", "/v2/repository/models/iris/unload", `{"version":"1.1.0"}`, 200, ""},
		{"not ready after", "GET", "/v2/health/ready", "", 503, ""},
	})
}

// TestHTTPServerClient checks the Client against a real HTTP server.
func TestHTTPServerClient(t *testing.T) {
	r := newTestRuntime(t)
	srv := httptest.NewServer(r.ControlHandler())
	defer srv.Close()
	c := &runtimeapi.Client{BaseURL: srv.URL}
	ctx := context.Background()
	if ok, err := c.Ready(ctx); ok || err != nil {
		t.Fatalf("Ready() = %v, %v; want false, nil", ok, err)
	}
	info, err := c.Load(ctx, runtimeapi.LoadRequest{Name: "iris", Version: "1.0.0", Path: irisModel(t)})
	if err != nil || len(info.SHA256) != 64 {
		t.Fatalf("Load = %+v, %v", info, err)
	}
	if _, err := c.Load(ctx, runtimeapi.LoadRequest{Name: "iris", Version: "1.0.0", Path: irisModel(t)}); !runtimeapi.IsConflict(err) {
		t.Errorf("second Load error = %v; want ErrConflict", err)
	}
	resp, err := http.Post(srv.URL+"/v2/models/iris/infer", "application/json", strings.NewReader(irisRow))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var ir runtimeapi.InferResponse
	if err := json.Unmarshal(b, &ir); err != nil || resp.StatusCode != 200 {
		t.Fatalf("infer = %d %s (%v)", resp.StatusCode, b, err)
	}
	if string(ir.Outputs[0].Data) != "[1]" {
		t.Errorf("infer label = %s; want [1]", ir.Outputs[0].Data)
	}
}
