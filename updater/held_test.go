package updater

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// lateOutbox opens the outbox at path once full is false, failing with ENOSPC before,
// as a first start on a full disk does.
type lateOutbox struct {
	path  string
	full  bool
	opens int
	o     *Outbox
}

func (l *lateOutbox) open(ctx context.Context) (*Outbox, error) {
	l.opens++
	if l.full {
		return nil, fmt.Errorf("open outbox: open sqlite %s: %w", l.path, syscall.ENOSPC)
	}
	o, err := OpenOutbox(ctx, l.path)
	l.o = o
	return o, err
}

// TestAgentWithoutOutbox: an agent whose outbox cannot be opened yet (OpenOutbox fails)
// still checks in, installs, commits and refuses; it holds its reports in memory, says
// so in each round's error, and sends them from there (an acknowledged one is dropped,
// the others kept). Once the outbox opens, the next round moves the reports still held
// into it under their IDs and stores the target refused meanwhile.
func TestAgentWithoutOutbox(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	c, m, _ := deviceState(t, r)
	late := &lateOutbox{path: filepath.Join(t.TempDir(), "outbox.db"), full: true}
	t.Cleanup(func() {
		if late.o != nil {
			late.o.Close()
		}
	})
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	d := &director{}
	srv := &server{seen: map[string]int{}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{"2.0.0": "accuracy 0.91 < 0.95"},
		OpenOutbox: late.open, Sender: srv, Now: func() time.Time { now = now.Add(time.Second); return now }})
	if err != nil {
		t.Fatal(err)
	}
	step := func(name string, want map[artifact.Kind]string, held int) error {
		t.Helper()
		d.want = want
		err := a.Step(ctx)
		if got := a.HeldReports(); got != held {
			t.Fatalf("%s: HeldReports() = %d; want %d (round error: %v)", name, got, held, err)
		}
		return err
	}
	err = step("install 1.0.0 on a full disk, server down", map[artifact.Kind]string{artifact.KindModel: p1}, 1)
	if !errors.Is(err, syscall.ENOSPC) || !strings.Contains(err.Error(), "1 report(s) held in memory only, not durable") {
		t.Errorf("round with a held report = %v; want it said, with the cause (ENOSPC)", err)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Current == nil || s.Current.Version != "1.0.0" {
		t.Fatalf("model after the install without an outbox = %+v; want 1.0.0 committed", s.Current)
	}
	step("2.0.0 fails its probes", map[artifact.Kind]string{artifact.KindModel: p2}, 2)
	step("2.0.0 is not retried", map[artifact.Kind]string{artifact.KindModel: p2}, 2)

	// The server is back and loses the acknowledgement of the oldest: it stays held.
	srv.up, srv.drop = true, 1
	step("server up", nil, 1)
	if len(srv.seen) != 2 {
		t.Fatalf("server saw %d reports; want the 2 held", len(srv.seen))
	}

	// The disk has room again: the held report moves into the outbox under its ID.
	srv.up, late.full = false, false
	step("outbox opens", nil, 0)
	if late.opens != 7 {
		t.Errorf("OpenOutbox called %d times; want 7 (at each of 4 rounds and 2 reports until it opened, then never)", late.opens)
	}
	due, err := late.o.Due(ctx, now.Add(time.Hour), 10)
	if err != nil || len(due) != 1 || srv.seen[due[0].ID] != 1 {
		t.Fatalf("outbox once opened = %+v, %v; want the one report the server did not acknowledge, under the ID it was sent with", due, err)
	}
	var rep wire.Report
	if err := json.Unmarshal(due[0].Body, &rep); err != nil || rep.Version != "1.0.0" || rep.Outcome != wire.OutcomeCommitted {
		t.Errorf("moved report = %+v, %v; want the commit of 1.0.0", rep, err)
	}
	if refused, err := late.o.Refused(ctx); err != nil || refused[string(artifact.KindModel)] != p2 {
		t.Errorf("refused targets in the outbox = %v, %v; want 2.0.0's, refused while there was no outbox", refused, err)
	}
	srv.up = true
	now = now.Add(time.Hour) // past the report's backoff (the last flush failed)
	if err := step("server up again", nil, 0); err != nil {
		t.Errorf("round with the outbox open and the server up = %v", err)
	}
	if n, _ := late.o.Len(ctx); n != 0 || srv.seen[due[0].ID] != 2 {
		t.Errorf("after the flush: %d waiting, the report sent %d times; want 0 and 2 (the lost acknowledgement)", n, srv.seen[due[0].ID])
	}
}

// TestHeldReportsBounded: without an outbox, at most MaxHeldReports reports are held;
// the oldest go first, and a report queued again under its ID is held once.
func TestHeldReportsBounded(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	c, m, _ := deviceState(t, r)
	late := &lateOutbox{path: filepath.Join(t.TempDir(), "outbox.db"), full: true}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{}, OpenOutbox: late.open,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxHeldReports + 3 {
		if _, err := a.queue(ctx, wire.Report{Kind: artifact.KindModel, Cause: fmt.Sprintf("report %d", i)}); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		if _, err := a.queue(ctx, wire.Report{ID: "commit-model-5", Kind: artifact.KindModel}); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.HeldReports(); n != MaxHeldReports {
		t.Fatalf("HeldReports() = %d; want MaxHeldReports (%d)", n, MaxHeldReports)
	}
	if first, last := string(a.held[0].Body), a.held[len(a.held)-1].ID; !strings.Contains(first, `"report 4"`) || last != "commit-model-5" {
		t.Errorf("held from %s to %s; want from report 4 (the 4 oldest dropped) to commit-model-5, once", first, last)
	}
}

// refusingServer refuses, as invalid, the reports whose body contains poison and
// acknowledges the others.
type refusingServer struct{ poison string }

func (s refusingServer) Send(_ context.Context, msgs []Message) ([]string, error) {
	var acked []string
	refused := map[string]string{}
	for _, m := range msgs {
		if strings.Contains(string(m.Body), s.poison) {
			refused[m.ID] = "unknown outcome"
		} else {
			acked = append(acked, m.ID)
		}
	}
	if len(refused) > 0 {
		return acked, &RefusedError{Reasons: refused}
	}
	return acked, nil
}

// TestHeldReportRefused: a held report the server refuses is dropped (there is no
// outbox to set it aside in) and the refusal is the round's error; the others are
// acknowledged and dropped too: nothing stays held.
func TestHeldReportRefused(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	c, m, _ := deviceState(t, r)
	late := &lateOutbox{path: filepath.Join(t.TempDir(), "outbox.db"), full: true}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: &director{}, OpenOutbox: late.open,
		Sender: refusingServer{poison: "exploded"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range []wire.Outcome{wire.OutcomeInfrastructure, "exploded"} {
		if _, err := a.queue(ctx, wire.Report{Kind: artifact.KindModel, Outcome: o}); err != nil {
			t.Fatal(err)
		}
	}
	err = a.Step(ctx)
	var re *RefusedError
	if !errors.As(err, &re) || len(re.Reasons) != 1 || a.HeldReports() != 0 {
		t.Fatalf("round = %v with %d held; want the refusal of one report, none held", err, a.HeldReports())
	}
}

// TestReportHeldWhenTheOutboxCannotStoreIt: an outbox that is open but cannot store a
// report (here closed under the agent, as a full disk fails its writes) does not lose
// it: the report is held in memory, said to be at risk, and sent from there once the
// server answers. (Before, it was logged and dropped; a commit report is rebuilt at the
// next start, a failure report never was.)
func TestReportHeldWhenTheOutboxCannotStoreIt(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	c, m, o := deviceState(t, r)
	d := &director{}
	srv := &server{seen: map[string]int{}}
	a, err := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: d, Judge: judge{}, Outbox: o, Sender: srv,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	o.Close() // every write of the outbox fails from here on
	d.want = map[artifact.Kind]string{artifact.KindModel: p1}
	err = a.Step(ctx)
	if n := a.HeldReports(); n != 1 || err == nil || !strings.Contains(err.Error(), "1 report(s) held in memory only, not durable") {
		t.Fatalf("round whose report the outbox could not store: %d held, %v; want 1, said", n, err)
	}
	srv.up = true
	a.Step(ctx) // the outbox's flush fails; the held report is sent all the same
	if n := a.HeldReports(); n != 0 || len(srv.seen) != 1 {
		t.Fatalf("after a round with the server up: %d held, the server saw %v; want 0 and the commit report", n, srv.seen)
	}
	for id := range srv.seen {
		if !strings.HasPrefix(id, "commit-model-") {
			t.Errorf("the server got %q; want the commit report", id)
		}
	}
}
