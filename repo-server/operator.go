package reposerver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// OperatorConfig enables the operator API on a Server.
type OperatorConfig struct {
	// Fleet authenticates operators (API tokens) and holds the fleet. Required.
	Fleet *fleet.Store
	// Signing holds the delegated-role keys the server may sign published targets
	// with. nil: the server publishes nothing itself (operators publish with the CLI
	// on the repository directory), and POST /v1/publish answers 503.
	Signing *KeyRing
	// MaxPublishBytes bounds an uploaded target; 0: 16 GiB.
	MaxPublishBytes int64
}

// operatorAPI serves /v1/ for operators: JSON, bearer tokens, roles checked by
// fleet.Authorize, every write attributed in the audit log.
type operatorAPI struct {
	s   *Server
	cfg OperatorConfig
	// signMu serialises use of the KeyRing, which is not safe for concurrent use.
	signMu sync.Mutex
}

// EnableOperatorAPI mounts the operator API.
func (s *Server) EnableOperatorAPI(cfg OperatorConfig) error {
	if cfg.Fleet == nil {
		return errors.New("operator API: no fleet store")
	}
	if cfg.MaxPublishBytes <= 0 {
		cfg.MaxPublishBytes = 16 << 30
	}
	o := &operatorAPI{s: s, cfg: cfg}
	s.mux.Handle("POST /v1/publish", s.count("operator", o.auth(fleet.ActionPublish, o.publish)))
	s.mux.Handle("GET /v1/repository", s.count("operator", o.auth(fleet.ActionFleetRead, o.status)))
	s.mux.Handle("GET /v1/audit/export", s.count("operator", o.auth(fleet.ActionAuditExport, o.auditExport)))
	return nil
}

type principalKey struct{}

// auth authenticates the bearer token and authorizes action before calling h.
func (o *operatorAPI) auth(action fleet.Action, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok {
			writeError(w, http.StatusUnauthorized, "missing bearer token")
			return
		}
		p, err := o.cfg.Fleet.Authenticate(r.Context(), strings.TrimSpace(tok), o.s.cfg.Repo.now())
		if err != nil {
			writeError(w, http.StatusUnauthorized, err.Error())
			return
		}
		if err := fleet.Authorize(p, action); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), principalKey{}, p)))
	})
}

func principal(r *http.Request) fleet.Principal {
	p, _ := r.Context().Value(principalKey{}).(fleet.Principal)
	return p
}

// publish streams the request body into the repository as a target.
//
//	POST /v1/publish?kind=model&name=iris&version=1.0.0&ext=.onnx
//	X-Edgeward-Meta: {"gates":{"min_accuracy":"0.95"}, ...}   (optional artifact.Meta JSON)
//	body: the target's bytes
func (o *operatorAPI) publish(w http.ResponseWriter, r *http.Request) {
	if o.cfg.Signing == nil {
		writeError(w, http.StatusServiceUnavailable, "this server holds no signing keys for delegated roles; publish with 'edgeward publish' on the repository")
		return
	}
	q := r.URL.Query()
	var meta artifact.Meta
	if h := r.Header.Get("X-Edgeward-Meta"); h != "" {
		if len(h) > 64<<10 {
			writeError(w, http.StatusBadRequest, "X-Edgeward-Meta too large")
			return
		}
		if err := json.Unmarshal([]byte(h), &meta); err != nil {
			writeError(w, http.StatusBadRequest, "X-Edgeward-Meta: "+err.Error())
			return
		}
	}
	kind, err := artifact.ParseKind(q.Get("kind"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	meta.Kind, meta.Name, meta.Version = kind, q.Get("name"), q.Get("version")
	ext := q.Get("ext")
	if ext != "" && (!strings.HasPrefix(ext, ".") || strings.ContainsAny(ext, "/\\") || len(ext) > 16) {
		writeError(w, http.StatusBadRequest, "ext: want a file extension such as .onnx")
		return
	}
	if meta.Format == "" {
		meta.Format = strings.TrimPrefix(ext, ".")
	}
	if err := meta.Validate(); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if r.ContentLength > o.cfg.MaxPublishBytes {
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("target larger than %d bytes", o.cfg.MaxPublishBytes))
		return
	}
	body := http.MaxBytesReader(w, r.Body, o.cfg.MaxPublishBytes)
	p := principal(r)
	repo := *o.s.cfg.Repo
	repo.cfg.Actor = "operator:" + p.Name
	o.signMu.Lock()
	res, err := repo.Publish(r.Context(), PublishRequest{Meta: meta, Ext: ext, Content: body}, o.cfg.Signing)
	o.signMu.Unlock()
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("target larger than %d bytes", o.cfg.MaxPublishBytes))
		return
	case errors.Is(err, ErrConflict):
		writeError(w, http.StatusConflict, err.Error())
		return
	case errors.Is(err, ErrOutsideDelegation):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		o.s.log.Error("publish through the operator API", "operator", p.Name, "err", err)
		writeError(w, http.StatusInternalServerError, "publish failed: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if !res.Unchanged {
		w.WriteHeader(http.StatusCreated)
	}
	json.NewEncoder(w).Encode(res)
}

func (o *operatorAPI) status(w http.ResponseWriter, r *http.Request) {
	st, err := o.s.cfg.Repo.Load(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{
		"root": st.Root.Signed.Version, "timestamp": st.Timestamp.Signed.Version, "snapshot": st.Snapshot.Signed.Version,
		"targets": st.List(),
	})
}

func (o *operatorAPI) auditExport(w http.ResponseWriter, r *http.Request) {
	l, db, err := o.s.cfg.Repo.OpenAudit(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	}
	defer db.Close()
	w.Header().Set("Content-Type", "application/x-ndjson")
	if err := l.Export(r.Context(), w); err != nil {
		o.s.log.Error("audit export", "err", err)
	}
}
