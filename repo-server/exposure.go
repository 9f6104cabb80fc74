package reposerver

import (
	"net/http"

	"github.com/edgeward/edgeward/internal/wire"
)

// Exposure says which of the server's audiences a listener serves. TUF clients
// (/metadata, /targets), /healthz, /metrics and the audit log's public API (checkpoints
// and proofs, which hold only hashes) are served on every listener.
type Exposure struct {
	// Operators: the operator API (/v1/… with a token or an operator certificate) and
	// the dashboard (/ui/). Operator credentials should only cross TLS.
	Operators bool
	// Devices: the device API (nonces, check-ins, the device CA's address) and the
	// attestation CA's enrollment (/v1/attest/).
	Devices bool
}

// publicRoutes are the patterns every listener serves: what they answer is public
// (signed TUF metadata, target contents, health, metrics, audit hashes).
var publicRoutes = map[string]bool{
	"GET /metadata/{file}":            true,
	"GET /targets/{path...}":          true,
	"GET /healthz":                    true,
	"GET /readyz":                     true,
	"GET /metrics":                    true,
	"GET /v1/audit/checkpoint":        true,
	"GET /v1/audit/proof/inclusion":   true,
	"GET /v1/audit/proof/consistency": true,
}

// deviceRoutes are the patterns of the device API and of enrollment.
var deviceRoutes = map[string]bool{
	"GET " + wire.PathDeviceCA: true,
	"POST " + wire.PathNonce:   true,
	"POST " + wire.PathCheckIn: true,
	wire.PathAttest + "/":      true,
}

// Restrict returns the server's handler limited to e: a request for a route of an
// audience e leaves out is refused with 403 and a message saying how to reach it
// (devicesWhy for the device API, operatorsWhy for the operator API and the dashboard),
// before any of its handler runs (no credential is read, nothing is stored). Every
// route that is neither public nor the device API counts as an operator route, so a
// route added later is restricted unless it is declared public.
func (s *Server) Restrict(e Exposure, devicesWhy, operatorsWhy string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if name, ok := s.metadataRequest(r); ok { // public, and the hot path
			s.serveMetadataFile(w, r, name)
			return
		}
		if p, ok := targetRequest(r); ok { // public
			s.serveTargetCounted(w, r, p)
			return
		}
		_, pattern := s.mux.Handler(r)
		switch {
		case pattern == "" || publicRoutes[pattern]:
		case deviceRoutes[pattern]:
			if !e.Devices {
				writeError(w, http.StatusForbidden, "the device API is not served on this listener"+devicesWhy)
				return
			}
		default:
			if !e.Operators {
				writeError(w, http.StatusForbidden, "the operator API and the dashboard are not served on this listener"+operatorsWhy)
				return
			}
		}
		s.mux.ServeHTTP(w, r)
	})
}
