package agent

import (
	"context"
	"crypto/x509"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// deviceAPILab is what a test of the agent against a real device API starts from: a
// repository initialised in dir/repo, a fleet store in dir/fleet.db (closed when the
// test ends), a TPM manufacturer and the attestation CA that trusts its EKs.
type deviceAPILab struct {
	res   *repository.InitResult
	store *fleet.Store
	maker *attesttest.Manufacturer
	ca    *attestca.CA
}

func newDeviceAPILab(ctx context.Context, t *testing.T, dir string) deviceAPILab {
	t.Helper()
	res, err := repository.Init(ctx, repository.Config{Dir: filepath.Join(dir, "repo")}, repository.InitOptions{Passphrase: []byte("pw")})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	maker, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	caKey, caCert, err := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := attestca.New(attestca.Config{Signer: caKey, Certificate: caCert, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter})
	if err != nil {
		t.Fatal(err)
	}
	return deviceAPILab{res: res, store: store, maker: maker, ca: ca}
}

// serveWithCA starts, for the test, the device API of lab's repository and fleet behind
// an attestation CA configured by mod (its signer, certificate and lab's manufacturer
// already set), with an empty policy, and returns its URL and a simulator TPM
// provisioned by lab's manufacturer; both closed when the test ends.
func (lab deviceAPILab) serveWithCA(ctx context.Context, t *testing.T, mod func(*attestca.Config)) (string, *attest.TPM) {
	t.Helper()
	caKey, caCert, err := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(lab.maker.Intermediate)
	cfg := attestca.Config{Signer: caKey, Certificate: caCert, ManufacturerRoots: lab.maker.Roots(), ManufacturerIntermediates: inter}
	mod(&cfg)
	ca, err := attestca.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte("version: 1\n")})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: lab.res.Repo})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(reposerver.DeviceConfig{Fleet: lab.store, AttestCA: ca, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := lab.maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	return hs.URL, tpm
}
