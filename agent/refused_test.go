package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/updater"
)

// lossy passes a batch to the real server, then loses its answer once (a connection
// reset after the server committed): the outbox sends the batch again.
type lossy struct {
	updater.Sender
	lost bool
}

func (l *lossy) Send(ctx context.Context, msgs []updater.Message) ([]string, error) {
	acked, err := l.Sender.Send(ctx, msgs)
	if !l.lost {
		l.lost = true
		return nil, errors.New("connection reset by peer")
	}
	return acked, err
}

// TestRefusedReportIsSetAside (issue 12): one report the server refuses (an outcome it
// does not know) among good ones, sent through a real server's device API with a
// TPM-attested check-in. The server stores the good ones and names the refused one with
// its reason; the agent sets it aside in the outbox's dead letters and the outbox is
// empty: the poison report no longer holds back its batch. A batch whose answer was lost
// is sent again and stored once (report IDs).
func TestRefusedReportIsSetAside(t *testing.T) {
	r := newStoryRig(t, false)
	ctx := context.Background()
	now := time.Now()
	rep := func(outcome wire.Outcome, i int) wire.Report {
		return wire.Report{Kind: artifact.KindModel, Name: "vibration-anomaly", Version: "1.0.0", Outcome: outcome, Cause: fmt.Sprintf("disk full (report %d)", i), At: now}
	}
	var ids []string
	for i, o := range []wire.Outcome{wire.OutcomeInfrastructure, "exploded", wire.OutcomeInfrastructure} {
		id, err := r.outbox.Put(ctx, "install", rep(o, i), now)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		now = now.Add(time.Millisecond) // the outbox sends oldest first
	}
	sender := &lossy{Sender: r.link}
	b := updater.Backoff{Base: time.Minute, Max: time.Hour}
	if n, err := r.outbox.Flush(ctx, sender, now, b, func() float64 { return 0 }); n != 0 || err == nil {
		t.Fatalf("Flush with the answer lost = %d, %v; want 0 and an error", n, err)
	}
	now = now.Add(time.Hour)
	n, err := r.outbox.Flush(ctx, sender, now, b, func() float64 { return 0 })
	var re *updater.RefusedError
	if n != 2 || !errors.As(err, &re) || len(re.Reasons) != 1 || !strings.Contains(re.Reasons[ids[1]], "exploded") {
		t.Fatalf("Flush = %d, %v; want 2 acknowledged and the second report refused naming its outcome", n, err)
	}
	if w, _ := r.outbox.Len(ctx); w != 0 {
		t.Errorf("outbox holds %d reports; want none (the refused one set aside)", w)
	}
	dead, err := r.outbox.DeadLetters(ctx)
	if err != nil || len(dead) != 1 || dead[0].ID != ids[1] || !strings.Contains(dead[0].Reason, "unknown outcome") || !strings.Contains(string(dead[0].Body), "exploded") {
		t.Fatalf("dead letters = %+v, %v; want the refused report with the server's reason", dead, err)
	}
	stored, err := r.store.Reports(ctx, fleet.ReportFilter{DeviceID: r.link.DeviceID()})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, s := range stored {
		got = append(got, string(s.Outcome)+": "+s.Cause)
	}
	slices.Sort(got)
	if want := []string{"infrastructure: disk full (report 0)", "infrastructure: disk full (report 2)"}; !slices.Equal(got, want) {
		t.Errorf("server stored reports %q; want %q (once each)", got, want)
	}
	st, err := (&State{Dir: StateDir(r.state), Slots: r.slots}).ReadStatus(ctx)
	if err != nil || st.ReportsRefused != 1 || st.ReportsWaiting != 0 {
		t.Errorf("status = %d refused, %d waiting, %v; want 1 and 0", st.ReportsRefused, st.ReportsWaiting, err)
	}
	// Nothing more to send, and the refused report is not sent again.
	if n, err := r.outbox.Flush(ctx, r.link, now.Add(time.Hour), b, nil); n != 0 || err != nil {
		t.Errorf("Flush after = %d, %v; want nothing to send", n, err)
	}
}
