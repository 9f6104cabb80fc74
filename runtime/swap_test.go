package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

func controlClient(tb testing.TB, r *Runtime) (*runtimeapi.Client, func()) {
	srv := httptest.NewServer(r.ControlHandler())
	return &runtimeapi.Client{BaseURL: srv.URL}, srv.Close
}

// TestSwapUnderLoad swaps the default version back and forth while two clients send
// unversioned requests continuously for 2 s (300 ms with -short); no request may fail.
func TestSwapUnderLoad(t *testing.T) {
	r := newTestRuntime(t)
	srv := httptest.NewServer(r.ControlHandler())
	defer srv.Close()
	c := &runtimeapi.Client{BaseURL: srv.URL}
	ctx := context.Background()
	dir := vibrationDir(t)
	model := func(v string) string { return filepath.Join(dir, "models", "vibration", v+".onnx") }
	if _, err := c.Load(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: "1.0.0", Path: model("1.0.0")}); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"inputs":[{"name":"x","datatype":"FP32","shape":[1,4],"data":[2.1,3.0,3.1,44]}]}`)

	loadFor := 2 * time.Second
	if testing.Short() {
		loadFor = 300 * time.Millisecond
	}
	var (
		stop     atomic.Bool
		ok, fail atomic.Int64
		mu       sync.Mutex
		served   = map[string]int{}
		firstErr error
		wg       sync.WaitGroup
	)
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				version, err := post(srv.URL+"/v2/models/vibration/infer", body)
				mu.Lock()
				if err != nil {
					fail.Add(1)
					if firstErr == nil {
						firstErr = err
					}
				} else {
					ok.Add(1)
					served[version]++
				}
				mu.Unlock()
			}
		}()
	}
	// Swap 1.0.0 → 1.1.0 → 1.0.0 → … until the load period is over.
	cur, next := "1.0.0", "1.1.0"
	swaps := 0
	deadline := time.Now().Add(loadFor)
	for time.Now().Before(deadline) || swaps < 2 {
		if _, err := c.Load(ctx, runtimeapi.LoadRequest{Name: "vibration", Version: next, Path: model(next)}); err != nil {
			t.Fatalf("swap %d: Load(%s): %v", swaps, next, err)
		}
		if err := c.Promote(ctx, "vibration", next, cur); err != nil {
			t.Fatalf("swap %d: Promote(%s, old %s): %v", swaps, next, cur, err)
		}
		cur, next = next, cur
		swaps++
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d swaps, %d requests ok, %d failed, served by %v", swaps, ok.Load(), fail.Load(), served)
	if fail.Load() != 0 {
		t.Errorf("%d of %d requests failed during swaps; first: %v", fail.Load(), ok.Load()+fail.Load(), firstErr)
	}
	if len(served) != 2 {
		t.Errorf("requests were served by %v; want both versions", served)
	}
}

func post(url string, body []byte) (version string, err error) {
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("status %d: %s", resp.StatusCode, b)
	}
	var ir runtimeapi.InferResponse
	if err := json.Unmarshal(b, &ir); err != nil {
		return "", err
	}
	return ir.ModelVersion, nil
}

// TestUnloadWaitsForInFlight holds a request's reference on a version across its
// Unload: the version disappears for new requests at once, the held request still runs
// on its session, and Unload returns only after that request is done.
func TestUnloadWaitsForInFlight(t *testing.T) {
	r := newTestRuntime(t)
	loadIris(t, r, "1.0.0")
	loadIris(t, r, "1.1.0")
	m, err := r.acquire("iris", "1.1.0") // an in-flight request on 1.1.0
	if err != nil {
		t.Fatal(err)
	}
	unloaded := make(chan error, 1)
	go func() { unloaded <- r.Unload(context.Background(), "iris", "1.1.0") }()
	for len(r.Index()) != 1 { // wait until 1.1.0 is out of the registry
		runtime.Gosched()
	}
	if _, err := r.Infer(context.Background(), "iris", "1.1.0", []Input{NewInput("X", runtimeapi.FP32, []int64{1, 4}, []float64{5.1, 3.5, 1.4, 0.2})}, nil); !errors.Is(err, runtimeapi.ErrNotFound) {
		t.Errorf("new request to an unloading version: error %v; want ErrNotFound", err)
	}
	select {
	case err := <-unloaded:
		t.Fatalf("Unload returned (%v) while a request still held the version", err)
	default:
	}
	outs, err := m.run(context.Background(), []Input{NewInput("X", runtimeapi.FP32, []int64{1, 4}, []float64{7.7, 2.8, 6.7, 2.0})}, nil, false)
	if err != nil || outs[0].intAt(outs[0].Datatype, 0) != 2 {
		t.Fatalf("in-flight request on the unloading version = %v, %v; want label 2", outs, err)
	}
	m.inflight.Done()
	if err := <-unloaded; err != nil {
		t.Errorf("Unload: %v", err)
	}

	// An Unload whose context ends first reports it; the session closes later.
	m, _ = r.acquire("iris", "1.0.0")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := r.Unload(ctx, "iris", "1.0.0"); !errors.Is(err, context.Canceled) {
		t.Errorf("Unload(cancelled ctx) = %v; want context.Canceled", err)
	}
	m.inflight.Done()
	if err := r.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Infer(context.Background(), "iris", "", nil, nil); !errors.Is(err, runtimeapi.ErrUnavailable) {
		t.Errorf("Infer after Close: %v; want ErrUnavailable", err)
	}
}
