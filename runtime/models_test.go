package runtime

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/runtime/modelgen"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// vibrationDir returns a directory, laid out like the repository's targets, holding the
// generated vibration models and probe sets; they are generated once per test binary.
func vibrationDir(tb testing.TB) string {
	tb.Helper()
	genOnce.Do(func() {
		genOnce.dir, genOnce.err = os.MkdirTemp("", "edgeward-modelgen-")
		if genOnce.err == nil {
			genOnce.err = modelgen.WriteFiles(genOnce.dir)
		}
	})
	if genOnce.err != nil {
		tb.Fatal(genOnce.err)
	}
	return genOnce.dir
}

var genOnce struct {
	sync.Once
	dir string
	err error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if genOnce.dir != "" {
		os.RemoveAll(genOnce.dir)
	}
	os.Exit(code)
}

func TestVibrationProbeGates(t *testing.T) {
	r := newTestRuntime(t)
	dir := vibrationDir(t)
	gates := &artifact.Gates{MinAccuracy: 0.85, MaxRSSMB: 4096}
	tests := []struct {
		version  string
		wantPass bool
		wantAcc  float64 // measured in ONNX Runtime; equals the Go-side prediction
	}{
		{"1.0.0", true, 262.0 / 300},
		{"1.1.0", true, 281.0 / 300},
		{"2.0.0", false, 97.0 / 300},
	}
	for _, tt := range tests {
		path := filepath.Join(dir, "models", "vibration", tt.version+".onnx")
		if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "vibration", Version: tt.version, Path: path}); err != nil {
			t.Fatalf("Load(vibration %s): %v", tt.version, err)
		}
		ps := readProbeSet(t, filepath.Join(dir, "probes", "vibration", tt.version+".json"))
		rep, err := r.Probe(context.Background(), "vibration", tt.version, ps, gates)
		if err != nil {
			t.Fatalf("Probe(vibration %s): %v", tt.version, err)
		}
		t.Logf("vibration %s: accuracy %.4f p50 %.3fms p99 %.3fms peak RSS %.1f MB failures %v",
			tt.version, rep.Accuracy, rep.P50Ms, rep.P99Ms, rep.PeakRSSMB, rep.Failures)
		if rep.Pass != tt.wantPass || rep.Accuracy != tt.wantAcc {
			t.Errorf("Probe(vibration %s) = pass %v accuracy %v; want %v, %v", tt.version, rep.Pass, rep.Accuracy, tt.wantPass, tt.wantAcc)
		}
	}
}

// TestTrialPromoteAbort walks the agent's flow through the Client: the degraded 2.0.0
// fails its trial and is aborted while 1.0.0 keeps serving; 1.1.0 passes and is promoted.
func TestTrialPromoteAbort(t *testing.T) {
	r := newTestRuntime(t)
	c, stop := controlClient(t, r)
	defer stop()
	ctx := context.Background()
	dir := vibrationDir(t)
	model := func(v string) string { return filepath.Join(dir, "models", "vibration", v+".onnx") }
	probe := func(v string) *runtimeapi.ProbeSet {
		return readProbeSet(t, filepath.Join(dir, "probes", "vibration", v+".json"))
	}
	gates := &artifact.Gates{MinAccuracy: 0.85}

	if _, err := c.Load(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: "1.0.0", Path: model("1.0.0")}); err != nil {
		t.Fatal(err)
	}
	_, rep, err := c.Trial(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: "2.0.0", Path: model("2.0.0")}, probe("2.0.0"), gates)
	if err != nil || rep.Pass {
		t.Fatalf("Trial(2.0.0) = %+v, %v; want a failed probe", rep, err)
	}
	if err := c.Abort(ctx, "vibration", "2.0.0"); err != nil {
		t.Fatal(err)
	}
	if got := defaultVersion(t, r, "vibration"); got != "1.0.0" {
		t.Errorf("after aborting 2.0.0 the default is %q; want 1.0.0", got)
	}
	_, rep, err = c.Trial(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: "1.1.0", Path: model("1.1.0")}, probe("1.1.0"), gates)
	if err != nil || !rep.Pass {
		t.Fatalf("Trial(1.1.0) = %+v, %v; want a passed probe", rep, err)
	}
	if err := c.Promote(ctx, "vibration", "1.1.0", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	idx, err := c.Index(ctx)
	if err != nil || len(idx) != 1 || idx[0].Version != "1.1.0" || !idx[0].Default {
		t.Errorf("Index after promote = %+v, %v; want only 1.1.0, default", idx, err)
	}
	if _, err := c.Probe(ctx, "vibration", "2.0.0", probe("2.0.0"), nil); !errors.Is(err, runtimeapi.ErrNotFound) {
		t.Errorf("Probe(aborted 2.0.0) error = %v; want ErrNotFound", err)
	}
}

func defaultVersion(t *testing.T, r *Runtime, name string) string {
	t.Helper()
	for _, e := range r.Index() {
		if e.Name == name && e.Default {
			return e.Version
		}
	}
	return ""
}

// TestDatatypes sends every supported input datatype through HTTP, flat and nested.
func TestDatatypes(t *testing.T) {
	r := newTestRuntime(t)
	path := filepath.Join(t.TempDir(), "echo.onnx")
	if err := os.WriteFile(path, modelgen.Echo(), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatalf("Load(echo): %v", err)
	}
	multitype := filepath.Join(filepath.Dir(irisModel(t)), "example_multitype.onnx")
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "multitype", Version: "1.0.0", Path: multitype}); err != nil {
		t.Fatalf("Load(multitype): %v", err)
	}
	inputs := func(i32, flag, bytes, f64 string) string {
		return `{"inputs":[{"name":"i32","datatype":"INT32","shape":[2],"data":` + i32 + `},` +
			`{"name":"flag","datatype":"BOOL","shape":[2],"data":` + flag + `},` +
			`{"name":"bytes","datatype":"UINT8","shape":[2,2],"data":` + bytes + `},` +
			`{"name":"f64","datatype":"FP64","shape":[2,2],"data":` + f64 + `}]}`
	}
	runHTTPCases(t, r.Handler(), []httpCase{
		{"all types", "POST", "/v2/models/echo/infer", inputs("[-2147483648,2147483647]", "[true,false]", "[[0,255],[7,8]]", "[[0.1,-2.5e300],[3,4]]"), 200,
			`{"name":"i32_out","datatype":"INT32","shape":[2],"data":[-2147483648,2147483647]},` +
				`{"name":"not_flag","datatype":"BOOL","shape":[2],"data":[false,true]},` +
				`{"name":"bytes_out","datatype":"UINT8","shape":[2,2],"data":[0,255,7,8]},` +
				`{"name":"f64_out","datatype":"FP64","shape":[2,2],"data":[0.1,-2.5e+300,3,4]}`},
		{"int32 overflow", "POST", "/v2/models/echo/infer", inputs("[2147483648,0]", "[true,false]", "[0,1,2,3]", "[1,2,3,4]"), 400, "range of INT32"},
		{"int fraction", "POST", "/v2/models/echo/infer", inputs("[1.5,0]", "[true,false]", "[0,1,2,3]", "[1,2,3,4]"), 400, "range of INT32"},
		{"uint8 overflow", "POST", "/v2/models/echo/infer", inputs("[1,0]", "[true,false]", "[0,1,2,256]", "[1,2,3,4]"), 400, "range of UINT8"},
		{"uint8 negative", "POST", "/v2/models/echo/infer", inputs("[1,0]", "[true,false]", "[0,1,2,-1]", "[1,2,3,4]"), 400, "range of UINT8"},
		{"bool as number", "POST", "/v2/models/echo/infer", inputs("[1,0]", "[1,0]", "[0,1,2,3]", "[1,2,3,4]"), 400, "not a BOOL"},
		{"NaN literal", "POST", "/v2/models/echo/infer", inputs("[1,0]", "[true,false]", "[0,1,2,3]", "[NaN,2,3,4]"), 400, "request body"},
		{"multitype", "POST", "/v2/models/multitype/infer",
			`{"inputs":[{"name":"InputA","datatype":"UINT8","shape":[1,1,1],"data":[10]},{"name":"InputB","datatype":"FP64","shape":[1,2,2],"data":[[[0.5,1],[60,100]]]}]}`,
			200, `{"name":"OutputA","datatype":"INT16","shape":[1,2,2],"data":[-507,-502,88,488]},{"name":"OutputB","datatype":"INT64","shape":[1,1,1],"data":[12340]}`},
	})
}

func TestMetadataIntrospection(t *testing.T) {
	r := newTestRuntime(t)
	dir := vibrationDir(t)
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "vibration", Version: "1.1.0", Path: filepath.Join(dir, "models", "vibration", "1.1.0.onnx")}); err != nil {
		t.Fatal(err)
	}
	info, err := r.Metadata("vibration", "")
	if err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(struct{ Inputs, Outputs []runtimeapi.TensorMeta }{info.Inputs, info.Outputs})
	want := `{"Inputs":[{"name":"x","datatype":"FP32","shape":[-1,4]}],"Outputs":[{"name":"probabilities","datatype":"FP32","shape":[-1,2]},{"name":"label","datatype":"INT64","shape":[-1]}]}`
	if string(got) != want {
		t.Errorf("Metadata(vibration) = %s; want %s", got, want)
	}
	if !strings.HasPrefix(info.Platform, "onnxruntime") {
		t.Errorf("platform = %q", info.Platform)
	}
}
