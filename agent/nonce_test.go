package agent

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/updater"
)

// TestCheckInUsesTheNextNonce: after its first check-in the agent quotes over the nonce
// the server's last answer issued, asking for none, and a nonce request in its name does
// not take that one away; when the server refuses it (lost), it asks for a new nonce and
// checks in at once.
func TestCheckInUsesTheNextNonce(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lab := newDeviceAPILab(ctx, t, dir)
	res, store, maker, ca := lab.res, lab.store, lab.maker, lab.ca
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte("version: 1\n")})
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
	var nonces, refused atomic.Int64
	h := srv.Handler()
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == wire.PathNonce {
			nonces.Add(1)
		}
		rec := &statusRecorder{ResponseWriter: w}
		h.ServeHTTP(rec, r)
		if r.URL.Path == wire.PathCheckIn && rec.status == http.StatusUnauthorized {
			refused.Add(1)
		}
	}))
	defer hs.Close()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
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
	api := &deviceapi.Client{BaseURL: hs.URL}
	link := &Attested{API: api, TPM: tpm, AK: ak, Log: mlog, Hardware: "x86_64"}
	for i := range 3 {
		if _, err := link.CheckIn(ctx, nil); err != nil || !link.Last().Trusted {
			t.Fatalf("check-in %d = %+v, %v", i, link.Last(), err)
		}
	}
	if n, r := nonces.Load(), refused.Load(); n != 1 || r != 0 {
		t.Fatalf("3 check-ins asked for %d nonces and were refused %d times; want 1 nonce (the first), no refusal", n, r)
	}
	// A nonce asked for in the device's name (by anyone: the request is not
	// authenticated) does not replace the one the agent holds, which its last check-in
	// issued: the next check-in uses it, unrefused.
	if _, err := api.Nonce(ctx, link.DeviceID()); err != nil {
		t.Fatal(err)
	}
	if _, err := link.CheckIn(ctx, nil); err != nil || !link.Last().Trusted {
		t.Fatalf("check-in after a nonce request in the device's name = %+v, %v", link.Last(), err)
	}
	if n, r := nonces.Load(), refused.Load(); n != 2 || r != 0 {
		t.Fatalf("nonces asked = %d, refusals = %d; want 2 (the first, the stranger's) and none", n, r)
	}
	// The server refuses the held nonce (here one it never issued, as after the fleet
	// database was replaced, whose nonce key seals them): the agent asks for a new
	// nonce and checks in at once.
	if len(link.nextNonce) != 32 {
		t.Fatalf("held nonce = %x; want the 32 bytes the last check-in issued", link.nextNonce)
	}
	link.nextNonce = bytes.Repeat([]byte{7}, 32)
	if _, err := link.CheckIn(ctx, nil); err != nil || !link.Last().Trusted {
		t.Fatalf("check-in over a lost nonce = %+v, %v; want trusted after asking for a new one", link.Last(), err)
	}
	if n, r := nonces.Load(), refused.Load(); n != 3 || r != 1 {
		t.Fatalf("nonces asked = %d, refusals = %d; want 3 (the first, the stranger's, the agent's new one) and 1", n, r)
	}
	// Decommissioned: the check-in's refusal is ErrOutOfService, after which the
	// agent's loop asks only every OutOfServiceInterval (updater TestAgentOutOfServiceAsksRarely).
	if err := store.Decommission(ctx, link.DeviceID(), "scrapped", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := link.CheckIn(ctx, nil); !errors.Is(err, updater.ErrOutOfService) {
		t.Fatalf("check-in of the decommissioned device = %v; want ErrOutOfService", err)
	}
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}
