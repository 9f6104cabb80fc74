package updater

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater/tuftest"
)

// deviceServer speaks the device API's wire protocol: single-use nonces, evidence bound
// to the whole request, reports stored once by ID, one decision per kind.
type deviceServer struct {
	t       *testing.T
	mu      sync.Mutex
	nonces  map[string][]byte
	reports map[string]deviceapi.Report
	want    map[artifact.Kind]string
	down    bool
	last    deviceapi.CheckInRequest
}

func (s *deviceServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.down {
		http.Error(w, `{"error":"maintenance"}`, http.StatusServiceUnavailable)
		return
	}
	switch r.URL.Path {
	case deviceapi.PathNonce:
		var req deviceapi.NonceRequest
		json.NewDecoder(r.Body).Decode(&req)
		n := make([]byte, 32)
		rand.Read(n)
		s.nonces[req.DeviceID] = n
		json.NewEncoder(w).Encode(deviceapi.NonceResponse{Nonce: n})
	case deviceapi.PathCheckIn:
		var req deviceapi.CheckInRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, `{"error":"bad request"}`, http.StatusBadRequest)
			return
		}
		qd, _ := deviceapi.QuoteData(req.Nonce, &req)
		if !bytes.Equal(req.Nonce, s.nonces[req.DeviceID]) || !bytes.Equal(req.Evidence.Quote.Attest, qd) {
			http.Error(w, `{"error":"evidence does not cover the request"}`, http.StatusUnauthorized)
			return
		}
		delete(s.nonces, req.DeviceID)
		for _, rep := range req.Reports {
			s.reports[rep.ID] = rep
		}
		s.last = req
		resp := deviceapi.CheckInResponse{DeviceID: req.DeviceID, Trusted: true, ReportsAccepted: len(req.Reports)}
		for k, p := range s.want {
			resp.Slots = append(resp.Slots, deviceapi.SlotDecision{Kind: k, Action: "install", Target: p})
		}
		json.NewEncoder(w).Encode(resp)
	default:
		http.NotFound(w, r)
	}
}

// unboundQuote's evidence does not cover the request.
type unboundQuote struct{}

func (unboundQuote) Evidence(context.Context, []byte) (deviceapi.Evidence, error) {
	return deviceapi.Evidence{AKCert: []byte("ak")}, nil
}

// quoteBound stands in for the TPM: its "quote" is the qualifying data itself.
type quoteBound struct{}

func (quoteBound) Evidence(_ context.Context, qd []byte) (deviceapi.Evidence, error) {
	var ev deviceapi.Evidence
	ev.AKCert = []byte("ak")
	ev.Quote.Attest = qd
	return ev, nil
}

func TestDeviceDirector(t *testing.T) {
	ctx := context.Background()
	r := tuftest.New(t)
	p1, _ := r.AddModel("iris", "1.0.0", 0)
	p2, _ := r.AddModel("iris", "2.0.0", 0)
	srv := &deviceServer{t: t, nonces: map[string][]byte{}, reports: map[string]deviceapi.Report{}}
	hs := httptest.NewServer(srv)
	defer hs.Close()
	state := t.TempDir()
	PinRoot(filepath.Join(state, "tuf"), r.RootBytes(1))
	c := newClient(t, r, filepath.Join(state, "tuf"))
	m, _ := rollback.Open(ctx, rollback.Config{Dir: state, Fetch: c.SlotFetcher()})
	defer m.Close()
	o, _ := OpenOutbox(ctx, filepath.Join(state, "outbox.db"))
	defer o.Close()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	dir := &DeviceDirector{Client: &deviceapi.Client{BaseURL: hs.URL}, DeviceID: "dev-1", Attester: quoteBound{}, Outbox: o, Now: clock}
	a, _ := NewAgent(AgentConfig{DeviceID: "dev-1", TUF: c, Slots: m, Director: dir, Judge: judge{"2.0.0": "p99 9ms > 5ms"}, Outbox: o, Now: clock})

	srv.want = map[artifact.Kind]string{artifact.KindModel: p1}
	if err := a.Step(ctx); err != nil {
		t.Fatalf("round 1: %v", err)
	}
	srv.want = map[artifact.Kind]string{artifact.KindModel: p2}
	a.Step(ctx) // sends the 1.0.0 report; 2.0.0 fails its trial
	srv.down = true
	a.Step(ctx) // offline: the 2.0.0 report waits
	if n, _ := o.Len(ctx); n != 1 || len(srv.reports) != 1 {
		t.Fatalf("while the server is down: %d waiting, %d stored; want 1 and 1", n, len(srv.reports))
	}
	srv.down = false
	if err := a.Step(ctx); err != nil {
		t.Fatalf("round 4: %v", err)
	}
	if n, _ := o.Len(ctx); n != 0 || len(srv.reports) != 2 {
		t.Errorf("after the server came back: %d waiting, %d stored; want 0 and 2", n, len(srv.reports))
	}
	if s := srv.last.Slots[artifact.KindModel]; s.Name != "iris" || s.Version != "1.0.0" {
		t.Errorf("reported slot = %+v; want iris 1.0.0", s)
	}
	// Evidence that does not cover the request is refused: the check-in fails, the
	// agent keeps its state.
	dir.Attester = unboundQuote{}
	if err := a.Step(ctx); err == nil {
		t.Errorf("check-in with unbound evidence succeeded")
	}
}
