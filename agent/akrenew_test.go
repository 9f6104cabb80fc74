package agent

import (
	"context"
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/deviceapi"
)

// TestAKCertificateRenewedWhileRunning: a running agent renews its AK certificate at a
// check-in once a third or less of its lifetime remains, and carries the new one from
// then on (the device certificate's ACME orders too, through OnAK); a renewal that fails
// keeps the current certificate and the check-in goes on. Before, the agent enrolled
// only at start: one that ran past its AK certificate (365 days) was refused at every
// check-in, and could get no device certificate, until it restarted (found from
// outside, 2 Dec).
func TestAKCertificateRenewedWhileRunning(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lab := newDeviceAPILab(ctx, t, dir)
	const validity = 3 * time.Hour
	url, tpm := lab.serveWithCA(ctx, t, func(c *attestca.Config) { c.AKCertValidity = validity })
	cfg := Config{Server: url}
	ak, err := enrollClient(cfg, serverClient(nil)).Enroll(ctx, tpm)
	if err != nil {
		t.Fatal(err)
	}
	mlog, err := OpenMeasurementLog(ctx, filepath.Join(dir, "device", "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	now := time.Now()
	failRenewal := false
	var told []*attest.AKCertificate
	var log strings.Builder
	link := &Attested{API: &deviceapi.Client{BaseURL: url}, TPM: tpm, AK: ak, Log: mlog, Hardware: "x86_64",
		Logger: slog.New(slog.NewTextHandler(&log, nil)),
		Now:    func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		RenewAK: func(ctx context.Context) (*attest.AKCertificate, error) {
			mu.Lock()
			fail := failRenewal
			mu.Unlock()
			if fail {
				return nil, errors.New("attestation CA unreachable")
			}
			return enrollClient(cfg, serverClient(nil)).Enroll(ctx, tpm)
		},
		OnAK: func(ak *attest.AKCertificate) { told = append(told, ak) }}
	checkIn := func(when string) {
		t.Helper()
		if _, err := link.CheckIn(ctx, nil); err != nil || !link.Last().Trusted {
			t.Fatalf("check-in %s = %+v, %v", when, link.Last(), err)
		}
	}
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	// Two thirds of its life left: kept.
	advance(validity / 4)
	checkIn("with most of the AK certificate's life left")
	if link.currentAK() != ak || len(told) != 0 {
		t.Fatalf("the AK certificate was replaced with %v of %v left", ak.Certificate.NotAfter.Sub(link.Now()), validity)
	}
	// A third or less left, and the CA cannot be reached: kept, said, and the check-in
	// goes on with the current one.
	advance(validity / 2)
	mu.Lock()
	failRenewal = true
	mu.Unlock()
	checkIn("with the renewal failing")
	if link.currentAK() != ak || !strings.Contains(log.String(), "AK certificate not renewed") {
		t.Fatalf("after a failed renewal: AK replaced %v; log:\n%s", link.currentAK() != ak, log.String())
	}
	// The CA answers again, but the next try waits akRetry: exchanges right after the
	// failure (reports, check-ins) do not enroll again each time.
	mu.Lock()
	failRenewal = false
	mu.Unlock()
	checkIn("right after the failed renewal")
	if link.currentAK() != ak {
		t.Fatal("the AK certificate was renewed again within akRetry of a failed try")
	}
	advance(akRetry)
	checkIn("renewing the AK certificate")
	renewed := link.currentAK()
	if renewed == ak || renewed.Certificate.SerialNumber.Cmp(ak.Certificate.SerialNumber) == 0 ||
		renewed.PermanentIdentifier != ak.PermanentIdentifier || len(told) != 1 || told[0] != renewed {
		t.Fatalf("after the renewal: AK %v (was %v), told %d; want a new certificate for %s, told once",
			renewed.Certificate.SerialNumber, ak.Certificate.SerialNumber, len(told), ak.PermanentIdentifier)
	}
	if !AKDue(ak, link.Now()) || AKDue(renewed, time.Now()) {
		t.Fatal("AKDue disagrees with the test's clock")
	}
	mu.Lock()
	now = time.Now() // the CA issued the new one by its clock
	mu.Unlock()
	checkIn("with the renewed AK certificate")
	if link.currentAK() != renewed || len(told) != 1 {
		t.Fatal("the renewed AK certificate was renewed again at once")
	}
}
