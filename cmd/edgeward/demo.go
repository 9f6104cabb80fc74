package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"github.com/edgeward/edgeward/lab/demo"
	"github.com/edgeward/edgeward/runtime/modelgen"
)

// cmdDemo runs the demonstration scenario (lab/demo). It stays a subcommand of edgeward,
// not a binary of its own: the lab starts this very executable as the server
// (`edgeward server`) and the auditor's CLI (`edgeward audit …`), so the demo and the
// binary it drives cannot drift apart, and the lab adds only itself and the ONNX model
// writer (runtime/modelgen, pure Go) to what the server already links.
func cmdDemo(ctx context.Context, env *cliEnv, args []string) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	cfg := demo.Config{Out: env.stdout}
	fs.StringVar(&cfg.Dir, "dir", "demo-data", "working folder (recreated; must be empty, absent, or a previous demo's)")
	fs.IntVar(&cfg.Devices, "devices", 5, "number of devices (at least 3)")
	fs.StringVar(&cfg.RuntimeVersion, "runtime-version", "1.24.3", "version under which the ONNX Runtime library ($ONNXRUNTIME_LIB) is published as a runtime update")
	fs.BoolVar(&cfg.Serve, "serve", false, "keep the server and the devices running after the scenario, until interrupted")
	fs.StringVar(&cfg.Listen, "listen", "", "server address (default: a free port on 127.0.0.1)")
	if _, err := parse(fs, args); err != nil {
		return err
	}
	return demo.Run(ctx, cfg)
}

// cmdDemoModels writes the demo's example models and probe sets, for trying Edgeward by
// hand (docs/WALKTHROUGH.md) without a model of one's own.
func cmdDemoModels(ctx context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet("demo models", env)
	out := fs.String("out", "models", "directory to write models/vibration/V.onnx and probes/vibration/V.json into")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return errors.New("usage: edgeward demo models [--out DIR]")
	}
	if err := modelgen.WriteFiles(*out); err != nil {
		return err
	}
	for _, s := range modelgen.Specs() {
		fmt.Fprintf(env.stdout, "%s/models/vibration/%s.onnx  %s/probes/vibration/%s.json\n", *out, s.Version, *out, s.Version)
	}
	fmt.Fprintln(env.stdout, "vibration 1.0.0 is good, 1.1.0 better, 2.0.0 degraded (its probe fails); input x: FP32 [N,4], output label")
	return nil
}
