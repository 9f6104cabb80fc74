package reposerver

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/audit"
)

// TestCheckInRateIsBounded: a device checking in far faster than any interval (a loop,
// a hostile agent) is refused with 429 and Retry-After once its burst is used, each
// refusal storing no verdict; 500 such refusals add two audit records (the first, by the
// device, and one summary), not 500 verdicts. Once the wait is over it is admitted
// again, and the refused check-in's report is stored when sent again.
func TestCheckInRateIsBounded(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	// The clock stands still from here (nonces and certificates are judged by it too,
	// from the real time on): every check-in at one instant, until the test moves it.
	f.clock.mu.Lock()
	f.clock.real, f.clock.t = false, time.Now()
	f.clock.mu.Unlock()
	cfg := f.srv.devices.cfg
	if cfg.CheckInBurst != 20 || cfg.CheckInEvery != 2*time.Second {
		t.Fatalf("default bound = %d, %v; want 20, 2s (for the default 30s interval)", cfg.CheckInBurst, cfg.CheckInEvery)
	}
	for i := range cfg.CheckInBurst {
		if _, err := d.checkIn(d.request()); err != nil {
			t.Fatalf("check-in %d of the burst: %v", i, err)
		}
	}
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := l.Size(ctx)
	verdicts, err := f.store.DeviceVerdicts(ctx, d.id, time.Time{}, 1000)
	if err != nil {
		t.Fatal(err)
	}

	// The raw answer: 429, Retry-After, a message saying why.
	req := d.request(wire.Report{ID: "held-1", Kind: "model", Name: "vibration", Version: "1.0.0", Outcome: wire.OutcomeProbeFailed, Cause: "probe", At: f.clock.Now()})
	body, _ := json.Marshal(req)
	resp, err := http.Post(f.http.URL+wire.PathCheckIn, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	var msg struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&msg)
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "2" || !strings.Contains(msg.Error, "too often") {
		t.Fatalf("check-in past the burst = %d, Retry-After %q, %q; want 429, 2, too often", resp.StatusCode, resp.Header.Get("Retry-After"), msg.Error)
	}
	// Past its bound, a check-in's evidence is not even verified: one whose quote does
	// not verify is refused as too soon, not as forged.
	bad := d.request()
	bad.Evidence.Quote.Signature = []byte("not a signature")
	if _, err := d.checkIn(bad); !isStatus(err, http.StatusTooManyRequests) {
		t.Fatalf("check-in past the burst with a bad quote = %v; want 429 before any verification", err)
	}
	const n = 499
	for i := range n - 1 {
		var apiErr *deviceapi.Error
		if _, err := d.checkIn(d.request()); !errors.As(err, &apiErr) || apiErr.Status != http.StatusTooManyRequests {
			t.Fatalf("check-in %d past the burst = %v; want 429", i, err)
		}
	}
	if err := f.srv.FlushRefusals(ctx, true); err != nil {
		t.Fatal(err)
	}
	after, _ := l.Size(ctx)
	if added := after - before; added != 2 {
		t.Fatalf("%d refused check-ins added %d audit records; want 2 (the first, one summary)", n, added)
	}
	// Refused before its evidence is verified (a device past its bound made the server
	// verify every request in full: found from outside, 2 Dec), so not yet the device's
	// act: claimed by it.
	recs, _ := l.Records(ctx, audit.Query{Kind: "attestation.rejected", Subject: d.id})
	if len(recs) != 1 || recs[0].Actor != "unauthenticated" || !strings.Contains(string(recs[0].Data), "too often") || !strings.Contains(string(recs[0].Data), `"claimed_device"`) {
		t.Fatalf("rejection records = %+v; want one, unauthenticated, claimed by %s, too often", recs, d.id)
	}
	if now, _ := f.store.DeviceVerdicts(ctx, d.id, time.Time{}, 1000); len(now) != len(verdicts) {
		t.Fatalf("refused check-ins stored %d verdicts", len(now)-len(verdicts))
	}

	// After the wait: admitted, and the report it carried (sent again, as an outbox
	// does) is stored.
	f.clock.Add(2 * time.Second)
	req.Nonce = nil
	again := d.request(req.Reports...)
	res, err := d.checkIn(again)
	if err != nil || res.ReportsAccepted != 1 {
		t.Fatalf("check-in after the wait = %+v, %v; want admitted with its report", res, err)
	}
	if _, err := d.checkIn(d.request()); err == nil {
		t.Fatal("a second check-in in the same instant after the wait was admitted")
	}
}

// TestCheckInWhileTheDatabaseIsAwayIs503: a check-in the fleet database cannot take (here
// the store is closed; an unreachable or full database, or no turn within the store's
// queue bound, are the same to the handler) is 503 with Retry-After, which nginx in front
// of replicas takes as "try another", not a 500 it passes on to the device (found from
// outside, 2 Dec).
func TestCheckInWhileTheDatabaseIsAwayIs503(t *testing.T) {
	f, d := newDeviceFixture(t)
	req := d.request()
	f.store.Close()
	body, _ := json.Marshal(req)
	resp, err := http.Post(f.http.URL+wire.PathCheckIn, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("check-in with the database away = %d, Retry-After %q; want 503 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

// TestReadyzSaysWhetherTheStoreTakesWrites: /readyz is 200 while the fleet store takes
// writes and 503 (with Retry-After) when it does not; /healthz, the repository's health,
// stays 200.
func TestReadyzSaysWhetherTheStoreTakesWrites(t *testing.T) {
	f, _ := newDeviceFixture(t)
	get := func(path string) *http.Response {
		t.Helper()
		resp, err := http.Get(f.http.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if r := get("/readyz"); r.StatusCode != http.StatusOK {
		t.Fatalf("/readyz = %d; want 200", r.StatusCode)
	}
	f.store.Close()
	if r := get("/readyz"); r.StatusCode != http.StatusServiceUnavailable || r.Header.Get("Retry-After") == "" {
		t.Fatalf("/readyz with the store away = %d (Retry-After %q); want 503", r.StatusCode, r.Header.Get("Retry-After"))
	}
	if r := get("/healthz"); r.StatusCode != http.StatusOK {
		t.Fatalf("/healthz with the store away = %d; want 200 (the repository is fine)", r.StatusCode)
	}
}

// isStatus says whether err is the device API's refusal with status.
func isStatus(err error, status int) bool {
	var apiErr *deviceapi.Error
	return errors.As(err, &apiErr) && apiErr.Status == status
}
