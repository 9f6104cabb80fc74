package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	goruntime "runtime"
	"strings"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
	"github.com/edgeward/edgeward/updater"
)

// agentVersion is reported at check-in.
const agentVersion = "0.1.0"

// runDevice is the whole device: it enrolls its TPM with the server's attestation CA,
// starts and supervises its inference runtime, loads and measures the committed model,
// and runs the main loop with TPM-attested check-ins and probe-gated trials.
// Prerequisite: 'edgeward-agent enroll' pinned the TUF root, the repository URLs and the
// TPM in the state directory.
func runDevice(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	var (
		stateDir = fs.String("state-dir", agent.DefaultStateDir, "agent state directory (after 'edgeward-agent enroll')")
		server   = fs.String("server", "", "server base URL (device API), e.g. http://127.0.0.1:8440")
		labels   = fs.String("labels", "", "labels k=v,k=v the device enrolls with")
		hardware = fs.String("hardware", hardwareClass(), "hardware class reported to the server")
		rtBin    = fs.String("runtime", "", "edgeward-runtime binary to start (default: next to this binary)")
		listen   = fs.String("listen", "127.0.0.1:8080", "public inference address of the runtime")
		rtURL    = fs.String("runtime-control", "", "use an already running runtime's control API (URL) instead of starting one")
		interval = fs.Duration("interval", 30*time.Second, "check-in interval (jittered ±20%)")
		trial    = fs.Duration("trial-timeout", 2*time.Minute, "how long a trial may take")
		once     = fs.Bool("once", false, "run one round and exit")
		pcr      = fs.Int("pcr", 16, "measurement PCR: 16 in development, 23 on production devices (both resettable, so the log is per boot)")
		serverCA = fs.String("server-ca", "", "PEM certificate(s) to trust for an https --server (its DIR/tls/server.pem); with a device CA on the server, check-ins use mTLS with a TPM-backed device certificate")
	)
	if err := parseFlags(fs, args, stdout); err != nil {
		return err
	}
	if *server == "" {
		return errors.New("--server is required")
	}
	lbl, err := parseLabels(*labels)
	if err != nil {
		return err
	}
	st, err := agent.OpenState(ctx, agent.StateConfig{Dir: agent.StateDir(*stateDir), Logger: log})
	if err != nil {
		return err
	}
	defer st.Close()
	if st.TPM == nil {
		return errors.New("the device needs a TPM: run 'edgeward-agent enroll --tpm URL' first")
	}
	if err := st.Slots.Recover(ctx); err != nil {
		return err
	}

	httpc, err := serverClient(*serverCA)
	if err != nil {
		return err
	}
	// What the slots committed serves first, from the measured bytes, whether or not the
	// server is reachable: an edge device that restarts during an outage keeps serving.
	mlog, err := agent.OpenMeasurementLog(ctx, agent.StateDir(*stateDir).Measurements(), st.TPM, *pcr)
	if err != nil {
		return err
	}

	judge := &agent.RuntimeJudge{TUF: st.TUF, Log: mlog, WorkDir: *stateDir, Logger: log, Slots: st.Slots}
	if *rtURL != "" {
		judge.Runtime = &runtimeapi.Client{BaseURL: *rtURL}
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
	if err := judge.LoadCommitted(ctx, st.Slots); err != nil {
		return err
	}
	ak, api, err := connect(ctx, *server, httpc, st.TPM, *interval, !*once, log)
	if err != nil {
		return err
	}
	link := &agent.Attested{API: api, TPM: st.TPM, AK: ak, Log: mlog, Labels: lbl,
		Hardware: *hardware, AgentVersion: agentVersion, Logger: log, Slots: st.Slots, Extra: judge.DriftAttrs}
	o, err := updater.OpenOutbox(ctx, st.Dir.Outbox())
	if err != nil {
		return err
	}
	defer o.Close()
	a, err := updater.NewAgent(updater.AgentConfig{DeviceID: link.DeviceID(), TUF: st.TUF, Slots: st.Slots, Director: link,
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

func waitReady(ctx context.Context, rc *runtimeapi.Client) error {
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

// serverClient trusts the PEM certificates in caFile for an https server ("" keeps the
// system roots).
func serverClient(caFile string) (*http.Client, error) {
	if caFile == "" {
		return http.DefaultClient, nil
	}
	pemBytes, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--server-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("--server-ca %s: no PEM certificates", caFile)
	}
	return &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}}, nil
}

// connect enrolls the TPM with the server's attestation CA (EK certificate → AK
// certificate) and returns the device API client, retrying while the server cannot be
// reached or refuses (backoff up to interval) until ctx ends; without retry it returns
// the first error.
func connect(ctx context.Context, server string, httpc *http.Client, tpm *attest.TPM, interval time.Duration, retry bool, log *slog.Logger) (*attest.AKCertificate, *deviceapi.Client, error) {
	wait := time.Second
	for {
		ak, err := (&attest.EnrollClient{URL: strings.TrimRight(server, "/") + wire.PathAttest, HTTP: httpc}).Enroll(ctx, tpm)
		if err != nil {
			err = fmt.Errorf("enroll with the attestation CA: %w", err)
		} else {
			log.Info("enrolled", "device", ak.PermanentIdentifier)
			api, derr := deviceClient(ctx, server, httpc, tpm, ak, log)
			if derr == nil {
				return ak, api, nil
			}
			err = fmt.Errorf("device certificate: %w", derr)
		}
		if !retry {
			return nil, nil, err
		}
		log.Warn("cannot connect to the server yet; serving what is committed, retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, max(interval, time.Second))
	}
}

// deviceClient returns the device API client. When the server names a device CA, the
// device obtains a certificate for a TPM-resident key (ACME device-attest-01) and
// every check-in uses it for mTLS; otherwise the TPM quote alone authenticates it.
func deviceClient(ctx context.Context, server string, httpc *http.Client, tpm *attest.TPM, ak *attest.AKCertificate, log *slog.Logger) (*deviceapi.Client, error) {
	plain := &deviceapi.Client{BaseURL: server, HTTP: httpc}
	info, err := plain.DeviceCA(ctx)
	var apiErr *deviceapi.Error
	if errors.As(err, &apiErr) && apiErr.Status == http.StatusNotFound {
		return plain, nil
	}
	if err != nil {
		return nil, fmt.Errorf("device CA: %w", err)
	}
	dc, err := agent.NewDeviceCert(ctx, tpm, ak, info, "edgeward-device-tls")
	if err != nil {
		return nil, err
	}
	log.Info("device certificate", "subject", dc.Leaf().Subject.CommonName, "not_after", dc.Leaf().NotAfter)
	tr, ok := httpc.Transport.(*http.Transport)
	if !ok || tr == nil {
		tr = http.DefaultTransport.(*http.Transport)
	}
	tr = tr.Clone()
	if tr.TLSClientConfig == nil {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tr.TLSClientConfig.GetClientCertificate = dc.GetClientCertificate
	return &deviceapi.Client{BaseURL: server, HTTP: &http.Client{Timeout: 2 * time.Minute, Transport: tr}}, nil
}
