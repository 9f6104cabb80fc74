package lab

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// Manufacturer is a TPM manufacturer: swtpm's local CA, which signs the EK certificate
// of every TPM it provisions. The server trusts RootPEM (and IntermediatesPEM).
type Manufacturer struct {
	Dir              string
	RootPEM          string
	IntermediatesPEM string
	conf             string
	mu               sync.Mutex
}

// Manufacturer returns the lab's manufacturer, creating its configuration on first use.
// The CA itself is created by swtpm_localca when the first TPM is provisioned.
func (l *Lab) Manufacturer() (*Manufacturer, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.maker != nil {
		return l.maker, nil
	}
	dir := filepath.Join(l.Dir, "manufacturer")
	ca := filepath.Join(dir, "ca")
	if err := os.MkdirAll(ca, 0o700); err != nil {
		return nil, err
	}
	write := func(name, content string) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, []byte(content), 0o600)
	}
	localca, err := write("swtpm-localca.conf", fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	if err != nil {
		return nil, err
	}
	opts, err := write("swtpm-localca.options", "--platform-manufacturer Edgeward\n--platform-version 2.1\n--platform-model devlab\n")
	if err != nil {
		return nil, err
	}
	conf, err := write("swtpm_setup.conf", fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, opts))
	if err != nil {
		return nil, err
	}
	m := &Manufacturer{Dir: dir, conf: conf, RootPEM: filepath.Join(ca, "swtpm-localca-rootca-cert.pem"), IntermediatesPEM: filepath.Join(ca, "issuercert.pem")}
	// swtpm_localca creates its CA when it certifies its first TPM.
	first := filepath.Join(dir, "first-tpm")
	if err := m.Provision(context.Background(), first); err != nil {
		return nil, fmt.Errorf("TPM manufacturer CA: %w", err)
	}
	os.RemoveAll(first)
	l.maker = m
	return m, nil
}

// Provision manufactures a TPM 2.0 state in dir with an RSA EK certificate signed by
// the manufacturer's CA.
func (m *Manufacturer) Provision(ctx context.Context, dir string) error {
	m.mu.Lock() // swtpm_localca keeps one serial-number file
	defer m.mu.Unlock()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpmstate", dir, "--config", m.conf, "--overwrite", "--create-ek-cert").CombinedOutput()
	if err != nil {
		return fmt.Errorf("swtpm_setup: %w\n%s", err, out)
	}
	return nil
}

// ServerConfig configures `edgeward server`.
type ServerConfig struct {
	Repo string
	// Listen is host:port; empty: a free port on 127.0.0.1.
	Listen string
	// CheckIn is the check-in interval suggested to devices; 0: 1s.
	CheckIn time.Duration
	// TLS also serves HTTPS (--tls-listen) with the embedded step-ca as device CA:
	// devices then check in over mTLS with a TPM-backed device certificate
	// (ACME device-attest-01). TUF metadata and targets stay on the plain URL.
	TLS bool
	// Args are further flags.
	Args []string
	// Name names the process and its log (logs/NAME.log); "": server. Replicas need
	// one each.
	Name string
	// DB is the server's database (--db): a postgres:// URL for replicas sharing one
	// fleet; "": DIR/fleet.db. Fleet opens the same.
	DB string
	// Env is added to the server's environment (e.g. EDGEWARD_PASSPHRASE with
	// --sign-delegated).
	Env []string
}

// Server is an `edgeward server` process.
type Server struct {
	URL  string
	Addr string
	// TLSURL is the HTTPS address devices use with ServerConfig.TLS ("" otherwise), and
	// TLSCert the server certificate they pin.
	TLSURL  string
	TLSCert string
	// MetadataURL is the TUF metadata base URL devices enroll with (a mirror in front of
	// the server; targets come from its sibling /targets). "": URL + "/metadata".
	MetadataURL string
	Proc        *Proc
	cfg         ServerConfig
	lab         *Lab
	n           int
}

// StartServer starts the server on the repository, trusting the lab's manufacturer,
// and waits until it answers.
func (l *Lab) StartServer(ctx context.Context, cfg ServerConfig) (*Server, error) {
	if cfg.Listen == "" {
		p, err := l.port(false)
		if err != nil {
			return nil, err
		}
		cfg.Listen = fmt.Sprintf("127.0.0.1:%d", p)
	}
	if cfg.CheckIn == 0 {
		cfg.CheckIn = time.Second
	}
	s := &Server{URL: "http://" + cfg.Listen, Addr: cfg.Listen, cfg: cfg, lab: l}
	if !cfg.TLS {
		// Without TLS the devices check in over plain HTTP, which the server refuses
		// unless told (a lab on loopback).
		s.cfg.Args = append(s.cfg.Args, "--plain-devices")
	}
	if cfg.TLS {
		// Operators (the demo's dashboard, the lab's CLI calls) stay on the plain
		// loopback URL; devices use TLS and mTLS.
		s.cfg.Args = append(s.cfg.Args, "--plain-operators")
		p, err := l.port(false)
		if err != nil {
			return nil, err
		}
		s.TLSURL = fmt.Sprintf("https://127.0.0.1:%d", p)
		s.TLSCert = filepath.Join(cfg.Repo, "tls", "server.pem")
		s.cfg.Args = append(s.cfg.Args, "--tls-listen", strings.TrimPrefix(s.TLSURL, "https://"))
	}
	return s, s.Start(ctx)
}

// Start (re)starts a stopped server on the same address.
func (s *Server) Start(ctx context.Context) error {
	if s.Proc != nil && !s.Proc.Exited() {
		return errors.New("server already running")
	}
	m, err := s.lab.Manufacturer()
	if err != nil {
		return err
	}
	args := []string{"server", "--repo", s.cfg.Repo, "--listen", s.cfg.Listen, "--ek-roots", m.RootPEM,
		"--ek-intermediates", m.IntermediatesPEM, "--check-in-interval", s.cfg.CheckIn.String()}
	if s.cfg.DB != "" {
		args = append(args, "--db", s.cfg.DB)
	}
	name := s.cfg.Name
	if name == "" {
		name = "server"
	}
	s.Proc, err = s.lab.Start(name, s.cfg.Env, s.lab.Bins.Edgeward, append(args, s.cfg.Args...)...)
	if err != nil {
		return err
	}
	s.n++
	return WaitFor(ctx, 30*time.Second, "the server to answer /healthz", func(ctx context.Context) (bool, string, error) {
		if s.Proc.Exited() {
			return false, "", Final(fmt.Errorf("server exited: %s", s.Proc.Tail(10)))
		}
		code, _, err := httpGet(ctx, s.URL+"/healthz")
		ok := err == nil && code == http.StatusOK
		if ok && s.TLSURL != "" {
			_, err := os.Stat(s.TLSCert)
			ok = err == nil && portOpen(portOf(s.TLSURL))
		}
		return ok, fmt.Sprint("HTTP ", code), nil
	})
}

// Stop stops the server (SIGTERM).
func (s *Server) Stop() { s.Proc.Stop(10 * time.Second) }

// Kill kills the server (SIGKILL).
func (s *Server) Kill() { s.Proc.Kill() }

// Fleet opens the server's fleet store (sqlite, WAL: safe beside the server; or the
// PostgreSQL database of ServerConfig.DB). The caller closes it.
func (s *Server) Fleet(ctx context.Context) (*fleet.Store, error) {
	if s.cfg.DB != "" {
		return fleet.Open(ctx, s.cfg.DB)
	}
	return fleet.Open(ctx, filepath.Join(s.cfg.Repo, "fleet.db"))
}

// Device is one simulated device: a swtpm process and an edgeward-agent process (with
// its runtime) on its own inference port.
type Device struct {
	Name     string
	StateDir string
	TPMDir   string
	TPMPort  int
	Port     int
	Labels   map[string]string
	// ID is the device ID (the permanent identifier in its AK certificate), known once
	// the agent has enrolled.
	ID string
	// AgentBin overrides the lab's agent binary; AgentEnv and AgentArgs are added to the
	// agent's environment and flags.
	AgentBin  string
	AgentEnv  []string
	AgentArgs []string

	Swtpm *Proc
	Agent *Proc
	lab   *Lab
	srv   *Server
}

// NewDevice provisions a TPM for a device, starts its swtpm and enrolls the agent's state
// directory (pins the TUF root of the repository and the TPM). StartAgent starts it.
func (l *Lab) NewDevice(ctx context.Context, name string, labels map[string]string, srv *Server, rootJSON string) (*Device, error) {
	m, err := l.Manufacturer()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(l.Dir, "devices", name)
	d := &Device{Name: name, StateDir: filepath.Join(dir, "state"), TPMDir: filepath.Join(dir, "tpm"), Labels: labels, lab: l, srv: srv}
	if d.Labels == nil {
		d.Labels = map[string]string{}
	}
	d.Labels["name"] = name
	if err := m.Provision(ctx, d.TPMDir); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if d.Port, err = l.port(false); err != nil {
		return nil, err
	}
	if err := d.StartTPM(ctx); err != nil {
		return nil, err
	}
	if _, err := l.Run(ctx, nil, l.Bins.Agent, "enroll", "--state-dir", d.StateDir, "--root", rootJSON,
		"--metadata-url", srv.metadataURL(), "--tpm", d.TPMURL()); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return d, nil
}

func (s *Server) metadataURL() string {
	if s.MetadataURL != "" {
		return s.MetadataURL
	}
	return s.URL + "/metadata"
}

// TPMURL is the attest.Open URL of the device's swtpm.
func (d *Device) TPMURL() string { return fmt.Sprintf("swtpm://127.0.0.1:%d", d.TPMPort) }

// StartTPM starts the device's swtpm (a power-on: PCRs reset). The port stays the
// same across restarts once chosen.
func (d *Device) StartTPM(ctx context.Context) error {
	if d.TPMPort == 0 {
		p, err := d.lab.port(true)
		if err != nil {
			return err
		}
		d.TPMPort = p
	}
	var err error
	d.Swtpm, err = d.lab.Start(d.Name+"-swtpm", nil, "swtpm", "socket", "--tpm2", "--tpmstate", "dir="+d.TPMDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", d.TPMPort),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", d.TPMPort+1), "--flags", "startup-clear")
	if err != nil {
		return err
	}
	return waitPort(ctx, d.TPMPort+1, true, 10*time.Second, d.Swtpm)
}

var enrolledRE = regexp.MustCompile(`msg=enrolled device=("(?:[^"\\]|\\.)*"|\S+)`)

// StartAgent starts `edgeward-agent device` and waits until it enrolled with the
// attestation CA (its device ID is then known) and its runtime accepts connections.
func (d *Device) StartAgent(ctx context.Context) error { return d.startAgent(ctx, true) }

// StartAgentOffline starts the agent and waits only until its runtime accepts
// connections: for a server that cannot be reached (the agent keeps trying to enroll).
func (d *Device) StartAgentOffline(ctx context.Context) error { return d.startAgent(ctx, false) }

func (d *Device) startAgent(ctx context.Context, enrolled bool) error {
	if d.Agent != nil && !d.Agent.Exited() {
		return fmt.Errorf("%s: agent already running", d.Name)
	}
	bin := d.AgentBin
	if bin == "" {
		bin = d.lab.Bins.Agent
	}
	var lbl []string
	for k, v := range d.Labels {
		lbl = append(lbl, k+"="+v)
	}
	sort.Strings(lbl)
	server := []string{"--server", d.srv.URL}
	if d.srv.TLSURL != "" {
		server = []string{"--server", d.srv.TLSURL, "--server-ca", d.srv.TLSCert}
	}
	args := []string{"device", "--state-dir", d.StateDir, "--labels", strings.Join(lbl, ","),
		"--listen", fmt.Sprintf("127.0.0.1:%d", d.Port), "--interval", "1s", "--trial-timeout", "90s"}
	args = append(args, server...)
	if d.lab.Bins.Runtime != "" {
		args = append(args, "--runtime", d.lab.Bins.Runtime)
	}
	// Make sure the log shows only this run's enrollment.
	logPath := filepath.Join(d.lab.Dir, "logs", d.Name+".log")
	var before int64
	if fi, err := os.Stat(logPath); err == nil {
		before = fi.Size()
	}
	var err error
	d.Agent, err = d.lab.Start(d.Name, d.AgentEnv, bin, append(args, d.AgentArgs...)...)
	if err != nil {
		return err
	}
	err = WaitFor(ctx, 60*time.Second, d.Name+" to enroll and start its runtime", func(context.Context) (bool, string, error) {
		if d.Agent.Exited() {
			return false, "", Final(fmt.Errorf("agent exited (%d): %s", d.Agent.ExitCode(), d.Agent.Tail(8)))
		}
		if d.ID == "" || before > 0 {
			b, _ := os.ReadFile(logPath)
			if int64(len(b)) >= before {
				if m := enrolledRE.FindSubmatch(b[before:]); m != nil {
					d.ID, before = string(m[1]), 0
					if u, err := strconv.Unquote(d.ID); err == nil {
						d.ID = u
					}
				}
			}
		}
		if !enrolled {
			return portOpen(d.Port), "", nil
		}
		return d.ID != "" && before == 0 && portOpen(d.Port), "", nil
	})
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name, err)
	}
	return nil
}

// StopAgent stops the agent (SIGTERM: it stops its runtime) and waits until the
// inference port is closed.
func (d *Device) StopAgent(ctx context.Context) error {
	d.Agent.Stop(20 * time.Second)
	return waitPort(ctx, d.Port, false, 30*time.Second, nil)
}

// KillAgent kills the agent with SIGKILL (its runtime then gets SIGTERM from the
// kernel) and waits until the inference port is closed.
func (d *Device) KillAgent(ctx context.Context) error {
	d.Agent.Kill()
	return waitPort(ctx, d.Port, false, 30*time.Second, nil)
}

// Status runs `edgeward-agent status` on the device's state directory: a running agent
// answers over its status socket; a stopped one's state is read (opening the TPM).
func (d *Device) Status(ctx context.Context) (string, error) {
	return d.lab.Run(ctx, nil, d.lab.Bins.Agent, "status", "--state-dir", d.StateDir)
}

// ModelPayload is the file of the committed model in the given slot (a or b).
func (d *Device) ModelPayload(slot string) string {
	return filepath.Join(d.StateDir, "slots", "model", slot, "payload")
}

// InferResult is what an inference request answered.
type InferResult struct {
	Code    int
	Version string
	Output  string
	Error   string
}

// Infer sends one Open Inference Protocol request for model (the first case of its
// probe set) to the device's public port.
func (d *Device) Infer(ctx context.Context, model string) (InferResult, error) {
	body, err := InferBody()
	if err != nil {
		return InferResult{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/v2/models/%s/infer", d.Port, model), bytes.NewReader(body))
	if err != nil {
		return InferResult{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return InferResult{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	r := InferResult{Code: resp.StatusCode}
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.Unmarshal(b, &e)
		r.Error = e.Error
		return r, nil
	}
	var ir runtimeapi.InferResponse
	if err := json.Unmarshal(b, &ir); err != nil {
		return r, err
	}
	r.Version = ir.ModelVersion
	if len(ir.Outputs) > 0 {
		r.Output = fmt.Sprintf("%s=%s", ir.Outputs[0].Name, compact(ir.Outputs[0].Data))
	}
	return r, nil
}

func compact(b []byte) string {
	var buf bytes.Buffer
	if json.Compact(&buf, b) != nil {
		return string(b)
	}
	return buf.String()
}

// InferBody is an inference request for the vibration-anomaly model: the first reading
// of its probe set.
func InferBody() ([]byte, error) {
	probe, err := modelgen.ProbeSet("1.0.0")
	if err != nil {
		return nil, err
	}
	var ps runtimeapi.ProbeSet
	if err := json.Unmarshal(probe, &ps); err != nil {
		return nil, err
	}
	in := ps.Inputs[0]
	var rows [][]float64
	if err := json.Unmarshal(in.Data, &rows); err != nil || len(rows) == 0 {
		return nil, fmt.Errorf("probe set input is not a list of rows: %v", err)
	}
	data, _ := json.Marshal(rows[:1])
	in.Data = data
	in.Shape = []int64{1, int64(len(rows[0]))}
	return json.Marshal(runtimeapi.InferRequest{Inputs: []runtimeapi.RequestTensor{in}})
}

// WaitStopped waits until the agent has exited and its inference port is closed (its
// runtime processes drained), e.g. after a crash point killed it.
func (d *Device) WaitStopped(ctx context.Context, timeout time.Duration) error {
	select {
	case <-d.Agent.Done():
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("%s: agent still running after %s", d.Name, timeout)
	}
	return waitPort(ctx, d.Port, false, timeout, nil)
}

func portOf(url string) int {
	i := strings.LastIndex(url, ":")
	p, _ := strconv.Atoi(url[i+1:])
	return p
}

var deviceCertRE = regexp.MustCompile(`msg="device certificate" subject=("(?:[^"\\]|\\.)*"|\S+)`)

// DeviceCert is the subject of the device certificate the agent logged in its last
// start ("" if it has none: no device CA on the server).
func (d *Device) DeviceCert() string {
	b, _ := os.ReadFile(d.Agent.LogPath)
	m := deviceCertRE.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return ""
	}
	s := string(m[len(m)-1][1])
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	return s
}

// TrustedRootVersion is the version of the TUF root the device's agent trusts now.
func (d *Device) TrustedRootVersion() (int64, error) {
	b, err := os.ReadFile(filepath.Join(d.StateDir, "tuf", "root.json"))
	if err != nil {
		return 0, err
	}
	var root struct {
		Signed struct {
			Version int64 `json:"version"`
		} `json:"signed"`
	}
	if err := json.Unmarshal(b, &root); err != nil {
		return 0, err
	}
	return root.Signed.Version, nil
}

// Boot makes the device boot as firmware that wrote log would: it replays the log's
// events into the device's swtpm's boot PCRs (0–7), which must be fresh (the swtpm just
// started, the agent not yet), writes the log where the agent reads it and has the
// agent send it with every check-in (--boot-log), as a real device sends
// /sys/kernel/security/tpm0/binary_bios_measurements.
func (d *Device) Boot(ctx context.Context, log []byte) error {
	tpm, err := attest.Open(ctx, d.TPMURL())
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name, err)
	}
	err = attesttest.ReplayBootLog(ctx, tpm, log)
	tpm.Close() // swtpm serves one connection: the agent's, from now on
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name, err)
	}
	path := filepath.Join(filepath.Dir(d.StateDir), "binary_bios_measurements")
	if err := os.WriteFile(path, log, 0o600); err != nil {
		return err
	}
	d.AgentArgs = append(d.AgentArgs, "--boot-log", path)
	return nil
}

// BootApplicationSwapped returns log with the SHA-256 digest of one EFI boot
// application (PCR 4) replaced by other: the same machine booting another boot loader
// or kernel. Replayed by Device.Boot, the log still matches the TPM (firmware would
// have measured the other binary); only a boot policy tells the two boots apart.
func BootApplicationSwapped(log []byte, digest string, other [32]byte) ([]byte, error) {
	want, err := hex.DecodeString(digest)
	if err != nil || len(want) != 32 {
		return nil, fmt.Errorf("digest %q: want 64 hex digits", digest)
	}
	head, events, err := attesttest.SplitBootLog(log)
	if err != nil {
		return nil, err
	}
	n := 0
	for i, e := range events {
		if attesttest.BootLogEventPCR(e) == 4 && attesttest.BootLogEventType(e) == attesttest.EvBootApplication && bytes.Contains(e, want) {
			events[i] = bytes.Replace(e, want, other[:], 1)
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("the log has %d boot applications with digest %s; want 1", n, digest)
	}
	return attesttest.JoinBootLog(head, events), nil
}

// RunIMA makes the device's kernel have measured files (path → SHA-256 hex) with IMA,
// after a boot (Boot): the list starts with the kernel's boot_aggregate (the SHA-256
// of the swtpm's PCRs 0–9), every entry (ima-ng, the kernel's binary format) is
// extended into PCR 10 as the kernel does, and the agent sends the list with every
// check-in (--ima-log). Call it before the agent starts; the list stays as written.
func (d *Device) RunIMA(ctx context.Context, files [][2]string) error {
	tpm, err := attest.Open(ctx, d.TPMURL())
	if err != nil {
		return fmt.Errorf("%s: %w", d.Name, err)
	}
	defer tpm.Close()
	pcrs, err := tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if err != nil {
		return err
	}
	agg, _ := ima.BootAggregate(pcrs, 9)
	list := []ima.Entry{ima.NG("boot_aggregate", agg)}
	for _, f := range files {
		b, err := hex.DecodeString(f[1])
		if err != nil || len(b) != 32 {
			return fmt.Errorf("%s: digest %q: want 64 hex digits", f[0], f[1])
		}
		list = append(list, ima.NG(f[0], [32]byte(b)))
	}
	for _, e := range list {
		if err := tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			return err
		}
	}
	path := filepath.Join(filepath.Dir(d.StateDir), "binary_runtime_measurements_sha256")
	if err := os.WriteFile(path, ima.Marshal(list), 0o600); err != nil {
		return err
	}
	d.AgentArgs = append(d.AgentArgs, "--ima-log", path)
	return nil
}
