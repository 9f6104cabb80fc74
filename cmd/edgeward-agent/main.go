// Command edgeward-agent is Edgeward's device agent: it verifies updates with TUF, installs
// them into A/B slots, runs their trial, commits or rolls back, and reports.
//
// Usage:
//
//	edgeward-agent tuf-client [--metadata-dir DIR] [--metadata-url URL] [--target-name PATH]...
//	                          [--target-base-url URL] [--target-dir DIR] init ROOT | refresh | download
//	edgeward-agent enroll   --state-dir DIR --root FILE --metadata-url URL [--targets-url URL]
//	edgeward-agent install  --state-dir DIR --kind model|runtime --target PATH
//	edgeward-agent trial    --state-dir DIR --kind KIND [--timeout 10m]
//	edgeward-agent confirm  --state-dir DIR --kind KIND (--pass | --fail REASON)
//	edgeward-agent recover  --state-dir DIR
//	edgeward-agent status   --state-dir DIR
//	edgeward-agent run      --state-dir DIR [--want KIND=PATH]... [--judge-cmd CMD] [--once]
//	edgeward-agent device   --state-dir DIR --server URL [--labels k=v,...] [--listen ADDR] [--grpc-listen ADDR] [--once]
//
// The log goes to stderr in one format, text unless $EDGEWARD_LOG_FORMAT=json; the
// runtimes the agent starts write theirs in the same format.
//
// Every command that opens the state first recovers it, so a command after a crash
// continues from the persisted transaction.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/edgeward/edgeward/internal/buildinfo"
	"github.com/edgeward/edgeward/internal/completion"
	"github.com/edgeward/edgeward/internal/logging"
	"github.com/edgeward/edgeward/internal/tlshint"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

const usage = `usage: edgeward-agent <command> [flags]

commands:
  tuf-client  the tuf-conformance client-under-test protocol (init, refresh, download)
  enroll      pin the TUF root and the repository URLs in the state directory
  install     download, verify and stage a target into the inactive slot
  trial       start the trial of the staged version
  confirm     end the trial: --pass commits, --fail REASON rolls back
  recover     recover the state after a restart (resume, roll back expired trials)
  run         the main loop: check in, install, trial, commit or roll back, report
  device      the whole device: TPM enrollment, attested check-ins with the server,
              its inference runtime, probe-gated commits (after enroll --tpm)
  status      show slots, versions, floors and the transaction in progress
  version     print the version, commit and Go version (also --version)
  completion  print a shell completion script: completion bash|zsh

every command prints its flags with -h or --help
`

// commands are the agent's commands, for shell completion (keep in step with usage).
var commands = []string{"tuf-client", "enroll", "install", "trial", "confirm", "recover", "run", "device", "status", "version", "completion"}

// run is main without the process: it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	// One format for the agent's log and its runtimes': $EDGEWARD_LOG_FORMAT, text
	// (for people) unless set to json (for a collector).
	logFormat := os.Getenv("EDGEWARD_LOG_FORMAT")
	if logFormat == "" {
		logFormat = logging.Text
	}
	log, err := logging.New(stderr, logFormat)
	if err != nil {
		fmt.Fprintf(stderr, "edgeward-agent: $EDGEWARD_LOG_FORMAT: %v\n", err)
		return 2
	}
	switch args[0] {
	case "tuf-client":
		err = tufClient(ctx, args[1:], stdout, log)
	case "run":
		err = runAgent(ctx, args[1:], stdout, log)
	case "device":
		err = runDevice(ctx, args[1:], stdout, log, logFormat)
	case "enroll", "install", "trial", "confirm", "recover", "status":
		err = slotCommand(ctx, args[0], args[1:], stdout, log)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version", "--version", "-version":
		fmt.Fprintln(stdout, buildinfo.Read().Line("edgeward-agent"))
		return 0
	case "completion":
		shell := ""
		if len(args) == 2 {
			shell = args[1]
		}
		if err := completion.Write(stdout, shell, "edgeward-agent", commands); err != nil {
			fmt.Fprintf(stderr, "edgeward-agent completion: %v (e.g. source <(edgeward-agent completion bash))\n", err)
			return 2
		}
		return 0
	default:
		fmt.Fprintf(stderr, "edgeward-agent: unknown command %q\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, errHelp) {
		return 0
	}
	if err != nil {
		err = tlshint.Explain(err, "trust it with --server-ca FILE (the server's DIR/tls/server.pem, or the CA that issued its certificate)")
		fmt.Fprintf(stderr, "edgeward-agent %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errHelp ends a command whose flags asked for help (printed): exit status 0.
var errHelp = errors.New("help printed")

// parseFlags parses a command's flags. Parse errors are returned (and printed once, by
// run); -h or --help prints the command's flags with their help to stdout and returns
// errHelp.
func parseFlags(fs *flag.FlagSet, args []string, stdout io.Writer) error {
	fs.SetOutput(io.Discard)
	err := fs.Parse(args)
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(stdout, "usage: edgeward-agent %s [flags]\n\nflags:\n", fs.Name())
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return errHelp
	}
	return err
}
