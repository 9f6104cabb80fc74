// Command httpfloor is the transport floor of the inference benchmark: a Go net/http
// server in its own process that reads an infer request and answers a canned response
// without decoding it or running a model. Its latency is what loopback HTTP between two
// processes costs on the machine, which no inference server can go under.
//
// With grpc=PORT it is also the gRPC floor: the Open Inference Protocol's gRPC service on
// PORT, answering every ModelInfer with a canned response (the request is still
// unmarshalled by gRPC, as any server's is) and ServerReady with true.
//
// With FILE it is also the floor of the metadata-serving comparison: GET
// /metadata/timestamp.json answers FILE's bytes, read once, through http.ServeContent
// with a fixed ETag (so If-None-Match gets 304): Go's net/http without a handler's work.
//
//	httpfloor PORT [FILE] [grpc=PORT]
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/edgeward/edgeward/runtime/inference"
)

// grpcFloor answers ModelInfer with a canned one-label response.
type grpcFloor struct {
	inference.UnimplementedGRPCInferenceServiceServer
}

func (grpcFloor) ServerReady(context.Context, *inference.ServerReadyRequest) (*inference.ServerReadyResponse, error) {
	return &inference.ServerReadyResponse{Ready: true}, nil
}

func (grpcFloor) ModelInfer(context.Context, *inference.ModelInferRequest) (*inference.ModelInferResponse, error) {
	return &inference.ModelInferResponse{ModelName: "floor",
		Outputs:           []*inference.ModelInferResponse_InferOutputTensor{{Name: "label", Datatype: "INT64", Shape: []int64{1}}},
		RawOutputContents: [][]byte{make([]byte, 8)}}, nil
}

const canned = `{"model_name":"floor","outputs":[{"name":"label","datatype":"INT64","shape":[1],"data":[0]}]}`

func main() {
	var file, grpcPort string
	for _, a := range os.Args[min(2, len(os.Args)):] {
		if p, ok := strings.CutPrefix(a, "grpc="); ok {
			grpcPort = p
		} else {
			file = a
		}
	}
	if len(os.Args) < 2 || len(os.Args) > 4 {
		fmt.Fprintln(os.Stderr, "usage: httpfloor PORT [FILE] [grpc=PORT]")
		os.Exit(2)
	}
	if grpcPort != "" {
		ln, err := net.Listen("tcp", "127.0.0.1:"+grpcPort)
		if err != nil {
			fmt.Fprintln(os.Stderr, "httpfloor:", err)
			os.Exit(1)
		}
		s := grpc.NewServer(inference.ServerOptions()...)
		inference.RegisterGRPCInferenceServiceServer(s, grpcFloor{})
		go s.Serve(ln)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v2/health/ready", func(w http.ResponseWriter, r *http.Request) {})
	mux.HandleFunc("POST /v2/models/{model}/infer", func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, canned)
	})
	if file != "" {
		data, err := os.ReadFile(file)
		if err != nil {
			fmt.Fprintln(os.Stderr, "httpfloor:", err)
			os.Exit(1)
		}
		sum := sha256.Sum256(data)
		etag := `"` + hex.EncodeToString(sum[:16]) + `"`
		mod := time.Now()
		mux.HandleFunc("GET /metadata/timestamp.json", func(w http.ResponseWriter, r *http.Request) {
			h := w.Header()
			h.Set("Content-Type", "application/json")
			h.Set("ETag", etag)
			h.Set("Cache-Control", "no-cache")
			http.ServeContent(w, r, "", mod, bytes.NewReader(data))
		})
	}
	if err := http.ListenAndServe("127.0.0.1:"+os.Args[1], mux); err != nil {
		fmt.Fprintln(os.Stderr, "httpfloor:", err)
		os.Exit(1)
	}
}
