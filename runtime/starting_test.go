package runtime

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/runtime/inference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestStartingRuntimeSaysRetry: after a power cut, an agent restart or a crash, the
// public port is open (inherited, or queued by the kernel) before the committed model
// has loaded. In that window a client gets 503 with Retry-After over HTTP and
// UNAVAILABLE over gRPC: "not loaded yet, retry", never 404/NOT_FOUND, which reads as
// "this model does not exist" (it was 404 "model is not loaded"). Once a model has
// loaded, a name that is not loaded is 404 again.
func TestStartingRuntimeSaysRetry(t *testing.T) {
	r := newTestRuntime(t)
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	c := grpcClient(t, r)
	ctx := context.Background()
	body := `{"inputs":[{"name":"X","shape":[1,4],"datatype":"FP32","data":[5.1,3.5,1.4,0.2]}]}`

	type answer struct {
		code       int
		retryAfter string
		msg        string
	}
	do := func(method, path string) answer {
		t.Helper()
		var rd *strings.Reader
		if method == http.MethodPost {
			rd = strings.NewReader(body)
		} else {
			rd = strings.NewReader("")
		}
		req, err := http.NewRequest(method, srv.URL+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var e struct {
			Error string `json:"error"`
		}
		json.NewDecoder(resp.Body).Decode(&e)
		return answer{resp.StatusCode, resp.Header.Get("Retry-After"), e.Error}
	}
	paths := []struct{ method, path string }{
		{http.MethodPost, "/v2/models/iris/infer"},
		{http.MethodPost, "/v2/models/iris/versions/1.0.0/infer"},
		{http.MethodGet, "/v2/models/iris/ready"},
		{http.MethodGet, "/v2/models/iris"},
	}
	for _, p := range paths {
		a := do(p.method, p.path)
		if a.code != http.StatusServiceUnavailable || a.retryAfter == "" || !strings.Contains(a.msg, "starting") {
			t.Errorf("%s %s before any model loaded = %d, Retry-After %q, %q; want 503 with Retry-After saying the runtime is starting", p.method, p.path, a.code, a.retryAfter, a.msg)
		}
	}
	if a := do(http.MethodGet, "/v2/health/ready"); a.code != http.StatusServiceUnavailable {
		t.Errorf("GET /v2/health/ready before any model loaded = %d; want 503", a.code)
	}
	_, err := c.ModelInfer(ctx, irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1))
	if status.Code(err) != codes.Unavailable {
		t.Errorf("gRPC ModelInfer before any model loaded = %v; want UNAVAILABLE", err)
	}
	if _, err := c.ModelReady(ctx, &inference.ModelReadyRequest{Name: "iris"}); status.Code(err) != codes.Unavailable {
		t.Errorf("gRPC ModelReady before any model loaded = %v; want UNAVAILABLE", err)
	}

	loadIris(t, r, "1.0.0")
	if a := do(http.MethodPost, "/v2/models/iris/infer"); a.code != http.StatusOK {
		t.Errorf("infer once iris loaded = %d %q; want 200", a.code, a.msg)
	}
	for _, p := range []string{"/v2/models/nope/infer", "/v2/models/iris/versions/9.9.9/infer"} {
		if a := do(http.MethodPost, p); a.code != http.StatusNotFound {
			t.Errorf("POST %s once a model loaded = %d %q; want 404", p, a.code, a.msg)
		}
	}
	unknown := irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1)
	unknown.ModelName = "nope"
	if _, err := c.ModelInfer(ctx, unknown); status.Code(err) != codes.NotFound {
		t.Errorf("gRPC ModelInfer of an unknown model once one loaded = %v; want NOT_FOUND", err)
	}
}
