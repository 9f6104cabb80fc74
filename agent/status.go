package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// Status is what `edgeward-agent status` shows: each kind's slots, floor and
// transaction, the last check-in, the reports waiting in the outbox and, from a running
// agent, the device's identity and the error its next check-in reports.
type Status struct {
	// Source says where the status comes from: "running agent" (asked over its status
	// socket) or "state directory" (read from disk; no agent was running).
	Source string       `json:"source"`
	Slots  []SlotStatus `json:"slots"`
	// LastCheckIn is the time and result of the last check-in (zero: never).
	LastCheckIn       time.Time `json:"last_check_in,omitzero"`
	LastCheckInResult string    `json:"last_check_in_result,omitempty"`
	ReportsWaiting    int       `json:"reports_waiting"`
	// ReportsHeld counts the reports a running agent holds in memory only, not
	// durable, because its outbox could not be opened (a first start on a full disk:
	// updater.AgentConfig.OpenOutbox); they move into the outbox once it opens.
	ReportsHeld int `json:"reports_held,omitempty"`
	// ReportsRefused counts the reports the server refused as invalid, set aside in
	// the outbox's dead letters (the newest updater.MaxDeadLetters are kept).
	ReportsRefused int `json:"reports_refused"`
	// TrustedRoot is the version of the TUF root the device trusts and
	// TimestampExpires when its trusted timestamp expires (zero: none yet): a device
	// follows root rotations at its next refresh.
	TrustedRoot      int64     `json:"trusted_root,omitempty"`
	TimestampExpires time.Time `json:"timestamp_expires,omitzero"`
	// Known only to a running agent.
	DeviceID  string            `json:"device_id,omitempty"`
	Server    string            `json:"server,omitempty"`
	LastError *wire.UpdateError `json:"last_error,omitempty"`
	// Runtime is what the runtime supervision saw (live from a running agent, else
	// its last runtime-health.json); nil when nothing was recorded.
	Runtime *RuntimeHealth `json:"runtime,omitempty"`
}

// SlotStatus is one kind's slots.
type SlotStatus struct {
	Kind  string `json:"kind"`
	Phase string `json:"phase"`
	Error string `json:"error,omitempty"` // the state could not be read
	// Active is the active slot (a or b) and what it holds; empty when none.
	Active  string `json:"active,omitempty"`
	Version string `json:"version,omitempty"`
	Path    string `json:"path,omitempty"`
	Floor   string `json:"floor"`
	// Installing is the version of a transaction in progress, with its progress.
	Installing    string    `json:"installing,omitempty"`
	InstallSlot   string    `json:"install_slot,omitempty"`
	InstallBytes  int64     `json:"install_bytes,omitempty"`
	InstallLength int64     `json:"install_length,omitempty"`
	TrialDeadline time.Time `json:"trial_deadline,omitzero"`
	// TrialStarts counts the starts of the trial in progress (more than 1: restarts
	// interrupted it; rollback.MaxTrialStarts gives it up).
	TrialStarts int    `json:"trial_starts,omitempty"`
	LastResult  string `json:"last_result,omitempty"`
	// Abandoned is the version whose trial was given up at a restart (LastResult says
	// why): the agent refuses it and reports it.
	Abandoned string `json:"abandoned,omitempty"`
}

// ReadStatus reads the state as it is, without recovering it.
func (s *State) ReadStatus(ctx context.Context) (Status, error) {
	out := Status{Source: "state directory"}
	m := s.Slots
	for _, k := range rollback.Kinds() {
		ss := SlotStatus{Kind: string(k)}
		st, err := m.State(ctx, k)
		if err != nil {
			ss.Error = err.Error()
			out.Slots = append(out.Slots, ss)
			continue
		}
		floor, _ := m.Floor(ctx, k)
		ss.Phase = string(st.Phase)
		ss.Floor = fmt.Sprintf("%d.%d.%d", floor>>40, (floor>>20)&(1<<20-1), floor&(1<<20-1))
		if st.Current != nil {
			ss.Active, ss.Version, ss.Path = string(st.Active), st.Current.Version, st.Current.Path
		}
		if p := st.Pending; p != nil {
			ss.Installing, ss.InstallSlot, ss.InstallLength, ss.TrialDeadline = p.Version, string(st.Inactive()), p.Length, st.Deadline
			ss.TrialStarts = st.TrialStarts
			if fi, err := os.Stat(m.Payload(k, st.Inactive()) + ".part"); err == nil {
				ss.InstallBytes = fi.Size()
			} else if fi, err := os.Stat(m.Payload(k, st.Inactive())); err == nil {
				ss.InstallBytes = fi.Size()
			}
		}
		ss.LastResult = st.Reason
		if st.Abandoned != nil {
			ss.Abandoned = st.Abandoned.Version
		}
		out.Slots = append(out.Slots, ss)
	}
	// A device that never queued a report nor checked in has no outbox yet: nothing to
	// read, and creating it here is a write status need not make (on a full disk it
	// would fail the status). An empty file is no outbox either: what an agent's first
	// start on a full disk leaves behind (sqlite created the file, then could not write
	// its header), which cannot be opened until the disk has room.
	if fi, err := os.Stat(s.Dir.Outbox()); err == nil && fi.Size() > 0 {
		o, err := updater.OpenOutbox(ctx, s.Dir.Outbox())
		if err != nil {
			return out, fmt.Errorf("status: %w", err)
		}
		defer o.Close()
		if out.LastCheckIn, out.LastCheckInResult, err = o.LastCheckIn(ctx); err != nil {
			return out, err
		}
		if out.ReportsWaiting, err = o.Len(ctx); err != nil {
			return out, err
		}
		if out.ReportsRefused, err = o.DeadLen(ctx); err != nil {
			return out, err
		}
	}
	if h, err := ReadRuntimeHealth(s.Dir.RuntimeHealth()); err == nil {
		// The file is written at each death and restart: read now, a crash loop whose
		// runtime has since served stableAfter is over (settled), as the running
		// agent's own health says; the record keeps its time (found in review, 2 Dec).
		at := h.At
		h = settled(h, time.Now())
		h.At = at
		out.Runtime = &h
	}
	out.TrustedRoot, _ = metadataSigned(filepath.Join(s.Dir.TUF(), updater.RootFile))
	_, out.TimestampExpires = metadataSigned(filepath.Join(s.Dir.TUF(), "timestamp.json"))
	return out, nil
}

// metadataSigned reads the version and expiry of a trusted metadata file (zero values
// when it cannot be read: status shows what it finds).
func metadataSigned(path string) (int64, time.Time) {
	var md struct {
		Signed struct {
			Version int64     `json:"version"`
			Expires time.Time `json:"expires"`
		} `json:"signed"`
	}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &md) != nil {
		return 0, time.Time{}
	}
	return md.Signed.Version, md.Signed.Expires
}

// WriteStatus prints the state as it is (ReadStatus) for a person on the device.
func (s *State) WriteStatus(ctx context.Context, w io.Writer) error {
	st, err := s.ReadStatus(ctx)
	if err != nil {
		return err
	}
	st.Write(w)
	return nil
}

// Write prints st for a person on the device.
func (st Status) Write(w io.Writer) {
	// Text from the server or a slot's state, printed on a terminal: bounded, and
	// unable to drive it (found from outside, 2 Dec: a server's reasons carried escape
	// sequences that retitled the window, cleared the screen and wrote the clipboard).
	p := func(s string) string { return printable.Text(s, 4096) }
	for _, s := range st.Slots {
		if s.Error != "" {
			fmt.Fprintf(w, "%s: %s\n", s.Kind, p(s.Error))
			continue
		}
		phase := s.Phase
		if (phase == string(rollback.Failed) || phase == string(rollback.RolledBack)) && s.Active != "" {
			// The phase is the last install's; what serves is the committed version. A
			// bare "model: failed" on a full disk read as if nothing served (found from
			// outside, 2 Dec).
			phase += fmt.Sprintf(" (the last install; %s still serves)", p(s.Version))
		}
		fmt.Fprintf(w, "%s: %s\n", s.Kind, phase)
		if s.Active != "" {
			fmt.Fprintf(w, "  active slot %s: %s (%s)\n", s.Active, p(s.Version), p(s.Path))
		} else {
			fmt.Fprintln(w, "  active slot: none")
		}
		fmt.Fprintf(w, "  floor: %s\n", s.Floor)
		if s.Installing != "" {
			fmt.Fprintf(w, "  installing %s into slot %s: %d / %d bytes\n", p(s.Installing), s.InstallSlot, s.InstallBytes, s.InstallLength)
			if !s.TrialDeadline.IsZero() {
				fmt.Fprintf(w, "  trial deadline: %s\n", s.TrialDeadline.UTC().Format(time.RFC3339))
			}
			if s.TrialStarts > 1 {
				fmt.Fprintf(w, "  trial started %d times, at most %d: restarts interrupted it\n", s.TrialStarts, rollback.MaxTrialStarts)
			}
		}
		if s.LastResult != "" {
			fmt.Fprintf(w, "  last result: %s\n", p(s.LastResult))
		}
		if s.Abandoned != "" {
			fmt.Fprintf(w, "  given up: %s, refused and reported to the server (devices clear-failed tries it again)\n", p(s.Abandoned))
		}
	}
	if st.LastCheckIn.IsZero() {
		fmt.Fprintf(w, "last check-in: never\n")
	} else {
		fmt.Fprintf(w, "last check-in: %s (%s)\n", st.LastCheckIn.UTC().Format(time.RFC3339), p(st.LastCheckInResult))
	}
	if e := st.LastError; e != nil {
		fmt.Fprintf(w, "last error: %s at %s: %s\n", p(string(e.Kind)), e.At.UTC().Format(time.RFC3339), p(e.Message))
	}
	fmt.Fprintf(w, "reports waiting: %d\n", st.ReportsWaiting)
	if st.ReportsHeld > 0 {
		fmt.Fprintf(w, "reports held in memory only, not durable (no outbox: is the disk full?): %d\n", st.ReportsHeld)
	}
	if st.ReportsRefused > 0 {
		fmt.Fprintf(w, "reports refused by the server: %d (set aside in the outbox's dead letters)\n", st.ReportsRefused)
	}
	if st.TrustedRoot > 0 {
		fmt.Fprintf(w, "TUF: root v%d", st.TrustedRoot)
		if !st.TimestampExpires.IsZero() {
			fmt.Fprintf(w, ", timestamp expires %s", st.TimestampExpires.UTC().Format(time.RFC3339))
		}
		fmt.Fprintln(w)
	}
	if st.DeviceID != "" {
		fmt.Fprintf(w, "device: %s (server %s)\n", st.DeviceID, st.Server)
	}
	if st.Runtime != nil {
		writeRuntimeHealth(w, *st.Runtime)
	}
	fmt.Fprintf(w, "(from the %s)\n", st.Source)
}

// StatusSocket is the unix socket on which a running agent answers `edgeward-agent
// status` (GET /status, JSON), so that status never needs the TPM the agent holds.
func (d StateDir) StatusSocket() string { return string(d) + "/status.sock" }

// statusServer answers GET /status on the state directory's status socket with the
// state read at the time of the request plus what only the running agent knows.
type statusServer struct {
	st *State
	ln net.Listener

	mu    sync.Mutex
	extra func(*Status) // set once the agent is connected; guarded by mu
}

// serveStatus starts the status socket (replacing a stale one of a dead agent).
func serveStatus(st *State) (*statusServer, error) {
	path := st.Dir.StatusSocket()
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("another agent is running on %s (its status socket %s answers)", st.Dir, path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	os.Chmod(path, 0o600)
	s := &statusServer{st: st, ln: ln}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		out, err := st.ReadStatus(r.Context())
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		out.Source = "running agent"
		s.mu.Lock()
		if s.extra != nil {
			s.extra(&out)
		}
		s.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(out)
	})
	go (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
	return s, nil
}

// setExtra sets what the running agent adds to each answer.
func (s *statusServer) setExtra(f func(*Status)) {
	s.mu.Lock()
	s.extra = f
	s.mu.Unlock()
}

// Close stops answering and removes the socket.
func (s *statusServer) Close() {
	s.ln.Close()
	os.Remove(s.st.Dir.StatusSocket())
}

// ErrNotRunning is returned by AskStatus when no agent answers on the status socket.
var ErrNotRunning = errors.New("no agent is running on this state directory")

// AskStatus asks the agent running on dir for its status over its status socket. It
// returns ErrNotRunning when none answers (no socket, or a stale one).
func AskStatus(ctx context.Context, dir StateDir) (Status, error) {
	path := dir.StatusSocket()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}, Timeout: 10 * time.Second}
	defer c.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://agent/status", nil)
	if err != nil {
		return Status{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return Status{}, fmt.Errorf("%w (%v)", ErrNotRunning, err)
		}
		return Status{}, fmt.Errorf("ask the running agent (%s): %w", path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return Status{}, fmt.Errorf("the running agent answered %s: %s", resp.Status, b)
	}
	var st Status
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&st); err != nil {
		return Status{}, fmt.Errorf("the running agent's status: %w", err)
	}
	return st, nil
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
