package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
)

// wants is the repeatable --want KIND=TARGET_PATH.
type wants map[artifact.Kind]string

func (w wants) String() string { b, _ := json.Marshal(map[artifact.Kind]string(w)); return string(b) }
func (w wants) Set(s string) error {
	k, p, ok := strings.Cut(s, "=")
	if !ok {
		return errors.New("want KIND=TARGET_PATH")
	}
	kind, err := artifact.ParseSlotKind(k)
	if err != nil {
		return err
	}
	w[kind] = p
	return nil
}

// runAgent runs the agent's main loop.
func runAgent(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	var (
		stateDir = fs.String("state-dir", agent.DefaultStateDir, "agent state directory")
		deviceID = fs.String("device-id", "", "device ID in reports")
		judgeCmd = fs.String("judge-cmd", "", "shell command judging a trial (exit 0: pass); empty: trials never pass")
		interval = fs.Duration("interval", 5*time.Minute, "check-in interval (jittered ±20%)")
		trial    = fs.Duration("trial-timeout", 10*time.Minute, "how long a trial may take to pass")
		once     = fs.Bool("once", false, "run one round and exit")
		deltas   = fs.Bool("deltas", true, "build an update from a published delta against the committed version when there is one; false: always download full targets")
		bundles  = fs.String("bundle-dir", "", "directory watched for offline bundles (metadata/, targets/, desired.json)")
		want     = wants{}
	)
	fs.Var(want, "want", "KIND=TARGET_PATH to install (repeatable)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg := agent.Config{StateDir: agent.StateDir(*stateDir), Director: agent.Static(want), DeviceID: *deviceID,
		BundleDir: *bundles, Interval: *interval, TrialTimeout: *trial, NoDeltas: !*deltas, Once: *once, Logger: log}
	if *judgeCmd != "" {
		cfg.Judge = agent.CommandJudge(*judgeCmd)
	}
	return agent.Run(ctx, cfg)
}
