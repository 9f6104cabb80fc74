package runtimeapi

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// TestTrialWithoutAProbeSet: a target published without a probe set is loaded and not
// probed, and the trial passes (gates, which need a probe set, are refused). The client
// dereferenced the nil probe set: the agent panicked at every round that offered such a
// model, and its death took the serving runtime down with it.
func TestTrialWithoutAProbeSet(t *testing.T) {
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.Method+" "+r.URL.Path)
		json.NewEncoder(w).Encode(ModelInfo{Name: "m", Versions: []string{"1.0.0"}})
	}))
	defer srv.Close()
	c := &Client{BaseURL: srv.URL}
	ctx := context.Background()
	_, rep, err := c.Trial(ctx, LoadRequest{Name: "m", Version: "1.0.0", Path: "/slot/payload"}, nil, nil)
	if err != nil || !rep.Pass || rep.Model != "m" || rep.Version != "1.0.0" {
		t.Fatalf("Trial without a probe set = %+v, %v; want a pass", rep, err)
	}
	if len(paths) != 1 || paths[0] != "POST /v2/repository/models/m/load" {
		t.Fatalf("requests = %v; want the load alone", paths)
	}
	if _, _, err := c.Trial(ctx, LoadRequest{Name: "m", Version: "1.0.0"}, nil, &artifact.Gates{MinAccuracy: 0.9}); err == nil {
		t.Fatal("Trial with gates and no probe set succeeded")
	}
	if _, err := c.Probe(ctx, "m", "1.0.0", nil, nil); err == nil {
		t.Fatal("Probe without a probe set succeeded")
	}
}
