package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater"
)

// staticDirector wants the same targets at every check-in (until the device API exists,
// or for a device managed by hand).
type staticDirector map[artifact.Kind]string

func (d staticDirector) CheckIn(context.Context, map[artifact.Kind]updater.SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	out := make(map[artifact.Kind]wire.SlotDecision, len(d))
	for k, p := range d {
		out[k] = wire.SlotDecision{Kind: k, Action: wire.ActionInstall, Target: p}
	}
	return out, nil
}

// cmdJudge runs a shell command for each trial: exit status 0 is a pass. The command gets
// EDGEWARD_KIND, EDGEWARD_TARGET, EDGEWARD_VERSION and EDGEWARD_PAYLOAD; it is killed at
// the trial deadline.
type cmdJudge string

func (j cmdJudge) Judge(ctx context.Context, t updater.Trial) updater.Verdict {
	cmd := exec.CommandContext(ctx, "/bin/sh", "-c", string(j))
	cmd.Env = append(os.Environ(), "EDGEWARD_KIND="+string(t.Kind), "EDGEWARD_TARGET="+t.Target.Path,
		"EDGEWARD_VERSION="+t.Target.Version, "EDGEWARD_PAYLOAD="+t.Payload)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 200 {
			msg = msg[len(msg)-200:]
		}
		return updater.Verdict{Reason: fmt.Sprintf("judge: %v: %s", err, msg)}
	}
	return updater.Verdict{Pass: true}
}

type wants map[artifact.Kind]string

func (w wants) String() string { b, _ := json.Marshal(map[artifact.Kind]string(w)); return string(b) }
func (w wants) Set(s string) error {
	k, p, ok := strings.Cut(s, "=")
	if !ok {
		return errors.New("want KIND=TARGET_PATH")
	}
	kind, err := artifact.ParseKind(k)
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
		bundles  = fs.String("bundle-dir", "", "directory watched for offline bundles (metadata/, targets/, desired.json)")
		want     = wants{}
	)
	fs.Var(want, "want", "KIND=TARGET_PATH to install (repeatable)")
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	cfg := agent.Config{StateDir: agent.StateDir(*stateDir), Director: staticDirector(want), DeviceID: *deviceID,
		BundleDir: *bundles, Interval: *interval, TrialTimeout: *trial, Once: *once, Logger: log}
	if *judgeCmd != "" {
		cfg.Judge = cmdJudge(*judgeCmd)
	}
	return agent.Run(ctx, cfg)
}
