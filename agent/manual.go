package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

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
	// The command runs in a process group of its own, killed whole at the deadline:
	// killing the shell alone left its children running, holding the output pipe, and
	// Run waited for them (the agent's round with it). WaitDelay bounds that wait too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	out := &tailBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(out.String())
		if len(msg) > 200 {
			msg = msg[len(msg)-200:]
		}
		return updater.Verdict{Reason: fmt.Sprintf("judge: %v: %s", err, msg)}
	}
	return updater.Verdict{Pass: true}
}

// tailBuffer keeps the last max bytes written to it (the judge reports the last 200):
// a chatty command does not grow the agent's memory. Not safe for concurrent writes;
// exec.Cmd calls one writer given as both Stdout and Stderr from one goroutine.
type tailBuffer struct {
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b = append(t.b, p...)
	if len(t.b) > 2*t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	if len(t.b) > t.max {
		return string(t.b[len(t.b)-t.max:])
	}
	return string(t.b)
}
