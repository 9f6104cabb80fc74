package fleet

import (
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/wire"
)

func TestComputeRolloutBytesSaved(t *testing.T) {
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	reps := []wire.Report{
		{DeviceID: "a", RolloutID: "r", Outcome: wire.OutcomeCommitted, At: at, Bytes: 1000, Delta: "cdc-zstd", BytesSaved: 99000},
		{DeviceID: "b", RolloutID: "r", Outcome: wire.OutcomeCommitted, At: at, Bytes: 100000},
		{DeviceID: "c", RolloutID: "r", Outcome: wire.OutcomeCommitted, At: at, Bytes: 101000, BytesSaved: -1000, DeltaFallback: "download delta: hash mismatch"},
		{DeviceID: "d", RolloutID: "other", Outcome: wire.OutcomeCommitted, At: at, Bytes: 1000, Delta: "cdc-zstd", BytesSaved: 99000},
	}
	k := ComputeRollout("r", at, reps)
	if k.BytesSaved != 98000 || k.DeltaInstalls != 1 || k.DeltaFallbacks != 1 || k.BytesDownloaded != 202000 {
		t.Errorf("ComputeRollout: saved %d, delta installs %d, fallbacks %d, downloaded %d; want 98000, 1, 1, 202000", k.BytesSaved, k.DeltaInstalls, k.DeltaFallbacks, k.BytesDownloaded)
	}
}
