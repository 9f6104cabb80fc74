package attesttest

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/testport"
)

// RequireDeps reports whether EDGEWARD_REQUIRE_DEPS=1: a missing external
// dependency is then a failure, not a skip.
func RequireDeps() bool { return os.Getenv("EDGEWARD_REQUIRE_DEPS") == "1" }

// NeedBinary skips the test when a binary is missing, or fails it when
// RequireDeps.
func NeedBinary(t testing.TB, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if RequireDeps() {
				t.Fatalf("%s not found and EDGEWARD_REQUIRE_DEPS=1 (install it: bash scripts/deps/00-apt.sh): %v", n, err)
			}
			t.Skipf("%s not found (Debian package swtpm/swtpm-tools/tpm2-tools); skipping", n)
		}
	}
}

// Swtpm is a running swtpm process with a manufactured state directory.
type Swtpm struct {
	// URL is the attest.Open URL, swtpm://127.0.0.1:PORT.
	URL string
	// Port is the command port; Port+1 is the control port.
	Port int
	// StateDir holds the TPM state (NV survives Restart).
	StateDir string
	// CARoots holds swtpm's local CA root; CAIntermediates its issuer
	// certificate, which signs EK certificates. Both nil without EK certs.
	CARoots         *x509.CertPool
	CAIntermediates *x509.CertPool
	cmd             *exec.Cmd
	t               testing.TB
}

// StartSwtpm manufactures a TPM 2.0 state in a temp dir with swtpm_setup
// (with --create-ek-cert when ekCert: an RSA EK certificate at 0x01c00002
// signed by a local CA made in the same temp dir) and starts swtpm on a free
// loopback port. The process is stopped by t.Cleanup.
func StartSwtpm(t testing.TB, ekCert bool) *Swtpm {
	t.Helper()
	NeedBinary(t, "swtpm", "swtpm_setup")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	ca := filepath.Join(dir, "ca")
	for _, d := range []string{state, ca} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	localca := write("swtpm-localca.conf", fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\nissuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca))
	opts := write("swtpm-localca.options", "--platform-manufacturer Edgeward\n--platform-version 2.1\n--platform-model test\n")
	conf := write("swtpm_setup.conf", fmt.Sprintf("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n", localca, opts))
	args := []string{"--tpm2", "--tpmstate", state, "--config", conf, "--overwrite"}
	if ekCert {
		args = append(args, "--create-ek-cert")
	}
	if out, err := exec.Command("swtpm_setup", args...).CombinedOutput(); err != nil {
		t.Fatalf("swtpm_setup %v: %v\n%s", args, err, out)
	}
	s := &Swtpm{StateDir: state, t: t}
	if ekCert {
		s.CARoots = loadPool(t, filepath.Join(ca, "swtpm-localca-rootca-cert.pem"))
		s.CAIntermediates = loadPool(t, filepath.Join(ca, "issuercert.pem"))
	}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func loadPool(t testing.TB, path string) *x509.CertPool {
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p := x509.NewCertPool()
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		p.AddCert(c)
	}
	return p
}

// freePortPair finds a port p with p and p+1 free on 127.0.0.1, reserved for this
// process outside the ephemeral range (testport.TakePair).
func freePortPair(t testing.TB) int {
	p, err := testport.TakePair()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (s *Swtpm) start() {
	t := s.t
	s.Port = freePortPair(t)
	s.URL = fmt.Sprintf("swtpm://127.0.0.1:%d", s.Port)
	s.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+s.StateDir,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.Port),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", s.Port+1),
	)
	s.cmd.Stderr = os.Stderr
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", s.Port+1))
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			s.Stop()
			t.Fatalf("swtpm did not listen on %d: %v", s.Port+1, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Restart stops swtpm and starts it again on the same state (a power cycle:
// NV persists, PCRs reset). The port may change; use URL afterwards.
func (s *Swtpm) Restart() {
	s.Stop()
	s.start()
}

// Stop kills the swtpm process (idempotent).
func (s *Swtpm) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}
