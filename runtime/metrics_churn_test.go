package runtime

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestMetricsFollowChurn: loads, default switches and unloads of two versions from two
// goroutines, with refused requests arriving all the while, leave the metrics exactly as
// the runtime is: a model_loaded gauge for each loaded version (default="true" for the
// default alone) and no series at all for a version that is gone. Before the series
// changed under the runtime's lock, a load or unload could update them after another one
// had already moved on (a gauge for an unloaded version, or a loaded version without its
// series), and a refused request could recreate the series of a version unloaded since.
func TestMetricsFollowChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("loads and unloads a model a few hundred times")
	}
	r := newTestRuntime(t)
	path := filepath.Join(t.TempDir(), "echo.onnx")
	if err := os.WriteFile(path, modelgen.Echo(), 0o644); err != nil {
		t.Fatal(err)
	}
	h := r.Handler()
	ctx := context.Background()
	versions := []string{"1.0.0", "2.0.0"}
	expected := func(err error) error {
		if err == nil || errors.Is(err, runtimeapi.ErrConflict) || errors.Is(err, runtimeapi.ErrNotFound) {
			return nil
		}
		return err
	}

	const rounds = 150
	stop := make(chan struct{})
	var refused sync.WaitGroup
	refused.Add(1)
	go func() { // requests refused before (or after) a version is taken
		defer refused.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			target := "/v2/models/echo/infer"
			if i%2 == 1 {
				target = "/v2/models/echo/versions/" + versions[i%4/2] + "/infer"
			}
			body := `{"inputs":[{"name":"nope","datatype":"FP32","shape":[1],"data":[1]}]}`
			if i%3 == 0 {
				body = `{"inputs":`
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("POST", target, strings.NewReader(body)))
			if rec.Code < 400 {
				t.Errorf("%s: %d for a request that cannot succeed", target, rec.Code)
				return
			}
		}
	}()
	var churn sync.WaitGroup
	errs := make(chan error, 2)
	for g := range 2 {
		churn.Add(1)
		go func() {
			defer churn.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range rounds {
				v := versions[rng.IntN(2)]
				var err error
				switch rng.IntN(3) {
				case 0:
					_, err = r.Load(ctx, runtimeapi.LoadRequest{Name: "echo", Version: v, Path: path, Default: rng.IntN(2) == 0})
				case 1:
					err = r.SetDefault("echo", v)
				case 2:
					err = r.Unload(ctx, "echo", v)
				}
				if err := expected(err); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	churn.Wait()
	close(stop)
	refused.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	scrape := func() string {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		return rec.Body.String()
	}
	echoSeries := func() []string {
		var lines []string
		for _, l := range strings.Split(scrape(), "\n") {
			if strings.Contains(l, `model="echo"`) {
				lines = append(lines, l)
			}
		}
		return lines
	}
	gauges := func() []string {
		var got []string
		for _, l := range echoSeries() {
			if strings.HasPrefix(l, "edgeward_runtime_model_loaded{") {
				got = append(got, l)
			}
		}
		sort.Strings(got)
		return got
	}
	var want []string
	for _, info := range r.Index() {
		if info.Name == "echo" {
			want = append(want, fmt.Sprintf(`edgeward_runtime_model_loaded{default="%t",model="echo",version="%s"} 1`, info.Default, info.Version))
		}
	}
	sort.Strings(want)
	if got := gauges(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("after the churn, model_loaded gauges:\n%s\nwant (what is loaded):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// Unload what is left (the default last); then nothing of echo may remain.
	for _, info := range r.Index() {
		if info.Name == "echo" && !info.Default {
			if err := r.Unload(ctx, "echo", info.Version); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, info := range r.Index() {
		if info.Name == "echo" {
			if err := r.Unload(ctx, "echo", info.Version); err != nil {
				t.Fatal(err)
			}
		}
	}
	if lines := echoSeries(); len(lines) > 0 {
		t.Errorf("series left for versions that are all unloaded:\n%s", strings.Join(lines, "\n"))
	}
	// A version loaded afterwards has its series (deleted by no late unload).
	if _, err := r.Load(ctx, runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	m := scrape()
	for _, want := range []string{
		`edgeward_runtime_model_loaded{default="true",model="echo",version="1.0.0"} 1`,
		`edgeward_runtime_requests_total{code="200",model="echo",version="1.0.0"} 0`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("reloaded version: no %s", want)
		}
	}
}

// TestLoadAsDefaultMovesTheMark: loading a version with LoadRequest.Default takes the
// default="true" mark from the previous default (it used to leave two versions marked).
func TestLoadAsDefaultMovesTheMark(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "iris", Version: "2.0.0", Path: irisModel(t), Default: true}); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`edgeward_runtime_model_loaded{default="false",model="iris",version="1.0.0"} 1`,
		`edgeward_runtime_model_loaded{default="true",model="iris",version="2.0.0"} 1`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("no %s in\n%s", want, rec.Body)
		}
	}
	if strings.Contains(rec.Body.String(), `edgeward_runtime_model_loaded{default="true",model="iris",version="1.0.0"}`) {
		t.Error("the previous default still marked default")
	}
}
