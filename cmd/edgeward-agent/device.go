package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/runtime"
	"github.com/edgeward/edgeward/updater"
)

// agentVersion is reported at check-in.
const agentVersion = "0.1.0"

// runDevice is the whole device: it enrolls its TPM with the server's attestation CA,
// starts and supervises its inference runtime, loads and measures the committed model,
// and runs the main loop with TPM-attested check-ins and probe-gated trials.
// Prerequisite: 'edgeward-agent enroll' pinned the TUF root, the repository URLs and the
// TPM in the state directory.
func runDevice(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var (
		stateDir = fs.String("state-dir", "/var/lib/edgeward", "agent state directory (after 'edgeward-agent enroll')")
		server   = fs.String("server", "", "server base URL (device API), e.g. http://127.0.0.1:8440")
		labels   = fs.String("labels", "", "labels k=v,k=v the device enrolls with")
		hardware = fs.String("hardware", hardwareClass(), "hardware class reported to the server")
		rtBin    = fs.String("runtime", "", "edgeward-runtime binary to start (default: next to this binary)")
		listen   = fs.String("listen", "127.0.0.1:8080", "public inference address of the runtime")
		rtURL    = fs.String("runtime-control", "", "use an already running runtime's control API (URL) instead of starting one")
		interval = fs.Duration("interval", 30*time.Second, "check-in interval (jittered ±20%)")
		trial    = fs.Duration("trial-timeout", 2*time.Minute, "how long a trial may take")
		once     = fs.Bool("once", false, "run one round and exit")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *server == "" {
		return errors.New("--server is required")
	}
	lbl, err := parseLabels(*labels)
	if err != nil {
		return err
	}
	st, err := openState(ctx, *stateDir, &updater.Downloader{Logger: log}, log)
	if err != nil {
		return err
	}
	defer st.Close()
	if st.tpm == nil {
		return errors.New("the device needs a TPM: run 'edgeward-agent enroll --tpm URL' first")
	}
	if err := st.slots.Recover(ctx); err != nil {
		return err
	}

	ak, err := (&attest.EnrollClient{URL: strings.TrimRight(*server, "/") + deviceapi.PathAttest}).Enroll(ctx, st.tpm)
	if err != nil {
		return fmt.Errorf("enroll with the attestation CA: %w", err)
	}
	log.Info("enrolled", "device", ak.PermanentIdentifier)
	mlog, err := agent.OpenMeasurementLog(ctx, filepath.Join(*stateDir, "measurements.json"), st.tpm, 0)
	if err != nil {
		return err
	}

	judge := &agent.RuntimeJudge{TUF: st.tuf, Log: mlog, WorkDir: *stateDir, Logger: log, Slots: st.slots}
	if *rtURL != "" {
		judge.Runtime = &runtime.Client{BaseURL: *rtURL}
		if err := waitReady(ctx, judge.Runtime); err != nil {
			return err
		}
	} else {
		rts, err := supervisor(*rtBin, *listen, *stateDir, log)
		if err != nil {
			return err
		}
		defer rts.Close()
		judge.Runtimes = rts
	}
	if err := judge.LoadCommitted(ctx, st.slots); err != nil {
		return err
	}
	link := &agent.Attested{API: &deviceapi.Client{BaseURL: *server}, TPM: st.tpm, AK: ak, Log: mlog, Labels: lbl,
		Hardware: *hardware, AgentVersion: agentVersion, Logger: log, Slots: st.slots}
	o, err := updater.OpenOutbox(ctx, filepath.Join(*stateDir, "outbox.db"))
	if err != nil {
		return err
	}
	defer o.Close()
	a, err := updater.NewAgent(updater.AgentConfig{DeviceID: link.DeviceID(), TUF: st.tuf, Slots: st.slots, Director: link,
		Judge: judge, Outbox: o, Sender: link, Interval: *interval, TrialTimeout: *trial, Logger: log})
	if err != nil {
		return err
	}
	if *once {
		return a.Step(ctx)
	}
	err = a.Run(ctx)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func hardwareClass() string {
	switch goruntime.GOARCH {
	case "amd64":
		return "x86_64"
	case "arm64":
		return "aarch64"
	}
	return goruntime.GOARCH
}

func parseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("label %q: want k=v", kv)
		}
		out[strings.TrimSpace(k)] = strings.TrimSpace(v)
	}
	return out, nil
}

// supervisor binds the public inference socket, which the agent keeps across runtime
// swaps and passes to every runtime process it starts (agent.Runtimes).
func supervisor(bin, listen, stateDir string, log *slog.Logger) (*agent.Runtimes, error) {
	if bin == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = filepath.Join(filepath.Dir(self), "edgeward-runtime")
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return nil, fmt.Errorf("public inference socket: %w", err)
	}
	return &agent.Runtimes{Binary: bin, Listener: ln.(*net.TCPListener), Dir: stateDir, Logger: log}, nil
}

func waitReady(ctx context.Context, rc *runtime.Client) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := rc.Index(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("runtime control API not reachable: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
