package agent

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater"
)

// Static is an updater.Director for a device managed by hand (Config without a Server):
// it wants the same target paths at every check-in, with the targets' own gates.
type Static map[artifact.Kind]string

// CheckIn implements updater.Director.
func (d Static) CheckIn(context.Context, map[artifact.Kind]updater.SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	out := make(map[artifact.Kind]wire.SlotDecision, len(d))
	for k, p := range d {
		out[k] = wire.SlotDecision{Kind: k, Action: wire.ActionInstall, Target: p}
	}
	return out, nil
}

// CommandJudge is an updater.Judge that runs a shell command (/bin/sh -c) for each
// trial: exit status 0 is a pass. The command gets EDGEWARD_KIND, EDGEWARD_TARGET,
// EDGEWARD_VERSION and EDGEWARD_PAYLOAD (the staged file) in its environment; it is
// killed at the trial deadline. A failure's reason ends with the last 200 bytes of its
// output.
type CommandJudge string

// Judge implements updater.Judge.
func (j CommandJudge) Judge(ctx context.Context, t updater.Trial) updater.Verdict {
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
