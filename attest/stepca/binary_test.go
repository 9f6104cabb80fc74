package stepca_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/stepca"
)

// stepCAVersion is the step-ca release the binary test builds; keep it equal
// to github.com/smallstep/certificates in go.mod.
const stepCAVersion = "v0.30.2"

// stepCABinary finds the real step-ca binary: $EDGEWARD_STEPCA_BIN, step-ca on
// PATH, or $EDGEWARD_DEPS_DIR/bin/step-ca (else the user cache dir), which it
// builds there with `go install ...cmd/step-ca@` + stepCAVersion
// (CGO_ENABLED=0) when missing: a few minutes once, then reused.
func stepCABinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("EDGEWARD_STEPCA_BIN"); p != "" {
		return p
	}
	if p, err := exec.LookPath("step-ca"); err == nil {
		return p
	}
	dir := os.Getenv("EDGEWARD_DEPS_DIR")
	if dir == "" {
		c, err := os.UserCacheDir()
		if err != nil {
			if attesttest.RequireDeps() {
				t.Fatalf("no cache dir for step-ca and EDGEWARD_REQUIRE_DEPS=1: %v", err)
			}
			t.Skipf("no cache dir for step-ca: %v", err)
		}
		dir = filepath.Join(c, "edgeward")
	}
	bin := filepath.Join(dir, "bin", "step-ca-"+stepCAVersion)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	tmp := t.TempDir()
	cmd := exec.Command("go", "install", "github.com/smallstep/certificates/cmd/step-ca@"+stepCAVersion)
	cmd.Env = append(os.Environ(), "GOBIN="+tmp, "CGO_ENABLED=0", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		if attesttest.RequireDeps() {
			t.Fatalf("building step-ca %s: %v\n%s", stepCAVersion, err, out)
		}
		t.Skipf("cannot build step-ca %s: %v", stepCAVersion, err)
	}
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(tmp, "step-ca"), bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// binaryCA runs the real step-ca binary on the configuration
// stepca.WriteConfig generates.
func binaryCA(bin string) func(context.Context, *testing.T, *x509.Certificate) deviceCA {
	return func(ctx context.Context, t *testing.T, attRoot *x509.Certificate) deviceCA {
		path, root, addr, err := stepca.WriteConfig(stepca.Config{Dir: t.TempDir(), AttestationRoots: []*x509.Certificate{attRoot}})
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, bin, path)
		logf, _ := os.Create(filepath.Join(filepath.Dir(path), "step-ca.log"))
		cmd.Stdout, cmd.Stderr = logf, logf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait(); logf.Close() })
		pool := x509.NewCertPool()
		pool.AddCert(root)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig.RootCAs = pool
		hc := &http.Client{Transport: tr, Timeout: 30 * time.Second}
		base := "https://" + addr
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := hc.Get(base + "/health")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				log, _ := os.ReadFile(logf.Name())
				t.Fatalf("step-ca binary not serving on %s: %v\n%s", addr, err, log)
			}
			time.Sleep(100 * time.Millisecond)
		}
		return deviceCA{dir: base + "/acme/edgeward/directory", client: hc, root: root}
	}
}

// TestRealStepCABinary runs the device-certificate flow against the real
// step-ca binary configured by stepca.WriteConfig.
func TestRealStepCABinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the step-ca binary")
	}
	bin := stepCABinary(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	maker, _ := attesttest.NewManufacturer("Acme TPM")
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	deviceFlow(ctx, t, tpm, maker.Roots(), inter, true, binaryCA(bin))
}
