// Command modelgen writes the generated vibration-anomaly models and probe sets
// (models/vibration/<v>.onnx, probes/vibration/<v>.json) under a directory, for demos
// and end-to-end tests: go run ./runtime/modelgen/cmd/modelgen -out DIR
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/edgeward/edgeward/runtime/modelgen"
)

func main() {
	out := flag.String("out", ".", "directory to write models/ and probes/ into")
	flag.Parse()
	if err := modelgen.WriteFiles(*out); err != nil {
		fmt.Fprintln(os.Stderr, "modelgen:", err)
		os.Exit(1)
	}
	for _, s := range modelgen.Specs() {
		fmt.Printf("%s/models/vibration/%s.onnx\n", *out, s.Version)
	}
}
