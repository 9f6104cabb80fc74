package main

import (
	"context"
	"flag"

	"github.com/edgeward/edgeward/lab/demo"
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
