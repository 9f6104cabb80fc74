package main

import (
	"context"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/edgeward/edgeward/agent"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/checkpoint"
	"golang.org/x/mod/sumdb/note"
)

// runDevice is the whole device (agent.Run with a server): it serves what its slots
// committed, enrolls its TPM with the server's attestation CA, and runs the main loop
// with TPM-attested check-ins and probe-gated trials. Prerequisite: 'edgeward-agent
// enroll' pinned the TUF root, the repository URLs and the TPM in the state directory.
func runDevice(ctx context.Context, args []string, stdout io.Writer, log *slog.Logger, logFormat string) error {
	fs := flag.NewFlagSet("device", flag.ContinueOnError)
	var (
		stateDir = fs.String("state-dir", agent.DefaultStateDir, "agent state directory (after 'edgeward-agent enroll')")
		server   = fs.String("server", "", "server base URL (device API), e.g. http://127.0.0.1:8440")
		labels   = fs.String("labels", "", "labels k=v,k=v the device enrolls with")
		hardware = fs.String("hardware", artifact.HostHardware(), "hardware class reported to the server")
		rtBin    = fs.String("runtime", "", "edgeward-runtime binary to start (default: next to this binary)")
		listen   = fs.String("listen", "127.0.0.1:8080", "public inference address of the runtime")
		grpcAddr = fs.String("grpc-listen", "", "public gRPC inference address of the runtime (the Open Inference Protocol's inference.GRPCInferenceService), e.g. 127.0.0.1:8001; empty: no gRPC")
		rtURL    = fs.String("runtime-control", "", "use an already running runtime's control API (URL) instead of starting one")
		interval = fs.Duration("interval", 30*time.Second, "check-in interval (jittered ±20%)")
		trial    = fs.Duration("trial-timeout", 2*time.Minute, "how long a trial may take")
		ckpt     = fs.Int64("checkpoint-bytes", 0, "a durable download checkpoint every N bytes (0: every 64 MiB, at most once a second)")
		once     = fs.Bool("once", false, "run one round and exit")
		pcr      = fs.Int("pcr", 16, "measurement PCR: 16 in development, 23 on production devices (both resettable, so the log is per boot)")
		bootLog  = fs.String("boot-log", "", "TCG boot event log sent with every check-in, the quote then covering PCRs 0-7 (measured boot); default: "+agent.DefaultBootLog+" with a hardware TPM, none with a simulator; 'none': never")
		imaLog   = fs.String("ima-log", "", "IMA measurement list (binary, SHA-256 bank) sent with every check-in, the quote then covering PCR 10 (runtime integrity); default: "+agent.DefaultIMALog+" with a hardware TPM, none with a simulator; 'none': never")
		auditKey = fs.String("audit-key", "", "the server's audit log verifier key ('edgeward audit pubkey'), inline or a file: the device then witnesses the log and refuses answers whose checkpoint does not extend the last one it verified")
		deltas   = fs.Bool("deltas", true, "build an update from a published delta against the committed version when there is one (falling back to the full target on any failure); false: always download full targets")
		serverCA = fs.String("server-ca", "", "PEM certificate(s) to trust for an https --server (its DIR/tls/server.pem) and for https metadata and targets URLs; with a device CA on the server, check-ins use mTLS with a TPM-backed device certificate")
	)
	var auditWitness stringList
	fs.Var(&auditWitness, "audit-witness", "with --audit-key: a witness's verifier key, inline or a file (repeatable); with --audit-quorum the device accepts only checkpoints cosigned by that many of them")
	auditQuorum := fs.Int("audit-quorum", 0, "with --audit-witness: how many of the witnesses must have cosigned a checkpoint for the device to accept it (0: none)")
	auditMaxAge := fs.Duration("audit-max-age", 0, "with --audit-quorum: refuse the server's answers while its audit checkpoint was cosigned by the quorum longer ago than this (a log rolled back or frozen); the server records at least every timestamp renewal (12h by default), so e.g. 36h; 0: no bound")
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
	roots, err := readRoots(*serverCA)
	if err != nil {
		return err
	}
	var ak note.Verifier
	if *auditKey != "" {
		if ak, err = readAuditKey(*auditKey); err != nil {
			return fmt.Errorf("--audit-key: %w", err)
		}
	}
	var witnesses []note.Verifier
	for _, w := range auditWitness {
		v, err := readAuditKey(w)
		if err != nil {
			return fmt.Errorf("--audit-witness: %w", err)
		}
		witnesses = append(witnesses, v)
	}
	switch {
	case (len(witnesses) > 0 || *auditQuorum != 0) && ak == nil:
		return errors.New("--audit-witness and --audit-quorum need --audit-key")
	case *auditQuorum < 0 || *auditQuorum > len(witnesses):
		return fmt.Errorf("--audit-quorum %d: want between 0 and the %d witnesses given", *auditQuorum, len(witnesses))
	case *auditMaxAge < 0:
		return fmt.Errorf("--audit-max-age %s: want a positive duration", *auditMaxAge)
	case *auditMaxAge > 0 && *auditQuorum == 0:
		return errors.New("--audit-max-age needs --audit-witness and --audit-quorum: only the witnesses' cosignatures carry a time")
	}
	return agent.Run(ctx, agent.Config{StateDir: agent.StateDir(*stateDir), Server: *server, ServerRoots: roots, AuditKey: ak, AuditWitnesses: witnesses, AuditQuorum: *auditQuorum, AuditMaxAge: *auditMaxAge,
		Labels: lbl, Hardware: *hardware, PCR: *pcr, BootLog: *bootLog, IMALog: *imaLog, RuntimeBinary: *rtBin, Listen: *listen, GRPCListen: *grpcAddr, RuntimeControl: *rtURL,
		Interval: *interval, TrialTimeout: *trial, CheckpointBytes: *ckpt, NoDeltas: !*deltas, Once: *once, Logger: log, LogFormat: logFormat})
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

// readRoots reads the PEM certificates of --server-ca ("": nil, the system roots).
func readRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("--server-ca: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pemBytes) {
		return nil, fmt.Errorf("--server-ca %s: no PEM certificates", file)
	}
	return roots, nil
}

// stringList is a repeatable string flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

// readAuditKey reads the audit log's verifier key, inline or from a file.
func readAuditKey(s string) (note.Verifier, error) {
	if data, err := os.ReadFile(s); err == nil {
		s = string(data)
	}
	return checkpoint.ParseVerifier(strings.TrimSpace(s))
}
