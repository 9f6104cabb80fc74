package agent

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// WriteStatus prints, for a person on the device, each kind's slots, floor and
// transaction, the last check-in and the reports waiting in the outbox. It reads the
// state as it is, without recovering it.
func (s *State) WriteStatus(ctx context.Context, w io.Writer) error {
	m := s.Slots
	for _, k := range rollback.Kinds() {
		st, err := m.State(ctx, k)
		if err != nil {
			fmt.Fprintf(w, "%s: %v\n", k, err)
			continue
		}
		floor, _ := m.Floor(ctx, k)
		fmt.Fprintf(w, "%s: %s\n", k, st.Phase)
		if st.Current != nil {
			fmt.Fprintf(w, "  active slot %s: %s (%s)\n", st.Active, st.Current.Version, st.Current.Path)
		} else {
			fmt.Fprintln(w, "  active slot: none")
		}
		fmt.Fprintf(w, "  floor: %d.%d.%d\n", floor>>40, (floor>>20)&(1<<20-1), floor&(1<<20-1))
		if p := st.Pending; p != nil {
			done := int64(0)
			if fi, err := os.Stat(m.Payload(k, st.Inactive()) + ".part"); err == nil {
				done = fi.Size()
			} else if fi, err := os.Stat(m.Payload(k, st.Inactive())); err == nil {
				done = fi.Size()
			}
			fmt.Fprintf(w, "  installing %s into slot %s: %d / %d bytes\n", p.Version, st.Inactive(), done, p.Length)
			if !st.Deadline.IsZero() {
				fmt.Fprintf(w, "  trial deadline: %s\n", st.Deadline.UTC().Format(time.RFC3339))
			}
		}
		if st.Reason != "" {
			fmt.Fprintf(w, "  last result: %s\n", st.Reason)
		}
	}
	o, err := updater.OpenOutbox(ctx, s.Dir.Outbox())
	if err != nil {
		return err
	}
	defer o.Close()
	at, result, err := o.LastCheckIn(ctx)
	if err != nil {
		return err
	}
	n, err := o.Len(ctx)
	if err != nil {
		return err
	}
	if at.IsZero() {
		fmt.Fprintf(w, "last check-in: never\n")
	} else {
		fmt.Fprintf(w, "last check-in: %s (%s)\n", at.UTC().Format(time.RFC3339), result)
	}
	fmt.Fprintf(w, "reports waiting: %d\n", n)
	if h, err := ReadRuntimeHealth(s.Dir.RuntimeHealth()); err == nil {
		writeRuntimeHealth(w, h)
	}
	return nil
}

// writeRuntimeHealth prints what the runtime supervision last recorded.
func writeRuntimeHealth(w io.Writer, h RuntimeHealth) {
	ts := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	fmt.Fprintf(w, "runtime (as of %s):", ts(h.At))
	if !h.ServingSince.IsZero() {
		fmt.Fprintf(w, " serving since %s;", ts(h.ServingSince))
	} else {
		fmt.Fprint(w, " not serving;")
	}
	fmt.Fprintf(w, " %d death(s) since the agent started\n", h.Deaths)
	if h.Deaths > 0 {
		fmt.Fprintf(w, "  last death: %s (%s)\n", ts(h.LastDeath), h.Why)
	}
	if h.CrashLoop > 0 {
		fmt.Fprintf(w, "  crash loop: %d death(s) in a row within %s of their start; restart held back %s, due %s\n",
			h.CrashLoop, stableAfter, h.RestartDelay, ts(h.NextRestart))
	}
}
