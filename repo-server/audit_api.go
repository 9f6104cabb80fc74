package reposerver

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

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
		if err != nil || v < 0 {
			return nil, false
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

// auditProve serves GET /v1/audit/prove?seq=S[&since=M]: record S with its inclusion
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
	p, err := l.Prove(r.Context(), seq, since)
	switch {
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
		if len(clients) == 0 || c.Size == cosigned {
			continue
		}
		if _, err := l.Cosign(ctx, clients); err != nil {
			s.log.Error("audit witnesses", "size", c.Size, "err", err)
			continue
		}
		cosigned = c.Size
	}
}

// auditWitness is the audit part of a check-in response: the newest checkpoint and a
// consistency proof from the checkpoint the device echoed. When the echoed checkpoint
// is not one of this log's (a fork, or a rollback of the server's database), the server
// cannot prove anything; it says so in its own log and still answers, and the device
// refuses the answer. Errors are logged: the check-in has already committed.
func (s *Server) auditWitness(ctx context.Context, device, echoed string) *wire.AuditCheckpoint {
	l, err := s.openAudit(ctx)
	if err != nil {
		return nil
	}
	c, err := l.Latest(ctx)
	if errors.Is(err, audit.ErrNoCheckpoint) {
		c, err = l.Checkpoint(ctx)
	}
	if err != nil {
		s.log.Error("audit checkpoint for a check-in", "device", device, "err", err)
		return nil
	}
	out := &wire.AuditCheckpoint{Checkpoint: string(c.Note)}
	if echoed == "" || echoed == out.Checkpoint {
		return out // nothing seen yet, or the newest already: nothing to prove
	}
	old, err := audit.OpenCheckpoint([]byte(echoed), l.Verifier(), nil, 0)
	if err == nil {
		if old.Size > c.Size {
			err = fmt.Errorf("%w: the device has seen a tree of %d records, the log has %d", audit.ErrInconsistent, old.Size, c.Size)
		} else if h, herr := l.TreeHash(ctx, old.Size); herr != nil {
			err = herr
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
