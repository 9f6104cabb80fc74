package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
)

// TestCheckInSendsBootAndIMAEvidence: the agent reads the boot event log and the IMA
// list from their files (as from securityfs), quotes PCRs 0–7, 10 and 16, and the
// server trusts it under a policy with a boot and a runtime section. Then an unknown
// executable runs as root (the kernel appends it to the list and extends PCR 10): the
// next check-in is untrusted, names the file, and the device is quarantined.
func TestCheckInSendsBootAndIMAEvidence(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lab := newDeviceAPILab(ctx, t, dir)
	res, store, maker, ca := lab.res, lab.store, lab.maker, lab.ca
	self, _ := os.Executable() // stands in for the agent binary: a real file the kernel would measure
	agentSum, err := fileSum(self)
	if err != nil {
		t.Fatal(err)
	}
	bootLog, err := attesttest.RealBootLog(attesttest.BootLogSecureBoot)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(`version: 1
attestation:
  boot:
    - secure_boot: true
  runtime:
    agent: [` + agentSum + `]
    enforce: true
`)})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: res.Repo})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(reposerver.DeviceConfig{Fleet: store, AttestCA: ca, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	// Firmware and kernel: the boot PCRs and PCR 10 as on the device the logs describe.
	if err := attesttest.ReplayBootLog(ctx, tpm, bootLog); err != nil {
		t.Fatal(err)
	}
	var list []ima.Entry
	imaFile := filepath.Join(dir, "binary_runtime_measurements_sha256")
	exec := func(path, sum string) {
		t.Helper()
		b, _ := hex.DecodeString(sum)
		e := ima.NG(path, [32]byte(b))
		if err := tpm.Extend(ctx, ima.PCR, e.ExtendDigest()); err != nil {
			t.Fatal(err)
		}
		list = append(list, e)
		if err := os.WriteFile(imaFile, ima.Marshal(list), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pcrs, err := tpm.ReadPCRs(ctx, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9)
	if err != nil {
		t.Fatal(err)
	}
	agg, _ := ima.BootAggregate(pcrs, 9) // the kernel's first entry
	exec("boot_aggregate", hex.EncodeToString(agg[:]))
	exec("/usr/bin/edgeward-agent", agentSum)
	bootFile := filepath.Join(dir, "binary_bios_measurements")
	if err := os.WriteFile(bootFile, bootLog, 0o600); err != nil {
		t.Fatal(err)
	}

	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	ak, err := (&attest.EnrollClient{URL: hs.URL + wire.PathAttest}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	mlog, err := OpenMeasurementLog(ctx, filepath.Join(dir, "device", "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	link := &Attested{API: &deviceapi.Client{BaseURL: hs.URL}, TPM: tpm, AK: ak, Log: mlog, Hardware: "x86_64", BootLog: bootFile, IMALog: imaFile}
	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if last := link.Last(); !last.Trusted {
		t.Fatalf("check-in with genuine boot and IMA evidence = %+v; want trusted", last)
	}

	sum := sha256.Sum256([]byte("a root shell script's interpreter nobody allowed"))
	exec("/tmp/.x/replay-pcr16", hex.EncodeToString(sum[:]))
	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatal(err)
	}
	last := link.Last()
	if last.Trusted || !last.Quarantined || !strings.Contains(strings.Join(last.Reasons, " "), "/tmp/.x/replay-pcr16") {
		t.Fatalf("check-in after an unknown root executable ran = %+v; want untrusted naming it, quarantined", last)
	}
}

func fileSum(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), nil
}
