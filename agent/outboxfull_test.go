package agent

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/updater"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// countingDirector counts check-ins.
type countingDirector struct {
	updater.Director
	n int
}

func (d *countingDirector) CheckIn(ctx context.Context, st map[artifact.Kind]updater.SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	d.n++
	return d.Director.CheckIn(ctx, st)
}

// TestFirstStartOnFullDiskWithoutOutbox: a device's first start with its whole state
// directory on a full disk, before any outbox.db exists (the first report or check-in
// creates it). Run failed at once ("open outbox: ... database or disk is full"), and
// the empty outbox.db sqlite left behind failed `status` too. Now the outbox cannot be
// created there and the agent still checks in: `run --once` says the report of its
// commit was held in memory only (lost at exit), `status` reads the state, and a
// running agent's rounds go on holding the report in memory (logged as not durable,
// counted by its status). Once space is freed the next round creates the outbox and
// moves the held report into it: nothing is lost.
func TestFirstStartOnFullDiskWithoutOutbox(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	base := t.TempDir()
	fill, free := fullDisk(t, base)
	dir := StateDir(filepath.Join(base, "st"))
	r := tuftest.New(t)
	p := enrolledWithModel(t, ctx, dir, r)
	if _, err := os.Stat(dir.Outbox()); !os.IsNotExist(err) {
		t.Fatalf("outbox before the first start: %v; want none", err)
	}

	fill()
	d := &countingDirector{Director: Static{artifact.KindModel: p}}
	err := Run(ctx, Config{StateDir: dir, Director: d, Once: true, Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "1 report(s) held in memory only, not durable") || d.n != 1 {
		t.Errorf("Run --once on a full disk without an outbox = %v after %d check-in(s); want 1 check-in and the commit report said to be held in memory only", err, d.n)
	}
	st, err := OpenState(ctx, StateConfig{Dir: dir})
	if err != nil {
		t.Fatalf("OpenState on the full disk: %v", err)
	}
	s, err := st.ReadStatus(ctx)
	st.Close()
	if err != nil || len(s.Slots) == 0 || s.Slots[0].Version != "1.0.0" || s.ReportsWaiting != 0 {
		t.Errorf("status on the full disk after run --once = %+v, %v; want 1.0.0 committed, nothing waiting", s, err)
	}

	d.n = 0
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	rounds := 0
	var checks []string // what was wrong after each round
	sleep := func(ctx context.Context, d time.Duration) error {
		rounds++
		s, err := AskStatus(ctx, dir)
		if err != nil || len(s.Slots) == 0 || s.Slots[0].Version != "1.0.0" {
			checks = append(checks, fmt.Sprintf("status of the running agent after round %d = %+v, %v; want 1.0.0 committed", rounds, s, err))
		}
		switch rounds {
		case 1:
			if s.ReportsHeld != 1 || s.ReportsWaiting != 0 {
				checks = append(checks, fmt.Sprintf("status on the full disk: %d report(s) held in memory, %d waiting; want 1 and 0", s.ReportsHeld, s.ReportsWaiting))
			}
			free()
			return nil
		default:
			cancel()
			return ctx.Err()
		}
	}
	if err := Run(ctx, Config{StateDir: dir, Director: d, Interval: time.Hour, Sleep: sleep, Logger: log}); err != nil {
		t.Fatalf("Run on a full disk without an outbox = %v; want it running (nil when stopped)\nlog:\n%s", err, logs)
	}
	for _, c := range checks {
		t.Error(c)
	}
	if rounds != 2 || d.n != 2 {
		t.Fatalf("Run did %d rounds, %d check-ins; want 2 and 2\nlog:\n%s", rounds, d.n, logs)
	}
	if !strings.Contains(logs.String(), "not durable") {
		t.Errorf("log does not say the held report is not durable:\n%s", logs)
	}
	o, err := updater.OpenOutbox(context.Background(), dir.Outbox())
	if err != nil {
		t.Fatalf("outbox after space was freed: %v", err)
	}
	defer o.Close()
	due, err := o.Due(context.Background(), time.Now().Add(time.Hour), 10)
	if err != nil || len(due) != 1 || !strings.HasPrefix(due[0].ID, "commit-model-") || !strings.Contains(string(due[0].Body), `"1.0.0"`) {
		t.Fatalf("outbox after space was freed = %+v, %v; want the held commit report of 1.0.0", due, err)
	}
}
