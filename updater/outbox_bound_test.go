package updater

import (
	"context"
	"encoding/json"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
)

// TestRecordCheckInIsBounded: the check-in result holds the server's words (its
// reasons, its error body); it is stored bounded and escaped, so that a hostile server
// can neither grow the outbox nor break 'edgeward-agent status' (whose socket answer
// is read up to 1 MiB: a 2 MiB result made it fail with EOF, found from outside).
func TestRecordCheckInIsBounded(t *testing.T) {
	ctx := context.Background()
	o, err := OpenOutbox(ctx, filepath.Join(t.TempDir(), "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.RecordCheckIn(ctx, time.Now(), "check-in: 500: \x1b[2J"+strings.Repeat("x", 2<<20)); err != nil {
		t.Fatal(err)
	}
	_, got, err := o.LastCheckIn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > maxCheckInResult+64 || strings.Contains(got, "\x1b") || !strings.HasPrefix(got, `check-in: 500: \x1b[2J`) || !strings.Contains(got, "bytes more)") {
		t.Errorf("stored result of %d bytes, starting %q; want it bounded near %d and escaped", len(got), got[:min(len(got), 40)], maxCheckInResult)
	}
}

// TestReportCauseIsBounded: a report's cause (which may carry a server's or a mirror's
// words) is stored bounded and escaped.
func TestReportCauseIsBounded(t *testing.T) {
	ctx := context.Background()
	o, err := OpenOutbox(ctx, filepath.Join(t.TempDir(), "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	a := &Agent{cfg: AgentConfig{Outbox: o, Now: time.Now, Logger: slog.New(slog.DiscardHandler)}}
	a.report(ctx, wire.Report{Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeInfrastructure, Cause: "GET: 500: \x1b[2J" + strings.Repeat("x", 64<<10)})
	msgs, err := o.Due(ctx, time.Now().Add(time.Hour), 10)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("due = %v, %v", msgs, err)
	}
	var rep wire.Report
	if err := json.Unmarshal(msgs[0].Body, &rep); err != nil {
		t.Fatal(err)
	}
	if len(rep.Cause) > maxReportCause+64 || strings.Contains(rep.Cause, "\x1b") {
		t.Errorf("stored cause of %d bytes (%q…); want bounded near %d and escaped", len(rep.Cause), rep.Cause[:30], maxReportCause)
	}
}
