package agent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"syscall"
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

// TestMeasurementLogOnFullDisk: a device restarted on a full disk must still measure
// what it loads and serve. Open (a new log: the PCR reset) and Measure succeed although
// the file cannot be written; the log in memory replays to the PCR (what quotes cover)
// and Unsaved says the file is behind. A restart meanwhile finds the stale file not
// replaying and starts a new log, consistent again. Once there is room the next
// measurement saves the whole log, which a restart then keeps. (Before, Open and
// Measure failed with ENOSPC, and the agent's device mode stopped before serving.)
func TestMeasurementLogOnFullDisk(t *testing.T) {
	ctx := context.Background()
	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	base := t.TempDir()
	fill, free := fullDisk(t, base)
	path := filepath.Join(base, "measurements.json")
	m, err := OpenMeasurementLog(ctx, path, tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Measure(ctx, "model", "iris", "1.0.0", fmt.Sprintf("%064x", 1), ""); err != nil {
		t.Fatal(err)
	}
	replays := func(m *MeasurementLog, events int) {
		t.Helper()
		log := m.Log()
		pcrs, err := tpm.ReadPCRs(ctx, m.PCR())
		if err != nil {
			t.Fatal(err)
		}
		if want := log.Replay()[m.PCR()]; len(log) != events || !bytes.Equal(want[:], pcrs[m.PCR()]) {
			t.Fatalf("log of %d events (want %d) replays to the PCR: %v", len(log), events, bytes.Equal(want[:], pcrs[m.PCR()]))
		}
	}
	fill()
	if err := m.Measure(ctx, "runtime", "onnxruntime", "1.24.3", fmt.Sprintf("%064x", 2), ""); err != nil {
		t.Fatalf("Measure on a full disk = %v; want nil (the PCR extended, the log in memory)", err)
	}
	replays(m, 2)
	if err := m.Unsaved(); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Unsaved on a full disk = %v; want ENOSPC", err)
	}
	// A restart on the full disk: the file (one event) is behind the PCR (two).
	m2, err := OpenMeasurementLog(ctx, path, tpm, 0)
	if err != nil {
		t.Fatalf("OpenMeasurementLog on a full disk = %v; want a new log", err)
	}
	replays(m2, 0)
	if err := m2.Measure(ctx, "model", "iris", "1.0.0", fmt.Sprintf("%064x", 1), ""); err != nil {
		t.Fatal(err)
	}
	replays(m2, 1)
	free()
	if err := m2.Measure(ctx, "runtime", "onnxruntime", "1.24.3", fmt.Sprintf("%064x", 2), ""); err != nil {
		t.Fatal(err)
	}
	if err := m2.Unsaved(); err != nil {
		t.Fatalf("Unsaved once there is room = %v; want nil", err)
	}
	m3, err := OpenMeasurementLog(ctx, path, tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	replays(m3, 2) // kept, not reset
}
