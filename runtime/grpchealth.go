package runtime

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
)

// grpcHealth serves gRPC's standard health checking protocol (grpc.health.v1.Health),
// what Kubernetes' gRPC probes, grpc-health-probe and load balancers ask: the server as
// a whole ("") and the inference service are SERVING when the runtime is ready (the
// Open Inference Protocol's ServerReady: not while draining or without models),
// NOT_SERVING otherwise; any other service is NOT_FOUND (SERVICE_UNKNOWN for Watch).
type grpcHealth struct {
	healthpb.UnimplementedHealthServer
	r *Runtime
	// poll is how often Watch looks at readiness (zero: every second).
	poll time.Duration
}

func registerGRPCHealth(s *grpc.Server, r *Runtime) {
	healthpb.RegisterHealthServer(s, &grpcHealth{r: r})
}

// healthServices are the services the health service answers for.
var healthServices = []string{"", inference.GRPCInferenceService_ServiceDesc.ServiceName}

func (h *grpcHealth) status(service string) (healthpb.HealthCheckResponse_ServingStatus, bool) {
	known := false
	for _, s := range healthServices {
		known = known || s == service
	}
	switch {
	case !known:
		return healthpb.HealthCheckResponse_SERVICE_UNKNOWN, false
	case h.r.Ready():
		return healthpb.HealthCheckResponse_SERVING, true
	default:
		return healthpb.HealthCheckResponse_NOT_SERVING, true
	}
}

func (h *grpcHealth) Check(_ context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	st, ok := h.status(req.GetService())
	if !ok {
		return nil, status.Errorf(codes.NotFound, "unknown service %.64q", req.GetService())
	}
	return &healthpb.HealthCheckResponse{Status: st}, nil
}

func (h *grpcHealth) List(context.Context, *healthpb.HealthListRequest) (*healthpb.HealthListResponse, error) {
	out := &healthpb.HealthListResponse{Statuses: map[string]*healthpb.HealthCheckResponse{}}
	for _, s := range healthServices {
		st, _ := h.status(s)
		out.Statuses[s] = &healthpb.HealthCheckResponse{Status: st}
	}
	return out, nil
}

// Watch sends the service's status now and again at each change, until the caller
// leaves or the runtime drains: then it sends NOT_SERVING and ends the call, as
// grpc-go's own health server does at Shutdown. A watch left open would hold
// GracefulStop, and so every drain, for the whole drain timeout, and then the calls in
// flight would be cut (found by review).
func (h *grpcHealth) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	poll := h.poll
	if poll <= 0 {
		poll = time.Second
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	last := healthpb.HealthCheckResponse_ServingStatus(-1)
	for {
		if st, _ := h.status(req.GetService()); st != last {
			if err := stream.Send(&healthpb.HealthCheckResponse{Status: st}); err != nil {
				return err
			}
			last = st
		}
		if h.r.draining.Load() {
			return nil
		}
		select {
		case <-stream.Context().Done():
			return status.FromContextError(stream.Context().Err()).Err()
		case <-t.C:
		}
	}
}
