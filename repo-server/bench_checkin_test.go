package reposerver

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
)

// BenchmarkCheckIn measures whole device check-ins over HTTP: nonce, TPM-format quote
// verification (AK certificate chain, ECDSA signature, PCR digest, log replay), the
// fleet store's writes (facts, verdict, decision) and the audit records — the server's
// cost per check-in. Reported as check-ins/s (ns/op is per check-in) and as CPU time per
// check-in (cpu-µs/checkin: the process's user and system time over the timed loop,
// from getrusage), the figure that stays meaningful on a loaded machine: 2 cores give at
// most 2e6 / cpu-µs check-ins per second.
//
// A server sees many devices at once: 64 check-ins are in flight (256 devices, each
// checking in one at a time), not GOMAXPROCS, so the figure is the server's throughput
// rather than one client's round-trip latency. The devices' own work (signing quotes)
// runs in this process too, on the same cores.
func BenchmarkCheckIn(b *testing.B) { benchmarkCheckIn(b, "") }

// BenchmarkCheckInPostgres is BenchmarkCheckIn with the fleet store and the audit log
// in PostgreSQL (a cluster of internal/pgtest on this machine, with PostgreSQL's
// default durability: fsync and synchronous commits on).
func BenchmarkCheckInPostgres(b *testing.B) { benchmarkCheckIn(b, pgDurable.Database(b)) }

// benchmarkCheckIn runs BenchmarkCheckIn on the server database db (DBLocation).
func benchmarkCheckIn(b *testing.B, db string) {
	ctx := context.Background()
	f := newFixtureOn(b, repository.KeyEd25519, db)
	f.clock.useReal()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), db))
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	caKey, caCert, _ := attestca.NewRoot("Bench Attestation CA", time.Hour)
	roots := x509.NewCertPool()
	roots.AddCert(caCert)
	p, _ := policy.Parse(policy.File{Name: "p.yaml", Data: []byte("version: 1\n")})
	// Each device checks in as fast as its turn comes, far beyond the per-device bound.
	if err := f.srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: roots, Policy: func() *policy.Policy { return p }, CheckInBurst: -1}); err != nil {
		b.Fatal(err)
	}
	const devices = 256
	// Keep-alive connections for every device in flight, as each device keeps its own
	// (http.DefaultClient keeps 2 per host: with 64 in flight nearly every request
	// opened a new connection, which cost both sides CPU a real fleet does not spend).
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: devices, MaxIdleConnsPerHost: devices}}
	defer hc.CloseIdleConnections()
	agents := make([]*fakeAgent, devices)
	locks := make([]sync.Mutex, devices)
	for i := range agents {
		d, err := attesttest.NewSoftDevice(caKey, caCert, fmt.Sprintf("bench-%04d", i))
		if err != nil {
			b.Fatal(err)
		}
		agents[i] = &fakeAgent{dev: d, api: &deviceapi.Client{BaseURL: f.http.URL, HTTP: hc}, offered: map[string]bool{}}
	}
	var next atomic.Int64
	b.SetParallelism(64 / runtime.GOMAXPROCS(0))
	b.ResetTimer()
	cpu0 := processCPU()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % devices
			locks[i].Lock()
			_, err := agents[i].checkIn(ctx, nil)
			locks[i].Unlock()
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "checkins/s")
	b.ReportMetric(float64((processCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/checkin")
}

// processCPU is the user and system CPU time this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
