package reposerver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/audit"
	"golang.org/x/mod/sumdb/tlog"
)

// The audit log's public API: checkpoints and proofs hold only hashes, so anyone (a
// witness, a device, an auditor) may fetch them without a token, as with TUF metadata.
//
//	GET /v1/audit/checkpoint                         the newest signed checkpoint (a note, with cosignatures)
//	GET /v1/audit/checkpoint?size=N                  the checkpoint signed at size N
//	GET /v1/audit/proof/inclusion?index=I&size=N     the leaf I (record I+1) is in the tree of size N
//	GET /v1/audit/proof/consistency?old=M&new=N      the tree of size M is a prefix of the tree of size N
//
// Proofs are JSON arrays of base64 hashes (tlog.RecordProof, tlog.TreeProof).
func (s *Server) mountAuditAPI() {
	s.mux.Handle("GET /v1/audit/checkpoint", s.count("audit", http.HandlerFunc(s.auditCheckpoint)))
	s.mux.Handle("GET /v1/audit/proof/inclusion", s.count("audit", http.HandlerFunc(s.auditInclusion)))
	s.mux.Handle("GET /v1/audit/proof/consistency", s.count("audit", http.HandlerFunc(s.auditConsistency)))
}

func (s *Server) auditCheckpoint(w http.ResponseWriter, r *http.Request) {
	l, err := s.openAudit(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	var c *audit.Checkpoint
	if q := r.URL.Query().Get("size"); q != "" {
		n, err := strconv.ParseInt(q, 10, 64)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, "size: want a tree size")
			return
		}
		c, err = l.CheckpointAt(r.Context(), n)
		if errors.Is(err, audit.ErrNoCheckpoint) {
			writeError(w, http.StatusNotFound, "no checkpoint was signed at that size")
			return
		}
	} else {
		c, err = l.Latest(r.Context())
		if errors.Is(err, audit.ErrNoCheckpoint) {
			c, err = l.Checkpoint(r.Context())
		}
		if err == nil {
			s.noteCheckpoint(c)
		}
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(c.Note)
}

func queryInt(r *http.Request, names ...string) ([]int64, bool) {
	out := make([]int64, len(names))
	for i, n := range names {
		v, err := strconv.ParseInt(r.URL.Query().Get(n), 10, 64)
		if err != nil || v < 0 || v > checkpoint.MaxTreeSize {
			return nil, false // past any tree: and index+1 must not overflow
		}
		out[i] = v
	}
	return out, true
}

func (s *Server) auditInclusion(w http.ResponseWriter, r *http.Request) {
	v, ok := queryInt(r, "index", "size")
	if !ok {
		writeError(w, http.StatusBadRequest, "want index=I&size=N")
		return
	}
	s.auditProof(w, r, func(l *audit.Log) (any, error) { return l.InclusionProof(r.Context(), v[0]+1, v[1]) })
}

func (s *Server) auditConsistency(w http.ResponseWriter, r *http.Request) {
	v, ok := queryInt(r, "old", "new")
	if !ok {
		writeError(w, http.StatusBadRequest, "want old=M&new=N")
		return
	}
	s.auditProof(w, r, func(l *audit.Log) (any, error) {
		p, err := l.ConsistencyProof(r.Context(), v[0], v[1])
		if p == nil {
			p = tlog.TreeProof{}
		}
		return p, err
	})
}

func (s *Server) auditProof(w http.ResponseWriter, r *http.Request, prove func(*audit.Log) (any, error)) {
	l, err := s.openAudit(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	p, err := prove(l)
	switch {
	case errors.Is(err, audit.ErrBeyondTree):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, p)
	}
}

// auditProve serves GET /v1/audit/prove?seq=S[&since=M][&cosigned=1]: record S with its inclusion
// proof against the newest checkpoint, and a consistency proof from size M (operators
// with audit.export, since it returns the record itself).
func (o *operatorAPI) auditProve(w http.ResponseWriter, r *http.Request) {
	seq, err := strconv.ParseInt(r.URL.Query().Get("seq"), 10, 64)
	if err != nil || seq < 1 {
		writeError(w, http.StatusBadRequest, "seq: want a record number (1, 2, …)")
		return
	}
	var since int64
	if q := r.URL.Query().Get("since"); q != "" {
		if since, err = strconv.ParseInt(q, 10, 64); err != nil || since < 0 {
			writeError(w, http.StatusBadRequest, "since: want a tree size")
			return
		}
	}
	l, err := o.s.openAudit(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	var p *audit.Proof
	if r.URL.Query().Get("cosigned") == "1" {
		// Under the newest cosigned checkpoint, for an auditor requiring a quorum.
		var c *audit.Checkpoint
		if c, err = l.CosignedCheckpoint(r.Context()); err == nil {
			p, err = l.ProveAt(r.Context(), c, seq, since)
		}
	} else {
		p, err = l.Prove(r.Context(), seq, since)
	}
	switch {
	case errors.Is(err, audit.ErrNoCheckpoint):
		writeError(w, http.StatusNotFound, err.Error()+": no witness has cosigned a checkpoint yet")
	case errors.Is(err, audit.ErrBeyondTree):
		writeError(w, http.StatusNotFound, err.Error())
	case err != nil:
		writeError(w, http.StatusInternalServerError, err.Error())
	default:
		writeJSON(w, http.StatusOK, p)
	}
}

// runCheckpointer signs, on the leader only, the audit log's checkpoint every CheckpointInterval while records
// accumulate and collects the witnesses' cosignatures on it, until ctx ends. A witness
// that refuses (a fork, a rollback) is logged as an error and counted.
func (s *Server) runCheckpointer(ctx context.Context) {
	interval := s.cfg.CheckpointInterval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	var clients []*audit.WitnessClient
	for _, u := range s.cfg.Witnesses {
		clients = append(clients, &audit.WitnessClient{URL: u, HTTP: &http.Client{Timeout: 10 * time.Second}})
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var cosigned int64 = -1
	for {
		select {
		case <-ctx.Done():
			// The windows still open are summarised now rather than lost with the process
			// (ServeWith waits for this before the audit log closes), with a context of
			// their own: ctx has ended.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			if err := s.FlushRefusals(fctx, true); err != nil {
				s.log.Error("audit refusal summaries at shutdown", "err", err)
			}
			cancel()
			return
		case <-t.C:
		}
		if err := s.FlushRefusals(ctx, false); err != nil {
			s.log.Error("audit refusal summaries", "err", err) // every replica its own
		}
		if _, leader := s.Leader(ctx); !leader {
			continue // the leader signs and collects cosignatures
		}
		l, err := s.openAudit(ctx)
		if err != nil {
			continue
		}
		c, err := l.Checkpoint(ctx)
		if err != nil {
			s.log.Error("audit checkpoint", "err", err)
			continue
		}
		s.noteCheckpoint(c) // check-ins answer with it at once
		if len(clients) == 0 || c.Size == cosigned {
			continue
		}
		if _, err := l.Cosign(ctx, clients); err != nil {
			s.log.Error("audit witnesses", "size", c.Size, "err", err)
			continue
		}
		cosigned = c.Size
		if c, err := l.CheckpointAt(ctx, c.Size); err == nil {
			s.noteCheckpoint(c) // with the cosignatures
		}
	}
}

// newestCheckpoint is the audit log's newest signed checkpoint as this server last
// read or signed it, for check-in answers: every check-in carries one, and reading it
// from the database each time cost a query per check-in (on sqlite through the
// connection the group committer holds for its batch). Checkpoints change only when a
// replica signs one or witnesses cosign it, so a check-in may be answered with one at
// most ServerConfig.CheckpointRefresh old; a device that echoes a newer one (seen at
// another replica) makes its check-in read the database first, so that a stale cache
// is never taken for a rollback. Safe for concurrent use.
type newestCheckpoint struct {
	cur atomic.Pointer[cachedCheckpoint]
	// refresh serialises the database reads; a check-in that only finds the cache old
	// does not wait for another's read, it answers with the cached checkpoint.
	refresh sync.Mutex
}

// cachedCheckpoint is a checkpoint and when it was read (the server's clock). c is
// shared by every reader: read-only.
type cachedCheckpoint struct {
	c    *audit.Checkpoint
	note string // c.Note
	at   time.Time
}

// checkpointRefresh is how old a cached newest checkpoint may be; 0 or less: not
// cached.
func (s *Server) checkpointRefresh() time.Duration {
	switch d := s.cfg.CheckpointRefresh; {
	case d < 0:
		return 0
	case d == 0:
		return time.Second
	default:
		return d
	}
}

// noteCheckpoint caches c as the newest checkpoint when it is at least as large as the
// cached one (at the same size, c is the newer read: it may carry more cosignatures).
func (s *Server) noteCheckpoint(c *audit.Checkpoint) {
	e := &cachedCheckpoint{c: c, note: string(c.Note), at: s.cfg.Now()}
	for {
		old := s.newest.cur.Load()
		if old != nil && old.c.Size > c.Size {
			return
		}
		if s.newest.cur.CompareAndSwap(old, e) {
			return
		}
	}
}

// latestCheckpoint returns the log's newest signed checkpoint, of at least atLeast
// records: from the cache while it is fresh enough (checkpointRefresh), else from the
// database (signing the first one when the log has none). A cache that cannot satisfy
// atLeast is always refreshed; the result may still be smaller (a rolled-back log), which
// the caller judges.
func (s *Server) latestCheckpoint(ctx context.Context, l *audit.Log, atLeast int64) (*cachedCheckpoint, error) {
	ttl := s.checkpointRefresh()
	fresh := func(e *cachedCheckpoint, now time.Time) bool {
		return e != nil && e.c.Size >= atLeast && !now.Before(e.at) && now.Sub(e.at) < ttl
	}
	if ttl <= 0 {
		return s.readCheckpoint(ctx, l)
	}
	now := s.cfg.Now()
	e := s.newest.cur.Load()
	if fresh(e, now) {
		return e, nil
	}
	if e != nil && e.c.Size >= atLeast {
		// Old but enough: one check-in reads the database, the others keep answering.
		if !s.newest.refresh.TryLock() {
			return e, nil
		}
	} else {
		s.newest.refresh.Lock()
	}
	defer s.newest.refresh.Unlock()
	if e := s.newest.cur.Load(); fresh(e, s.cfg.Now()) {
		return e, nil // another check-in read it meanwhile
	}
	prev := s.newest.cur.Load()
	e, err := s.readCheckpoint(ctx, l)
	if err != nil {
		return nil, err
	}
	// Stored even when smaller than the cached one: the database is the truth (a
	// restored backup), and the device's echo says what it saw; unless one signed here
	// was noted meanwhile (noteCheckpoint) that is at least as large.
	e.at = now
	for {
		cur := s.newest.cur.Load()
		if cur != nil && cur != prev && cur.c.Size >= e.c.Size {
			return cur, nil
		}
		if s.newest.cur.CompareAndSwap(cur, e) {
			return e, nil
		}
	}
}

// readCheckpoint reads the newest checkpoint from the database, signing the first one
// when the log has none.
func (s *Server) readCheckpoint(ctx context.Context, l *audit.Log) (*cachedCheckpoint, error) {
	c, err := l.Latest(ctx)
	if errors.Is(err, audit.ErrNoCheckpoint) {
		c, err = l.Checkpoint(ctx)
	}
	if err != nil {
		return nil, err
	}
	return &cachedCheckpoint{c: c, note: string(c.Note), at: s.cfg.Now()}, nil
}

// auditWitness is the audit part of a check-in response: the newest checkpoint and a
// consistency proof from the checkpoint the device echoed. When the echoed checkpoint
// is not one of this log's (a fork, or a rollback of the server's database), the server
// cannot prove anything; it says so in its own log and still answers, and the device
// refuses the answer. Errors are logged: the check-in has already committed.
//
// The newest checkpoint comes from latestCheckpoint's cache; one the device echoes that
// is newer than the cached one (another replica signed it) is looked up in the database
// before anything is judged.
func (s *Server) auditWitness(ctx context.Context, device, echoed string) *wire.AuditCheckpoint {
	l, err := s.openAudit(ctx)
	if err != nil {
		return nil
	}
	e, err := s.latestCheckpoint(ctx, l, 0)
	if err != nil {
		s.log.Error("audit checkpoint for a check-in", "device", device, "err", err)
		return nil
	}
	if len(s.cfg.Witnesses) > 0 {
		// Witnessed: devices may require a quorum of cosignatures (edgeward-agent
		// --audit-quorum) and accept only a cosigned checkpoint, so they are given the
		// newest that carries cosignatures. It lags the newest by the witnesses' round.
		if c, cerr := l.CosignedCheckpoint(ctx); cerr == nil && c.Size <= e.c.Size {
			e = &cachedCheckpoint{c: c, note: string(c.Note), at: e.at}
		}
	}
	if echoed == "" || echoed == e.note {
		return &wire.AuditCheckpoint{Checkpoint: e.note} // nothing seen yet, or the newest already: nothing to prove
	}
	old, err := audit.OpenCheckpoint([]byte(echoed), l.Verifier(), nil, 0)
	if err == nil && old.Size > e.c.Size {
		// Perhaps signed at another replica since this one read the newest checkpoint.
		if e, err = s.latestCheckpoint(ctx, l, old.Size); err != nil {
			s.log.Error("audit checkpoint for a check-in", "device", device, "err", err)
			return nil
		}
	}
	c := e.c
	out := &wire.AuditCheckpoint{Checkpoint: e.note}
	if echoed == out.Checkpoint {
		return out
	}
	if err != nil && !errors.Is(err, audit.ErrInconsistent) {
		// Not a checkpoint of this log's key at all (unsigned, garbage, oversized): no
		// evidence of a fork, only of a device that says what it likes. Recorded as
		// audit.inconsistent, whole, it let any device write megabytes of its choosing
		// ("FORK DETECTED…") into the log at every check-in (found from outside, 2 Dec).
		s.log.Warn("a device echoed an audit checkpoint that is not this log's", "device", device,
			"bytes", len(echoed), "checkpoint", printable.Text(echoed, 256), "err", err)
		return out
	}
	if err == nil {
		if old.Size > c.Size {
			err = fmt.Errorf("%w: the device has seen a tree of %d records, the log has %d", audit.ErrInconsistent, old.Size, c.Size)
		} else if h, herr := l.TreeHash(ctx, old.Size); herr != nil {
			// Not evidence of anything: the log could not be read now (the database
			// away, the check-in's request gone). Taken for a fork, it logged a false
			// alarm and recorded audit.inconsistent whenever the append went through.
			// The device gets no proof and asks again at its next check-in.
			s.log.Error("cannot check a device's audit checkpoint against the log now: reading the log failed", "device", device, "size", old.Size, "err", herr)
			return out
		} else if h != old.Hash {
			err = fmt.Errorf("%w: the device's checkpoint of size %d is not this log's tree", audit.ErrInconsistent, old.Size)
		}
	}
	if err != nil {
		s.log.Error("a device holds an audit checkpoint this log cannot extend", "device", device, "err", err)
		s.auditLog(ctx, "device:"+device, "audit.inconsistent", device, map[string]any{"checkpoint": echoed, "error": err.Error()})
		return out
	}
	p, err := l.ConsistencyProof(ctx, old.Size, c.Size)
	if err != nil {
		s.log.Error("audit consistency proof", "device", device, "err", err)
		return out
	}
	for _, h := range p {
		out.Proof = append(out.Proof, append([]byte(nil), h[:]...))
	}
	return out
}
