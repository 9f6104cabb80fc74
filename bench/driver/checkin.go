package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// CheckInResult is row 4: quotes verified per second (the crypto limit) beside check-ins
// per second (quote verification with nonce consumption, then the fleet store's Attest
// and Decide into sqlite), in-process, the way the device API will call them.
type CheckInResult struct {
	Evidence string `json:"evidence"`
	Devices  int    `json:"devices"`
	Quotes   int    `json:"quotes"`
	// Per second at 1 and 2 goroutines; medians over rounds.
	RawVerify1 float64 `json:"raw_quote_verify_per_s_1"`
	RawVerify2 float64 `json:"raw_quote_verify_per_s_2"`
	Store1     float64 `json:"store_only_per_s_1"`
	Store2     float64 `json:"store_only_per_s_2"`
	CheckIn1   float64 `json:"check_ins_per_s_1"`
	CheckIn2   float64 `json:"check_ins_per_s_2"`
	// CheckIn2Tmpfs is CheckIn2 with the sqlite file on tmpfs (/dev/shm): the same code
	// when fsync is free, to show where the time goes.
	CheckIn2Tmpfs float64 `json:"check_ins_per_s_2_tmpfs"`
	NotMeasured   string  `json:"not_measured"`
	Rounds        int     `json:"rounds"`
	// HTTP is whole check-ins over HTTP against `edgeward server` processes: sqlite,
	// PostgreSQL, and 3 replicas on PostgreSQL behind nginx, side by side in one run.
	HTTP []CheckInHTTPRow `json:"http,omitempty"`
}

const checkInNotMeasured = "the rows above call verify.Check, fleet.Store.Attest and fleet.Store.Decide in-process, without HTTP; whole check-ins through the device API (HTTP, nonce, quote verification, one transaction with the audit record) are the table below, against real server processes, and repo-server's BenchmarkCheckIn among the Go micro-benchmarks (in one process). Both use plain HTTP on loopback: no TLS or mTLS handshake (deployments serve devices over mTLS, --tls-listen), no network"

const checkInPolicy = `
rollouts:
  - id: vib-3.1.0
    target: {kind: model, name: vib, version: 3.1.0}
    waves:
      - {percent: 10, soak: 1h}
      - {percent: 100}
`

// quoteSet is evidence from the simulator TPM: one quote per device, over a nonce the
// server's Nonces issued to that device.
type quoteSet struct {
	policy verify.Policy
	ids    []string
	nonces [][]byte
	ev     []verify.Evidence
}

func makeQuotes(ctx context.Context, first, n int, nonces *verify.Nonces) (*quoteSet, error) {
	maker, err := attesttest.NewManufacturer("Bench TPM")
	if err != nil {
		return nil, err
	}
	signer, root, err := attestca.NewRoot("Bench Attestation CA", 24*time.Hour)
	if err != nil {
		return nil, err
	}
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: maker.Roots(),
		ManufacturerIntermediates: poolWith(maker.Intermediate)})
	if err != nil {
		return nil, err
	}
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		return nil, err
	}
	defer tpm.Close()
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		return nil, err
	}
	srv := httptest.NewServer(ca.Handler())
	ak, err := (&attest.EnrollClient{URL: srv.URL}).Enroll(ctx, tpm)
	srv.Close()
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	if err := tpm.ResetPCR(ctx, 16); err != nil {
		return nil, err
	}
	var log eventlog.Log
	var expected []eventlog.Artifact
	for _, e := range []eventlog.Event{
		{PCR: 16, Kind: "runtime", Name: "onnxruntime", Version: "1.24.3", SHA256: strings.Repeat("1", 64)},
		{PCR: 16, Kind: "model", Name: "vib", Version: "3.0.0", SHA256: strings.Repeat("3", 64)},
	} {
		if _, err := tpm.Measure(ctx, e); err != nil {
			return nil, err
		}
		log = append(log, e)
		expected = append(expected, eventlog.Artifact{Kind: e.Kind, Name: e.Name, Version: e.Version, SHA256: e.SHA256})
	}
	qs := &quoteSet{policy: verify.Policy{Roots: ca.Roots(), Expected: expected, PermanentIdentifier: ak.PermanentIdentifier}}
	for i := first; i < first+n; i++ {
		id := fmt.Sprintf("dev-%05d", i)
		nonce, err := nonces.Issue(id)
		if err != nil {
			return nil, err
		}
		q, err := tpm.Quote(ctx, nonce, []int{0, 16})
		if err != nil {
			return nil, err
		}
		qs.ids, qs.nonces = append(qs.ids, id), append(qs.nonces, nonce)
		qs.ev = append(qs.ev, verify.Evidence{AKCert: ak.Certificate.Raw, Quote: *q, Log: log})
	}
	return qs, nil
}

func poolWith(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}

// parallel runs f(i) for i in [0, n) on workers goroutines and returns calls per second.
func parallel(n, workers int, f func(i int) error) (float64, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	t := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(t).Seconds(), nil
}

func benchCheckIn(ctx context.Context, cfg *config) (*CheckInResult, error) {
	rounds := max(3, cfg.rounds-2)
	n := cfg.checkins
	slog.SetDefault(slog.New(slog.DiscardHandler)) // the attestation CA logs each enrollment
	// One nonce store for the whole run, with enough room for every round's quotes.
	nonces := verify.NewNonces(verify.NoncesConfig{TTL: time.Hour, Max: 4 * n})
	logf("check-in: %d quotes from the simulator TPM per round", n)
	res := &CheckInResult{Devices: 3 * n, Quotes: n, Rounds: rounds,
		Evidence:    "TPM 2.0 reference simulator (in-process), RSA-2048 EK and AK, AK certificate from attest/attestca (ECDSA P-256), quote over PCRs 0 and 16 with a 2-event measurement log; verified by attest/verify",
		NotMeasured: checkInNotMeasured}
	if cfg.checkinHTTPOnly {
		var err error
		res.HTTP, err = benchCheckInHTTP(ctx, cfg, n, rounds)
		return res, err
	}
	dir, err := os.MkdirTemp(cfg.work, "checkin-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	st, err := fleet.Open(ctx, filepath.Join(dir, "fleet.db"))
	if err != nil {
		return nil, err
	}
	defer st.Close()
	pol, err := policy.Parse(policy.File{Name: "bench.yaml", Data: []byte(checkInPolicy)})
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	shm, err := os.MkdirTemp("/dev/shm", "edgeward-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(shm)
	stTmpfs, err := fleet.Open(ctx, filepath.Join(shm, "fleet.db"))
	if err != nil {
		return nil, err
	}
	defer stTmpfs.Close()
	for i := range 3 * n {
		s := st
		if i >= 2*n {
			s = stTmpfs
		}
		if err := s.Enroll(ctx, fmt.Sprintf("dev-%05d", i), map[string]string{"line": "press"}, t0); err != nil {
			return nil, err
		}
	}
	store := func(now time.Time, id string, v verify.Verdict) error {
		st := st
		if id >= fmt.Sprintf("dev-%05d", 2*n) {
			st = stTmpfs
		}
		pv := policy.VerdictUntrusted
		if v.Trusted {
			pv = policy.VerdictTrusted
		}
		if err := st.Attest(ctx, pol, id, pv, "", now); err != nil {
			return err
		}
		_, err := st.Decide(ctx, pol, nil, fleet.CheckIn{ID: id, Hardware: "x86_64", AgentVersion: "0.1.0",
			Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}}, At: now})
		return err
	}
	var raw1, raw2, st1, st2, ci1, ci2, ciT []float64
	for r := range rounds {
		// One set per third of the fleet, one consumed by each check-in measurement
		// (nonces are single-use, one outstanding per device); the last third is in the
		// tmpfs store.
		sets := make([]*quoteSet, 3)
		for k := range sets {
			if sets[k], err = makeQuotes(ctx, k*n, n, nonces); err != nil {
				return nil, err
			}
		}
		qs := sets[0]
		now := time.Now()
		rawF := func(i int) error {
			if v := verify.Verify(qs.policy, qs.ev[i], qs.nonces[i], now); !v.Trusted {
				return fmt.Errorf("quote %d not trusted: %+v", i, v.Reasons)
			}
			return nil
		}
		trusted := verify.Verdict{Trusted: true}
		storeF := func(i int) error { return store(now, qs.ids[i], trusted) }
		checkF := func(s *quoteSet) func(i int) error {
			return func(i int) error {
				v := verify.Check(nonces, s.ids[i], s.nonces[i], nil, s.policy, s.ev[i], time.Now())
				if !v.Trusted {
					return fmt.Errorf("check-in %d not trusted: %+v", i, v.Reasons)
				}
				return store(time.Now(), s.ids[i], v)
			}
		}
		var x float64
		for _, m := range []struct {
			dst     *[]float64
			workers int
			f       func(int) error
		}{{&raw1, 1, rawF}, {&raw2, 2, rawF}, {&st1, 1, storeF}, {&st2, 2, storeF},
			{&ci1, 1, checkF(sets[0])}, {&ci2, 2, checkF(sets[1])}, {&ciT, 2, checkF(sets[2])}} {
			if x, err = parallel(n, m.workers, m.f); err != nil {
				return nil, err
			}
			*m.dst = append(*m.dst, x)
		}
		logf("check-in round %d: raw verify %.0f/s (1) %.0f/s (2); store only %.0f/s (1) %.0f/s (2); check-ins %.0f/s (1) %.0f/s (2) %.0f/s (2, tmpfs)",
			r, raw1[r], raw2[r], st1[r], st2[r], ci1[r], ci2[r], ciT[r])
	}
	res.RawVerify1, res.RawVerify2 = round(median(raw1), 0), round(median(raw2), 0)
	res.Store1, res.Store2 = round(median(st1), 0), round(median(st2), 0)
	res.CheckIn1, res.CheckIn2 = round(median(ci1), 0), round(median(ci2), 0)
	res.CheckIn2Tmpfs = round(median(ciT), 0)
	if res.HTTP, err = benchCheckInHTTP(ctx, cfg, n, rounds); err != nil {
		return nil, err
	}
	return res, nil
}
