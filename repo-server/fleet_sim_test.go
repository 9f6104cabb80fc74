package reposerver

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
)

// fakeAgent is a device for fleet-scale tests: a software TPM (attesttest.SoftDevice)
// and the agent's behaviour reduced to its outcome: a version whose bytes are "good"
// commits (measured, reported committed), any other fails its probe (reported
// probe_failed, nothing committed).
type fakeAgent struct {
	dev     *attesttest.SoftDevice
	api     *deviceapi.Client
	model   wire.Slot
	reports []wire.Report
	seq     int
	// offered records every version the server told it to install; reverts counts
	// the installs the server marked as a revert (after an abort).
	offered map[string]bool
	reverts int
}

func olderThan(a, b string) bool {
	va, _ := artifact.ParseVersion(a)
	vb, _ := artifact.ParseVersion(b)
	return va.Compare(vb) < 0
}

func (a *fakeAgent) checkIn(ctx context.Context, good map[string][]byte) (*wire.CheckInResponse, error) {
	nonce, err := a.api.Nonce(ctx, a.dev.ID)
	if err != nil {
		return nil, err
	}
	req := &wire.CheckInRequest{DeviceID: a.dev.ID, Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
		AgentVersion: "0.1.0", Slots: map[artifact.Kind]wire.Slot{}, Reports: a.reports, Nonce: nonce}
	if a.model.Version != "" {
		req.Slots[artifact.KindModel] = a.model
	}
	bound, err := wire.QuoteData(nonce, req)
	if err != nil {
		return nil, err
	}
	q, log, err := a.dev.Quote(bound)
	if err != nil {
		return nil, err
	}
	req.Evidence = wire.Evidence{AKCert: a.dev.AKCert, Quote: q, Log: log}
	resp, err := a.api.CheckIn(ctx, req)
	if err != nil {
		return nil, err
	}
	if resp.ReportsAccepted == len(a.reports) {
		a.reports = nil
	}
	for _, s := range resp.Slots {
		if s.Kind != artifact.KindModel || s.Action != "install" || s.Version == a.model.Version {
			continue
		}
		a.offered[s.Version] = true
		if s.Revert {
			a.reverts++
		}
		a.seq++
		rep := wire.Report{ID: fmt.Sprintf("%s-%d", a.dev.ID, a.seq), Kind: artifact.KindModel, Name: s.Name, Version: s.Version, At: time.Now()}
		if a.model.Version != "" && olderThan(s.Version, a.model.Version) {
			// The agent's anti-rollback floor refuses a version older than the committed one.
			rep.Outcome, rep.Cause = "install_error", "downgrade refused: anti-rollback floor"
		} else if content, ok := good[s.Version]; ok {
			sum := sha256.Sum256(content)
			a.dev.Measure("model", s.Name, s.Version, hex.EncodeToString(sum[:]))
			a.model = wire.Slot{Name: s.Name, Version: s.Version}
			rep.Outcome = "committed"
		} else {
			rep.Outcome, rep.Cause = "probe_failed", "accuracy 0.32 < 0.85"
		}
		a.reports = append(a.reports, rep)
	}
	return resp, nil
}

// TestSimulatedFleet drives a fleet of fake agents (1,000; 200 with -short) through the
// real server over HTTP — TPM-format quotes verified, fleet store, policy
// engine, audit log: a good rollout reaches 100 % of the fleet in waves; a bad one
// pauses itself in its first wave and the rest of the fleet is never offered it.
//
// It runs once per fleet store backend: sqlite, and PostgreSQL (internal/pgtest).
func TestSimulatedFleet(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { testSimulatedFleet(t, "") })
	t.Run("postgres", func(t *testing.T) { testSimulatedFleet(t, pg.Database(t)) })
}

func testSimulatedFleet(t *testing.T, db string) {
	n := 1000
	if testing.Short() {
		n = 200
	}
	ctx := context.Background()
	f := newFixtureOn(t, repository.KeyEd25519, db)
	f.clock.useReal()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), db))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	caKey, caCert, err := attestca.NewRoot("Test Attestation CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	good := map[string][]byte{"1.0.0": []byte("model 1.0.0")}
	bad := []byte("model 2.0.0, degraded")
	for v, b := range map[string][]byte{"1.0.0": good["1.0.0"], "2.0.0": bad} {
		if _, err := f.publish(artifact.KindModel, "vib", v, ".onnx", b, nil); err != nil {
			t.Fatal(err)
		}
	}
	var pol atomic.Pointer[policy.Policy]
	setPolicy := func(yaml string) {
		t.Helper()
		p, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(yaml)})
		if err != nil {
			t.Fatal(err)
		}
		pol.Store(p)
	}
	setPolicy(`version: 1
rollouts:
  - id: vib-1.0.0
    target: {kind: model, name: vib, version: 1.0.0}
    waves: [{percent: 10}, {percent: 50}, {percent: 100}]
`)
	if err := f.srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: roots, Policy: pol.Load}); err != nil {
		t.Fatal(err)
	}

	agents := make([]*fakeAgent, n)
	for i := range agents {
		d, err := attesttest.NewSoftDevice(caKey, caCert, fmt.Sprintf("device-%05d", i))
		if err != nil {
			t.Fatal(err)
		}
		agents[i] = &fakeAgent{dev: d, api: &deviceapi.Client{BaseURL: f.http.URL}, offered: map[string]bool{}}
	}
	round := func() {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, len(agents))
		work := make(chan *fakeAgent)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for a := range work {
					if _, err := a.checkIn(ctx, good); err != nil {
						errs <- fmt.Errorf("%s: %w", a.dev.ID, err)
					}
				}
			}()
		}
		for _, a := range agents {
			work <- a
		}
		close(work)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		f.srv.devices.plan(ctx, pol.Load(), time.Now())
	}
	count := func(version string) int {
		c := 0
		for _, a := range agents {
			if a.model.Version == version {
				c++
			}
		}
		return c
	}

	// A good rollout: each round the planner opens the next wave; the fleet converges.
	var seen []int
	for r := 0; r < 6 && count("1.0.0") < n; r++ {
		round()
		seen = append(seen, count("1.0.0"))
	}
	if got := count("1.0.0"); got != n {
		t.Fatalf("devices on 1.0.0 after rounds %v = %d; want all %d", seen, got, n)
	}
	if seen[0] == n {
		t.Fatalf("the whole fleet installed in the first round (%v); want waves", seen)
	}
	st, err := store.RolloutState(ctx, "vib-1.0.0")
	if err != nil || st.Status != policy.StatusCompleted {
		t.Fatalf("rollout vib-1.0.0 = %+v, %v; want completed", st, err)
	}

	// A bad rollout: its first wave fails its probes and the rollout pauses itself.
	setPolicy(`version: 1
rollouts:
  - id: vib-2.0.0
    target: {kind: model, name: vib, version: 2.0.0}
    pause: {max_failure_ratio: 0.2, min_reports: 5}
    waves: [{percent: 5, soak: 1h}, {percent: 100}]
  - id: vib-1.0.0
    target: {kind: model, name: vib, version: 1.0.0}
    waves: [{percent: 100}]
`)
	for range 3 {
		round()
	}
	st, err = store.RolloutState(ctx, "vib-2.0.0")
	if err != nil || st.Status != policy.StatusPaused {
		t.Fatalf("rollout vib-2.0.0 = %+v, %v; want paused", st, err)
	}
	offered := 0
	for _, a := range agents {
		if a.offered["2.0.0"] {
			offered++
			if w := pol.Load().Rollout("vib-2.0.0").WaveOf(a.dev.ID); w != 0 {
				t.Fatalf("%s (wave %d) was offered the bad version", a.dev.ID, w)
			}
		}
	}
	if offered == 0 || offered > n/10 {
		t.Fatalf("%d of %d devices were offered 2.0.0; want only the first wave (about 5%%)", offered, n)
	}
	if got := count("1.0.0"); got != n {
		t.Fatalf("devices still on 1.0.0 = %d; want all %d", got, n)
	}
	kpi := fleet.ComputeRollout("vib-2.0.0", st.Started, mustReports(t, store, "vib-2.0.0"))

	// A good 1.1.0 reaches its first wave and is then aborted by an operator: the server
	// sends that wave back to 1.0.0 (a revert), which devices that raised their
	// anti-rollback floor refuse; the rest of the fleet is never offered 1.1.0.
	good["1.1.0"] = []byte("model 1.1.0")
	if _, err := f.publish(artifact.KindModel, "vib", "1.1.0", ".onnx", good["1.1.0"], nil); err != nil {
		t.Fatal(err)
	}
	setPolicy(`version: 1
rollouts:
  - id: vib-1.1.0
    target: {kind: model, name: vib, version: 1.1.0}
    waves: [{percent: 5, soak: 1h}, {percent: 100}]
  - id: vib-1.0.0
    target: {kind: model, name: vib, version: 1.0.0}
    waves: [{percent: 100}]
`)
	round()
	first := count("1.1.0")
	if first == 0 || first > n/10 {
		t.Fatalf("%d devices on 1.1.0 after its first wave; want about 5%%", first)
	}
	rs, _ := store.RolloutState(ctx, "vib-1.1.0")
	aborted, ev, err := policy.Abort(rs, "operator:rita", "customer complaint", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := store.SaveRollout(ctx, aborted, []policy.Event{ev}); err != nil {
		t.Fatal(err)
	}
	round()
	reverted := 0
	for _, a := range agents {
		if a.model.Version == "1.1.0" && a.reverts > 0 {
			reverted++
		}
		if a.model.Version != "1.1.0" && a.offered["1.1.0"] {
			t.Fatalf("%s was offered 1.1.0 but is on %s", a.dev.ID, a.model.Version)
		}
	}
	if reverted != first || count("1.1.0") != first {
		t.Fatalf("after abort: %d of the %d devices on 1.1.0 were sent back to 1.0.0; want all (and refused by their floor)", reverted, first)
	}
	t.Logf("fleet of %d: waves of the good rollout reached %v; bad rollout paused after %d offers; KPI %+v", n, seen, offered, kpi)
}

func mustReports(t *testing.T, s *fleet.Store, rollout string) []wire.Report {
	t.Helper()
	r, err := s.Reports(context.Background(), fleet.ReportFilter{RolloutID: rollout})
	if err != nil {
		t.Fatal(err)
	}
	return r
}
