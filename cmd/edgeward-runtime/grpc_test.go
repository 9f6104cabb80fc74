package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// nodeClient returns the directory of the Node.js gRPC client (scripts/deps/30-grpc-node.sh
// installs its packages). It skips the test when Node.js or the packages are missing,
// or fails if EDGEWARD_REQUIRE_DEPS=1.
func nodeClient(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs(filepath.Join("testdata", "grpcnode"))
	_, errNode := exec.LookPath("node")
	_, errPkg := os.Stat(filepath.Join(dir, "node_modules", "@grpc", "grpc-js", "package.json"))
	if errNode != nil || errPkg != nil {
		if os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" {
			t.Fatalf("Node.js gRPC client: node %v, packages %v (run `make deps`)", errNode, errPkg)
		}
		t.Skipf("Node.js gRPC client missing (node %v, packages %v); run `make deps`", errNode, errPkg)
	}
	return dir
}

type nodeCallError struct {
	Code    int    `json:"code"`
	Details string `json:"details"`
}

type nodeInfer struct {
	Error        *nodeCallError `json:"error"`
	ModelName    string         `json:"model_name"`
	ModelVersion string         `json:"model_version"`
	ID           string         `json:"id"`
	Outputs      []struct {
		Name     string   `json:"name"`
		Datatype string   `json:"datatype"`
		Shape    []string `json:"shape"` // int64 as strings (proto-loader longs: String)
	} `json:"outputs"`
	Labels []int `json:"labels"`
}

type nodeResult struct {
	Live     struct{ Live bool }  `json:"live"`
	Ready    struct{ Ready bool } `json:"ready"`
	Server   struct{ Name, Version string }
	Metadata struct {
		Name     string
		Platform string
		Versions []string
		Inputs   []struct {
			Name, Datatype string
			Shape          []string
		}
	} `json:"metadata"`
	ModelReady   struct{ Ready bool }           `json:"model_ready"`
	UnknownReady struct{ Error *nodeCallError } `json:"unknown_ready"`
	Typed        nodeInfer                      `json:"typed"`
	Short        struct{ Error *nodeCallError } `json:"short"`
	Unknown      struct{ Error *nodeCallError } `json:"unknown"`
	Infer        nodeInfer                      `json:"infer"`
}

func runNode(t *testing.T, dir, addr, mode string) nodeResult {
	t.Helper()
	proto, _ := filepath.Abs(filepath.Join("..", "..", "runtime", "inference", "grpc_predict_v2.proto"))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "node", filepath.Join(dir, "client.js"), addr, proto, mode).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("node client: %v\n%s", err, stderr)
	}
	var res nodeResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node client output %s: %v", out, err)
	}
	return res
}

// TestGRPCNodeClient serves gRPC from the real edgeward-runtime binary (real ONNX
// Runtime, the Iris model) on an inherited socket (--grpc-listen-fd) and calls it from
// an independent client: Node's @grpc/grpc-js loading grpc_predict_v2.proto with
// @grpc/proto-loader. Health, metadata, raw and typed inference, refusals with their
// codes; then a model swap through the control API, seen by the client; then draining
// turns the server not ready.
func TestGRPCNodeClient(t *testing.T) {
	node := nodeClient(t)
	lib := ortLib(t)
	iris := irisModel(t)
	dir := t.TempDir()
	bin := buildRuntime(t, dir)
	var files []*os.File
	var addrs []string
	for range 2 { // public HTTP (fd 3), gRPC (fd 4)
		f, addr := listenFile(t)
		files, addrs = append(files, f), append(addrs, addr)
	}
	p := startFiles(t, bin, lib, files, filepath.Join(dir, "rt.sock"), "--grpc-listen-fd", "4", "--drain-grace", "5s", "--model", "iris=1.0.0="+iris)

	res := runNode(t, node, addrs[1], "all")
	if !res.Live.Live || !res.Ready.Ready || res.Server.Name != "edgeward-runtime" || res.Server.Version == "" {
		t.Errorf("live %v, ready %v, server %+v", res.Live, res.Ready, res.Server)
	}
	md := res.Metadata
	if md.Name != "iris" || md.Platform != "onnxruntime_onnx" || !slices.Equal(md.Versions, []string{"1.0.0"}) ||
		len(md.Inputs) != 1 || md.Inputs[0].Name != "X" || md.Inputs[0].Datatype != "FP32" || !slices.Equal(md.Inputs[0].Shape, []string{"-1", "4"}) {
		t.Errorf("ModelMetadata = %+v", md)
	}
	if !res.ModelReady.Ready || res.UnknownReady.Error == nil || res.UnknownReady.Error.Code != 5 {
		t.Errorf("ModelReady = %+v, unknown model %+v; want ready, NOT_FOUND (5)", res.ModelReady, res.UnknownReady)
	}
	if in := res.Infer; in.Error != nil || in.ModelName != "iris" || in.ModelVersion != "1.0.0" || in.ID != "node-1" ||
		!slices.Equal(in.Labels, []int{0, 2, 1}) || len(in.Outputs) != 1 || in.Outputs[0].Datatype != "INT64" || !slices.Equal(in.Outputs[0].Shape, []string{"3"}) {
		t.Errorf("ModelInfer(raw) = %+v; want iris 1.0.0 labels [0 2 1]", in)
	}
	if !slices.Equal(res.Typed.Labels, []int{2}) {
		t.Errorf("ModelInfer(fp32_contents) = %+v; want label 2", res.Typed)
	}
	if e := res.Short.Error; e == nil || e.Code != 3 {
		t.Errorf("ModelInfer(short raw) = %+v; want INVALID_ARGUMENT (3)", res.Short)
	}
	if e := res.Unknown.Error; e == nil || e.Code != 5 {
		t.Errorf("ModelInfer(unknown model) = %+v; want NOT_FOUND (5)", res.Unknown)
	}

	// A model swap, as the agent does it: load beside, make default, unload the old one.
	ctx := context.Background()
	if _, err := p.control.Load(ctx, runtimeapi.LoadRequest{Name: "iris", Version: "1.1.0", Path: iris}); err != nil {
		t.Fatal(err)
	}
	if err := p.control.Promote(ctx, "iris", "1.1.0", "1.0.0"); err != nil {
		t.Fatal(err)
	}
	if in := runNode(t, node, addrs[1], "infer").Infer; in.ModelVersion != "1.1.0" || !slices.Equal(in.Labels, []int{0, 2, 1}) {
		t.Errorf("after the swap ModelInfer = %+v; want 1.1.0", in)
	}

	// Draining: not ready any more while the grace period lasts.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// No fixed sleep: wait until the process has begun draining, which its HTTP
	// readiness shows (it keeps serving during the grace period), then ask gRPC.
	for deadline := time.Now().Add(4 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		code := 0
		resp, err := http.Get("http://" + addrs[0] + "/v2/health/ready")
		if err == nil {
			resp.Body.Close()
			if code = resp.StatusCode; code == http.StatusServiceUnavailable {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("HTTP readiness after SIGTERM: %d, %v; want 503 within the 5 s grace", code, err)
		}
	}
	if res := runNode(t, node, addrs[1], "ready"); res.Ready.Ready {
		t.Errorf("ServerReady while draining = true")
	}
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup's wait
		if err != nil {
			t.Errorf("runtime exit: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("runtime did not exit after SIGTERM")
	}
}
