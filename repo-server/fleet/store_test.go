package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func openStore(t *testing.T, db opener) (*Store, string) {
	t.Helper()
	path := db(t)
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func testOpenMigratesOnceAndUsesWAL(t *testing.T, db opener) {
	ctx := context.Background()
	s, path := openStore(t, db)
	if s.Engine() == "sqlite" {
		var mode string
		if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q, %v; want wal", mode, err)
		}
	}
	if err := s.Enroll(ctx, "dev-1", map[string]string{"site": "berlin"}, t0); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatalf("reopen = %v", err)
	}
	if d, err := s2.Device(ctx, "dev-1"); err != nil || d.Labels["site"] != "berlin" {
		t.Errorf("after reopen: %+v, %v", d, err)
	}
	// A database from a newer server is left alone.
	newer := len(migrations) + 1
	if err := s2.setSchemaVersion(ctx, s2.db, newer); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	_, err = Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) || !strings.Contains(err.Error(), fmt.Sprintf("schema version %d, this server knows up to %d", newer, len(migrations))) {
		t.Errorf("Open(newer schema) = %v; want a refusal naming both versions", err)
	}
	t.Logf("refusal: %v", err)
}

func testDeviceLifecycle(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	// EK-derived IDs (urn:ek:sha256:<base64>) are accepted.
	if err := s.Enroll(ctx, "urn:ek:sha256:n4bQgYhMfWWaL+qgxVrQFaO/TxsrC4Is0V1sFbDwCgg=", nil, t0); err != nil {
		t.Errorf("Enroll(EK-derived ID) = %v", err)
	}
	if _, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", At: t0}); !errors.Is(err, ErrNotFound) {
		t.Errorf("CheckIn(unknown) = %v; want ErrNotFound", err)
	}
	if err := s.Enroll(ctx, "dev-1", map[string]string{"line": "press"}, t0); err != nil {
		t.Fatal(err)
	}
	if err := s.Enroll(ctx, "dev-1", nil, t0.Add(time.Second)); !errors.Is(err, ErrExists) {
		t.Errorf("Enroll twice = %v; want ErrExists", err)
	}
	d, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", Hardware: "aarch64", AgentVersion: "0.5.0",
		Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}},
		Attrs: map[string]any{"ram_mb": 1024}, At: t0})
	if err != nil {
		t.Fatal(err)
	}
	if d.Hardware != "aarch64" || d.Labels["line"] != "press" || d.Attrs["ram_mb"] != 1024.0 || !d.LastCheckIn.Equal(t0) || !d.EnrolledAt.Equal(t0) {
		t.Errorf("CheckIn = %+v", d)
	}
	// A failed install marks the version; the next check-in keeps the mark.
	rep := wire.Report{DeviceID: "dev-1", RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: wire.OutcomeProbeFailed, Cause: "accuracy 0.9 < 0.95", At: t0.Add(time.Minute),
		Probe: wire.Probe{Accuracy: 0.9, P99Ms: 1.25, PeakRSSMB: 61.5}, Bytes: 1000, Delta: "cdc-zstd", BytesSaved: 99000}
	if err := s.AddReport(ctx, rep); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Reports(ctx, ReportFilter{DeviceID: "dev-1"}); err != nil || len(got) != 1 || got[0].Probe != rep.Probe || got[0].Delta != rep.Delta || got[0].BytesSaved != rep.BytesSaved || got[0].Bytes != rep.Bytes {
		t.Fatalf("Reports = %+v, %v; want the report with its probe %+v", got, err, rep.Probe)
	}
	d, err = s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.0.0"}}, At: t0.Add(2 * time.Minute)})
	if err != nil || d.Slots[artifact.KindModel].Failed != "3.1.0" {
		t.Fatalf("after failed report: slot %+v, %v; want Failed 3.1.0", d.Slots[artifact.KindModel], err)
	}
	// Another version keeps it; Previous follows.
	d, err = s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.2.0"}}, At: t0.Add(3 * time.Minute)})
	if sl := d.Slots[artifact.KindModel]; err != nil || sl.Failed != "3.1.0" || sl.Previous != "3.0.0" {
		t.Errorf("after upgrade: slot %+v, %v; want Previous 3.0.0 and Failed 3.1.0", sl, err)
	}
	if err := s.ClearFailed(ctx, "dev-1", artifact.KindModel); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(ctx, "dev-1"); d.Slots[artifact.KindModel].Failed != "" || d.Slots[artifact.KindModel].Retry != "3.1.0" {
		t.Errorf("ClearFailed left %+v; want no Failed, Retry 3.1.0 (the agent is told to try it again)", d.Slots[artifact.KindModel])
	}
	d, _ = s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "3.2.0"}}, At: t0.Add(4 * time.Minute)})
	if sl := d.Slots[artifact.KindModel]; sl.Previous != "3.0.0" || sl.Retry != "3.1.0" {
		t.Errorf("same version again: slot %+v; want Previous still 3.0.0, Retry kept", sl)
	}
	// The retry's result ends it.
	if err := s.AddReport(ctx, wire.Report{DeviceID: "dev-1", RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: wire.OutcomeProbeFailed, Cause: "again", At: t0.Add(5 * time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(ctx, "dev-1"); d.Slots[artifact.KindModel].Retry != "" || d.Slots[artifact.KindModel].Failed != "3.1.0" {
		t.Errorf("after the retry failed: slot %+v; want Failed 3.1.0 and no Retry", d.Slots[artifact.KindModel])
	}
	if err := s.ClearFailed(ctx, "dev-1", artifact.KindModel); err != nil {
		t.Fatal(err)
	}
	// An infrastructure failure (no space, network, runtime down) is retried by the
	// device: stored, but the version is not marked Failed.
	infra := rep
	infra.Outcome, infra.Version, infra.Cause = wire.OutcomeInfrastructure, "3.3.0", "no space left for the target (attempt 1, retrying in 1m0s)"
	if err := s.AddReport(ctx, infra); err != nil {
		t.Fatal(err)
	}
	if d, _ := s.Device(ctx, "dev-1"); d.Slots[artifact.KindModel].Failed != "" {
		t.Errorf("after an infrastructure report: slot %+v; want no Failed mark", d.Slots[artifact.KindModel])
	}
	// A committed report clears the mark too.
	rep.Outcome, rep.Version = wire.OutcomeInstallError, "3.3.0"
	s.AddReport(ctx, rep)
	rep.Outcome, rep.At = wire.OutcomeCommitted, rep.At.Add(time.Hour)
	s.AddReport(ctx, rep)
	if d, _ := s.Device(ctx, "dev-1"); d.Slots[artifact.KindModel].Failed != "" {
		t.Errorf("after committed report: slot %+v; want no Failed", d.Slots[artifact.KindModel])
	}
	// Verdicts, quarantine, labels.
	if err := s.RecordVerdict(ctx, "dev-1", policy.VerdictTrusted, "", t0); err != nil {
		t.Fatal(err)
	}
	if err := s.RecordVerdict(ctx, "nobody", policy.VerdictTrusted, "", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("RecordVerdict(unknown) = %v; want ErrNotFound", err)
	}
	if err := s.SetQuarantine(ctx, "dev-1", true, "tampered"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLabels(ctx, "dev-1", map[string]string{"site": "tokyo"}); err != nil {
		t.Fatal(err)
	}
	d, _ = s.Device(ctx, "dev-1")
	if d.Verdict != policy.VerdictTrusted || !d.VerdictAt.Equal(t0) || !d.Quarantined || d.QuarantineReason != "tampered" || d.Labels["site"] != "tokyo" || d.Labels["line"] != "" {
		t.Errorf("device = %+v", d)
	}
	if err := s.SetQuarantine(ctx, "nobody", true, ""); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetQuarantine(unknown) = %v; want ErrNotFound", err)
	}
	vs, err := s.Verdicts(ctx, time.Time{})
	if err != nil || len(vs) != 1 || vs[0].DeviceID != "dev-1" {
		t.Errorf("Verdicts = %+v, %v", vs, err)
	}
	if err := s.ClearFailed(ctx, "nobody", artifact.KindModel); !errors.Is(err, ErrNotFound) {
		t.Errorf("ClearFailed(unknown) = %v; want ErrNotFound", err)
	}
}

func testInvalidInput(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	s.Enroll(ctx, "dev-1", nil, t0)
	long := strings.Repeat("x", 200)
	manyLabels := map[string]string{}
	for i := range MaxLabels + 1 {
		manyLabels[string(rune('a'+i%26))+strings.Repeat("a", i/26+1)] = "v"
	}
	tests := []struct {
		name string
		err  error
	}{
		{"empty id", s.Enroll(ctx, "", nil, t0)},
		{"id with space", s.Enroll(ctx, "a b", nil, t0)},
		{"id with dot-dot start", s.Enroll(ctx, "../x", nil, t0)},
		{"long id", s.Enroll(ctx, long, nil, t0)},
		{"bad label key", s.Enroll(ctx, "dev-2", map[string]string{"Bad Key": "v"}, t0)},
		{"too many labels", s.Enroll(ctx, "dev-2", manyLabels, t0)},
		{"long label value", s.SetLabels(ctx, "dev-1", map[string]string{"k": strings.Repeat("v", MaxLabelValue+1)})},
		{"bad agent version", func() error {
			_, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", AgentVersion: "latest", At: t0})
			return err
		}()},
		{"bad slot kind", func() error {
			_, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{"probe": {}}, At: t0})
			return err
		}()},
		{"bad slot version", func() error {
			_, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "m", Version: "x"}}, At: t0})
			return err
		}()},
		{"huge attrs", func() error {
			_, err := s.CheckIn(ctx, CheckIn{ID: "dev-1", Attrs: map[string]any{"k": strings.Repeat("x", MaxAttrsBytes)}, At: t0})
			return err
		}()},
		{"no time", func() error { _, err := s.CheckIn(ctx, CheckIn{ID: "dev-1"}); return err }()},
		{"bad outcome", s.AddReport(ctx, wire.Report{DeviceID: "dev-1", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: "meh", At: t0})},
		{"bad report version", s.AddReport(ctx, wire.Report{DeviceID: "dev-1", Kind: artifact.KindModel, Name: "m", Version: "v1", Outcome: wire.OutcomeCommitted, At: t0})},
		// A report ID of 6 MiB went whole into the audit log and the marks (found from outside).
		{"huge report id", s.AddReport(ctx, wire.Report{ID: strings.Repeat("x", 129), DeviceID: "dev-1", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: t0})},
		{"report id with control characters", s.AddReport(ctx, wire.Report{ID: "r\x1b[2J", DeviceID: "dev-1", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: t0})},
		{"empty verdict", s.RecordVerdict(ctx, "dev-1", "", "", t0)},
		{"rollout without id", s.SaveRollout(ctx, policy.RolloutState{}, nil)},
	}
	for _, tt := range tests {
		var ie *InvalidError
		if !errors.Is(tt.err, ErrInvalid) || !errors.As(tt.err, &ie) {
			t.Errorf("%s: err = %v; want an *InvalidError matching ErrInvalid", tt.name, tt.err)
		}
	}
	if err := s.AddReport(ctx, wire.Report{DeviceID: "ghost", Kind: artifact.KindModel, Name: "m", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: t0}); !errors.Is(err, ErrNotFound) {
		t.Errorf("report from unknown device = %v; want ErrNotFound", err)
	}
	if err := s.RecordDecision(ctx, policy.Decision{DeviceID: "ghost", At: t0}); !errors.Is(err, ErrNotFound) {
		t.Errorf("decision for unknown device = %v; want ErrNotFound", err)
	}
}

// testLongTextCutOnACharacter: a device's long cause (of a report, or of its fallback
// from a delta) is cut to MaxCause bytes on a character's boundary. Cut within one, it
// was invalid UTF-8, which PostgreSQL refuses in a text column: the check-in failed,
// and the device's report, retried, held back every report after it.
func testLongTextCutOnACharacter(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	if err := s.Enroll(ctx, "dev-1", nil, t0); err != nil {
		t.Fatal(err)
	}
	long := "a" + strings.Repeat("é", MaxCause) // "é" is two bytes: MaxCause falls inside one
	rep := wire.Report{ID: "r-1", DeviceID: "dev-1", Kind: artifact.KindModel, Name: "m", Version: "1.0.0",
		Outcome: wire.OutcomeProbeFailed, Cause: long, DeltaFallback: long, At: t0}
	if err := s.AddReport(ctx, rep); err != nil {
		t.Fatalf("report with a long cause of two-byte characters: %v", err)
	}
	reps, err := s.Reports(ctx, ReportFilter{DeviceID: "dev-1"})
	if err != nil || len(reps) != 1 {
		t.Fatalf("reports = %v, %v", reps, err)
	}
	for name, got := range map[string]string{"cause": reps[0].Cause, "delta fallback": reps[0].DeltaFallback} {
		if !utf8.ValidString(got) || len(got) > MaxCause || len(got) < MaxCause-utf8.UTFMax || !strings.HasPrefix(long, got) {
			t.Errorf("stored %s: %d bytes, valid UTF-8 %v; want the longest whole-character prefix of at most %d bytes", name, len(got), utf8.ValidString(got), MaxCause)
		}
	}
}

func testRolloutsReportsDecisions(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	if _, err := s.RolloutState(ctx, "r"); !errors.Is(err, ErrNotFound) {
		t.Errorf("RolloutState(new) = %v; want ErrNotFound", err)
	}
	r := &policy.Rollout{ID: "r", Target: policy.Target{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"}, Waves: []policy.Wave{{Percent: 10, Soak: time.Hour}, {Percent: 100}}}
	st, evs := policy.Plan(r, policy.RolloutState{}, nil, t0)
	if err := s.SaveRollout(ctx, st, evs); err != nil {
		t.Fatal(err)
	}
	st, ev, _ := policy.Pause(st, "alice", "checking", t0.Add(time.Minute))
	if err := s.SaveRollout(ctx, st, []policy.Event{ev}); err != nil {
		t.Fatal(err)
	}
	got, err := s.RolloutState(ctx, "r")
	if err != nil || got.Status != policy.StatusPaused || !got.Started.Equal(t0) {
		t.Errorf("RolloutState = %+v, %v", got, err)
	}
	all, err := s.RolloutStates(ctx)
	if err != nil || len(all) != 1 || all["r"].Reason != "checking" {
		t.Errorf("RolloutStates = %+v, %v", all, err)
	}
	events, err := s.RolloutEvents(ctx, "r", 0)
	if err != nil || len(events) != 3 || events[2].Type != policy.EventPaused || events[2].Actor != "alice" {
		t.Errorf("RolloutEvents = %+v, %v", events, err)
	}
	if last, _ := s.RolloutEvents(ctx, "r", 1); len(last) != 1 || last[0].Type != policy.EventPaused {
		t.Errorf("RolloutEvents(limit 1) = %+v; want the newest", last)
	}
	if err := s.SaveRollout(ctx, st, []policy.Event{{Rollout: "other"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("SaveRollout(foreign event) = %v; want ErrInvalid", err)
	}

	for _, id := range []string{"a", "b"} {
		s.Enroll(ctx, id, nil, t0)
	}
	for i, rep := range []wire.Report{
		{DeviceID: "a", RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: wire.OutcomeCommitted, At: t0.Add(2 * time.Minute), Bytes: 100},
		{DeviceID: "b", RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: wire.OutcomeRolledBack, Cause: "p99 9ms > 5ms", At: t0.Add(time.Minute)},
		{DeviceID: "b", RolloutID: "other", Kind: artifact.KindRuntime, Name: "ort", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: t0.Add(3 * time.Minute)},
	} {
		if err := s.AddReport(ctx, rep); err != nil {
			t.Fatalf("report %d: %v", i, err)
		}
	}
	reps, err := s.Reports(ctx, ReportFilter{RolloutID: "r"})
	if err != nil || len(reps) != 2 || reps[0].DeviceID != "b" || reps[0].Cause != "p99 9ms > 5ms" || reps[1].Bytes != 100 {
		t.Errorf("Reports(r) = %+v, %v; want b then a", reps, err)
	}
	if reps, _ := s.Reports(ctx, ReportFilter{DeviceID: "b", Since: t0.Add(2 * time.Minute)}); len(reps) != 1 || reps[0].RolloutID != "other" {
		t.Errorf("Reports(b, since) = %+v", reps)
	}

	for i := range 5 {
		dec := policy.Decision{DeviceID: "a", At: t0.Add(time.Duration(i) * time.Hour), PolicyDigest: "d",
			Slots: []policy.SlotDecision{{Kind: artifact.KindModel, Action: policy.ActionHold, Reason: policy.ReasonUpToDate}}}
		if err := s.RecordDecision(ctx, dec); err != nil {
			t.Fatal(err)
		}
	}
	s.RecordDecision(ctx, policy.Decision{DeviceID: "b", At: t0})
	decs, err := s.Decisions(ctx, "a", 2)
	if err != nil || len(decs) != 2 || !decs[0].At.Equal(t0.Add(4*time.Hour)) || decs[0].Slots[0].Reason != policy.ReasonUpToDate {
		t.Errorf("Decisions = %+v, %v", decs, err)
	}
	pruned, err := s.Prune(ctx, t0.Add(10*time.Hour))
	if err != nil || pruned.Decisions != 4 {
		t.Errorf("Prune = %+v, %v; want 4 decisions (newest of each device kept)", pruned, err)
	}
	if decs, _ := s.Decisions(ctx, "b", 0); len(decs) != 1 {
		t.Errorf("b's only decision pruned")
	}
	if n, _ := s.CountDevices(ctx); n != 2 {
		t.Errorf("CountDevices = %d", n)
	}
	page, err := s.Devices(ctx, ListOptions{Limit: 1})
	if err != nil || len(page) != 1 || page[0].ID != "a" {
		t.Fatalf("Devices page 1 = %+v, %v", page, err)
	}
	page, _ = s.Devices(ctx, ListOptions{After: "a", Limit: 5000})
	if len(page) != 1 || page[0].ID != "b" {
		t.Errorf("Devices page 2 = %+v", page)
	}
}

func testDecideAt(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	p, err := policy.Parse(policy.File{Name: "p.yaml", Data: []byte("attestation: {max_age: 10m}\nrollouts:\n  - id: r\n    target: {kind: model, name: vib, version: 2.0.0}\n")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.DecideAt(ctx, p, nil, "ghost", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("DecideAt(unknown) = %v; want ErrNotFound", err)
	}
	s.Enroll(ctx, "d", nil, t0)
	s.CheckIn(ctx, CheckIn{ID: "d", Slots: map[artifact.Kind]policy.Slot{artifact.KindModel: {Name: "vib", Version: "1.0.0"}}, At: t0})
	dec, err := s.DecideAt(ctx, p, nil, "d", t0)
	if err != nil || dec.Slots[0].Reason != policy.ReasonAttestationUntrusted {
		t.Fatalf("DecideAt(unattested) = %+v, %v", dec, err)
	}
	s.Attest(ctx, p, "d", policy.VerdictTrusted, "", t0)
	dec, _ = s.DecideAt(ctx, p, nil, "d", t0.Add(5*time.Minute))
	if dec.Slots[0].Action != policy.ActionInstall {
		t.Errorf("DecideAt(attested) = %+v; want install", dec.Slots[0])
	}
	dec, _ = s.DecideAt(ctx, p, nil, "d", t0.Add(11*time.Minute))
	if dec.Slots[0].Reason != policy.ReasonAttestationStale {
		t.Errorf("DecideAt(11 min later) = %+v; want attestation_stale", dec.Slots[0])
	}
	if decs, _ := s.Decisions(ctx, "d", 0); len(decs) != 3 || decs[0].PolicyDigest != p.Digest {
		t.Errorf("recorded decisions = %d; want 3 with the policy digest", len(decs))
	}
}

// TestInfrastructureReportsAreNotWaveResults: a device that reports only
// infrastructure failures (no space, network, runtime down: it retries) has no result
// in its wave, and a later infrastructure failure does not hide its final one.
func testInfrastructureReportsAreNotWaveResults(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	r := &policy.Rollout{ID: "r", Target: policy.Target{Kind: artifact.KindModel, Name: "vib", Version: "3.1.0"}, Waves: []policy.Wave{{Percent: 100}}}
	for _, id := range []string{"dev-1", "dev-2"} {
		if err := s.Enroll(ctx, id, nil, t0); err != nil {
			t.Fatal(err)
		}
	}
	rep := func(id string, o wire.Outcome, at time.Duration) wire.Report {
		return wire.Report{DeviceID: id, RolloutID: "r", Kind: artifact.KindModel, Name: "vib", Version: "3.1.0", Outcome: o, Cause: "x", At: t0.Add(at)}
	}
	for i, step := range []struct {
		rep              wire.Report
		reported, failed int
	}{
		{rep("dev-1", wire.OutcomeInfrastructure, time.Minute), 0, 0},
		{rep("dev-2", wire.OutcomeProbeFailed, 2*time.Minute), 1, 1},
		{rep("dev-2", wire.OutcomeInfrastructure, 3*time.Minute), 1, 1},
		{rep("dev-1", wire.OutcomeCommitted, 4*time.Minute), 2, 1},
	} {
		if err := s.AddReport(ctx, step.rep); err != nil {
			t.Fatal(err)
		}
		st, err := s.WaveStats(ctx, r, t0)
		if err != nil {
			t.Fatal(err)
		}
		if st[0].Reported != step.reported || st[0].Failed != step.failed {
			t.Errorf("step %d (%s %s): WaveStats = %+v; want %d reported, %d failed", i, step.rep.DeviceID, step.rep.Outcome, st[0], step.reported, step.failed)
		}
	}
}

// testDeviceVerdictsAndCounts: a device's verdicts come newest first, bounded, without
// the other devices'; the fleet's are counted by verdict in one aggregate.
func testDeviceVerdictsAndCounts(t *testing.T, db opener) {
	ctx := context.Background()
	s, _ := openStore(t, db)
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, id := range []string{"a", "b"} {
		if err := s.Enroll(ctx, id, nil, t0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 6 {
		at := t0.Add(time.Duration(i) * time.Minute)
		v := policy.VerdictTrusted
		if i == 5 {
			v = policy.VerdictUntrusted
		}
		s.RecordVerdict(ctx, "a", v, fmt.Sprint(i), at)
		s.RecordVerdict(ctx, "b", policy.VerdictTrusted, "", at)
	}
	vs, err := s.DeviceVerdicts(ctx, "a", t0.Add(time.Minute), 3)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range vs {
		if v.DeviceID != "a" {
			t.Fatalf("DeviceVerdicts(a) holds %s's", v.DeviceID)
		}
		got = append(got, v.Detail)
	}
	if strings.Join(got, ",") != "5,4,3" {
		t.Errorf("DeviceVerdicts(a, since 1m, 3) = %v; want 5,4,3 (newest first)", got)
	}
	counts, err := s.VerdictCounts(ctx, t0.Add(2*time.Minute))
	if err != nil || counts[policy.VerdictTrusted] != 7 || counts[policy.VerdictUntrusted] != 1 {
		t.Errorf("VerdictCounts(since 2m) = %v, %v; want 7 trusted, 1 untrusted", counts, err)
	}
	var k FleetKPI
	k.SetVerdicts(counts)
	if k.Verdicts != 8 || k.AttestationPassRate != 7.0/8 {
		t.Errorf("SetVerdicts = %d, %v; want 8, 0.875", k.Verdicts, k.AttestationPassRate)
	}
}
