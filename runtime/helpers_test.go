package runtime

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// ortLib returns the ONNX Runtime library for tests: $ONNXRUNTIME_LIB, else the one
// `make deps` installs under the module root. When it is missing the test is skipped,
// or fails if EDGEWARD_REQUIRE_DEPS=1 (as in `make test`).
func ortLib(tb testing.TB) string {
	tb.Helper()
	p := os.Getenv("ONNXRUNTIME_LIB")
	if p == "" {
		p = filepath.Join(moduleRoot(tb), ".deps", "onnxruntime", "lib", "libonnxruntime.so.1")
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			tb.Fatalf("ONNX Runtime library: %v (run `make deps`)", err)
		}
		tb.Skipf("ONNX Runtime library missing (%v); run `make deps`", err)
	}
	return p
}

func moduleRoot(tb testing.TB) string {
	tb.Helper()
	dir, err := os.Getwd()
	if err != nil {
		tb.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			tb.Fatal("no go.mod above the test directory")
		}
		dir = parent
	}
}

// newTestRuntime returns a Runtime on the real ONNX Runtime, closed at the end of the test.
func newTestRuntime(tb testing.TB) *Runtime {
	tb.Helper()
	r, err := New(Config{LibraryPath: ortLib(tb)})
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { r.Close(context.Background()) })
	return r
}

var irisOnce struct {
	sync.Once
	path string
	err  error
}

// irisModel is the third-party scikit-learn random forest shipped in the onnxruntime_go
// module's test_data (trained on Iris; input X FP32 [N,4], output_label INT64 [N]).
func irisModel(tb testing.TB) string {
	tb.Helper()
	irisOnce.Do(func() {
		out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "github.com/yalue/onnxruntime_go").Output()
		if err != nil {
			irisOnce.err = err
			return
		}
		irisOnce.path = filepath.Join(strings.TrimSpace(string(out)), "test_data", "sklearn_randomforest.onnx")
		_, irisOnce.err = os.Stat(irisOnce.path)
	})
	if irisOnce.err != nil {
		tb.Fatalf("iris model from the onnxruntime_go module: %v", irisOnce.err)
	}
	return irisOnce.path
}

func readProbeSet(tb testing.TB, path string) *runtimeapi.ProbeSet {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var ps runtimeapi.ProbeSet
	if err := json.Unmarshal(b, &ps); err != nil {
		tb.Fatalf("%s: %v", path, err)
	}
	return &ps
}

func loadIris(tb testing.TB, r *Runtime, version string) runtimeapi.ModelInfo {
	tb.Helper()
	info, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "iris", Version: version, Path: irisModel(tb)})
	if err != nil {
		tb.Fatalf("Load(iris %s): %v", version, err)
	}
	return info
}

// values is a tensor's elements widened by kind, for comparisons in tests: F for
// floating-point datatypes, I for signed integers, U for unsigned, B for BOOL, S for BYTES.
type values struct {
	F []float64
	I []int64
	U []uint64
	B []bool
	S []string
}

func widen(dt runtimeapi.Datatype, td *tensorData) values {
	var v values
	for i := range td.n {
		switch dt {
		case runtimeapi.FP16, runtimeapi.BF16, runtimeapi.FP32, runtimeapi.FP64:
			v.F = append(v.F, td.float(dt, i))
		case runtimeapi.INT8, runtimeapi.INT16, runtimeapi.INT32, runtimeapi.INT64:
			v.I = append(v.I, td.intAt(dt, i))
		case runtimeapi.UINT8, runtimeapi.UINT16, runtimeapi.UINT32, runtimeapi.UINT64:
			v.U = append(v.U, uint64(td.intAt(dt, i)))
		case runtimeapi.BOOL:
			v.B = append(v.B, td.raw[i] == 1)
		case runtimeapi.BYTES:
			v.S = append(v.S, td.strs[i])
		}
	}
	return v
}
