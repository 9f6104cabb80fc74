package agent

import (
	"context"
	"crypto/x509"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
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
