package runtime

import (
	"context"
	"io"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestGRPCHealth: gRPC's standard health service (what Kubernetes' gRPC probes and
// grpc-health-probe ask) follows the runtime's readiness, for the server and the
// inference service, and says NOT_FOUND for another service; Watch sends the change.
func TestGRPCHealth(t *testing.T) {
	r := newTestRuntime(t)
	conn, err := grpc.NewClient(serveGRPC(t, r), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	h := healthpb.NewHealthClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	check := func(service string) healthpb.HealthCheckResponse_ServingStatus {
		t.Helper()
		resp, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		if err != nil {
			t.Fatalf("Check(%q) = %v", service, err)
		}
		return resp.Status
	}
	if st := check(""); st != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("Check(\"\") without models = %v; want NOT_SERVING", st)
	}
	w, err := h.Watch(ctx, &healthpb.HealthCheckRequest{Service: "inference.GRPCInferenceService"})
	if err != nil {
		t.Fatal(err)
	}
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch's first message = %v, %v; want NOT_SERVING", m, err)
	}
	loadIris(t, r, "1.0.0")
	for _, s := range []string{"", "inference.GRPCInferenceService"} {
		if st := check(s); st != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("Check(%q) with a model = %v; want SERVING", s, st)
		}
	}
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("Watch after the model loaded = %v, %v; want SERVING", m, err)
	}
	if _, err := h.Check(ctx, &healthpb.HealthCheckRequest{Service: "other.Service"}); status.Code(err) != codes.NotFound {
		t.Errorf("Check(another service) = %v; want NotFound", err)
	}
	if l, err := h.List(ctx, &healthpb.HealthListRequest{}); err != nil || len(l.Statuses) != 2 || l.Statuses[""].Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("List = %v, %v", l, err)
	}
	// Draining: the watch says NOT_SERVING and ends, so it holds no GracefulStop.
	r.SetDraining()
	if m, err := w.Recv(); err != nil || m.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("Watch while draining = %v, %v; want NOT_SERVING", m, err)
	}
	if m, err := w.Recv(); err != io.EOF {
		t.Fatalf("Watch after NOT_SERVING while draining = %v, %v; want the end of the call", m, err)
	}
}
