package agent

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/updater"
)

// TestMeasurementLogStaysBounded: on a device never rebooted, every runtime restart and
// trial adds to the log; past eventlog.MaxEvents the verifier would find it malformed
// and quarantine the device. The log is compacted (the latest event of each artifact,
// re-extended into the reset PCR) and still replays to the PCR, naming what is loaded.
func TestMeasurementLogStaysBounded(t *testing.T) {
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	path := filepath.Join(t.TempDir(), "measurements.json")
	m, err := OpenMeasurementLog(ctx, path, tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	sum := func(i int) string { return fmt.Sprintf("%064x", i) }
	const n = compactAt + 300
	for i := range n {
		kind, name := "model", "vibration"
		if i%3 == 0 {
			kind, name = "runtime", "onnxruntime"
		}
		if err := m.Measure(ctx, kind, name, fmt.Sprintf("1.0.%d", i), sum(i), ""); err != nil {
			t.Fatalf("Measure %d: %v", i, err)
		}
	}
	log := m.Log()
	if len(log) > compactAt {
		t.Fatalf("log holds %d events after %d measurements; want at most %d", len(log), n, compactAt)
	}
	if err := log.Validate(); err != nil {
		t.Fatalf("the compacted log does not validate: %v", err)
	}
	pcrs, err := tpm.ReadPCRs(ctx, m.PCR())
	if err != nil {
		t.Fatal(err)
	}
	if want := log.Replay()[m.PCR()]; !bytes.Equal(want[:], pcrs[m.PCR()]) {
		t.Fatal("the compacted log does not replay to the PCR")
	}
	latest := log.Latest()
	lastModel, lastRuntime := n-1, n-1
	for lastModel%3 == 0 {
		lastModel--
	}
	for lastRuntime%3 != 0 {
		lastRuntime--
	}
	if got := latest[[2]string{"model", "vibration"}].Version; got != fmt.Sprintf("1.0.%d", lastModel) {
		t.Errorf("latest model = %s; want the last measured, 1.0.%d", got, lastModel)
	}
	if got := latest[[2]string{"runtime", "onnxruntime"}].Version; got != fmt.Sprintf("1.0.%d", lastRuntime) {
		t.Errorf("latest runtime = %s; want 1.0.%d", got, lastRuntime)
	}
	// Reopened, the stored log still replays: kept, not reset.
	m2, err := OpenMeasurementLog(ctx, path, tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(m2.Log()) != len(log) {
		t.Fatalf("reopened log holds %d events; want the %d stored", len(m2.Log()), len(log))
	}
}

// TestQuoteHoldsOffMeasurements: no measurement lands between the log handed to a quote
// and the quote itself (the supervisor re-measuring a restarted runtime during a
// check-in made the quote cover an event the log lacked).
func TestQuoteHoldsOffMeasurements(t *testing.T) {
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	m, err := OpenMeasurementLog(ctx, filepath.Join(t.TempDir(), "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	measured := make(chan error, 1)
	err = m.Quote(func(log eventlog.Log) error {
		go func() { measured <- m.Measure(ctx, "runtime", "onnxruntime", "1.24.0", fmt.Sprintf("%064x", 1), "") }()
		select {
		case err := <-measured:
			return fmt.Errorf("a measurement (%v) landed while the quote held the log", err)
		case <-time.After(200 * time.Millisecond):
		}
		if len(log) != 0 {
			return fmt.Errorf("log handed to the quote = %d events; want 0", len(log))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-measured; err != nil {
		t.Fatal(err)
	}
	if len(m.Log()) != 1 {
		t.Fatalf("log after the quote = %d events; want the measurement that waited", len(m.Log()))
	}
}

// TestServerClientHasATimeout: the device API client times out with or without a
// server CA of its own (without one it was http.DefaultClient, which never does).
func TestServerClientHasATimeout(t *testing.T) {
	if c := serverClient(nil); c.Timeout <= 0 || c == http.DefaultClient {
		t.Fatalf("serverClient(nil) timeout = %v; want one", c.Timeout)
	}
}

// TestCommandJudgeKilledWholeAtTheDeadline: a judge command whose child outlives the
// shell (holding its output) ends at the trial deadline, child included; the agent used
// to wait for the child, its round blocked.
func TestCommandJudgeKilledWholeAtTheDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	v := CommandJudge("sleep 30; true").Judge(ctx, updater.Trial{})
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("judge returned after %v; want the deadline", took)
	}
	if v.Pass {
		t.Fatal("a judge killed at its deadline passed")
	}
	if v := CommandJudge("echo fine").Judge(context.Background(), updater.Trial{}); !v.Pass {
		t.Fatalf("echo fine = %+v; want a pass", v)
	}
	if v := CommandJudge("yes | head -c 1000000; exit 3").Judge(context.Background(), updater.Trial{}); v.Pass || !strings.Contains(v.Reason, "exit status 3") || len(v.Reason) > 300 {
		t.Fatalf("a failing chatty judge = %q; want its exit status and the tail of its output", v.Reason)
	}
}
