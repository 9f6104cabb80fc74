// Package inference is the generated Go code of grpc_predict_v2.proto, the Open
// Inference Protocol's gRPC API (KServe's inference.GRPCInferenceService), which
// edgeward-runtime serves on --grpc-listen.
package inference

// protoc is Debian's protobuf-compiler; the plugins are built from the versions go.mod
// pins (google.golang.org/protobuf, google.golang.org/grpc/cmd/protoc-gen-go-grpc).
//go:generate sh -c "d=$(mktemp -d) && go build -o $d/protoc-gen-go google.golang.org/protobuf/cmd/protoc-gen-go && go build -o $d/protoc-gen-go-grpc google.golang.org/grpc/cmd/protoc-gen-go-grpc && protoc --plugin=protoc-gen-go=$d/protoc-gen-go --plugin=protoc-gen-go-grpc=$d/protoc-gen-go-grpc --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative grpc_predict_v2.proto; rc=$?; rm -rf $d; exit $rc"
