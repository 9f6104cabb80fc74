package runtime

import (
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/edgeward/edgeward/internal/connlimit"
	"github.com/prometheus/client_golang/prometheus"
)

// ListenerFromFD returns the listening socket inherited as file descriptor fd (the
// agent passes the public socket to each runtime process it starts, so the port stays
// open across runtime swaps). The descriptor is duplicated and closed; closing the
// returned listener does not close the socket in other processes.
func ListenerFromFD(fd int) (net.Listener, error) {
	f := os.NewFile(uintptr(fd), fmt.Sprintf("listen-fd-%d", fd))
	if f == nil {
		return nil, fmt.Errorf("listen fd %d: not a valid descriptor", fd)
	}
	defer f.Close()
	ln, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("listen fd %d: %w", fd, err)
	}
	return ln, nil
}

// ConnLimiter bounds the connections the public listeners (HTTP and gRPC, wrapped with
// its Listen) keep open at once: max together, or with max 0 half the file descriptors
// left after 256 for the runtime's own files (connlimit.FromDescriptors); and
// perSource from one source (an IPv4 address, an IPv6 /64), or with perSource 0 1,024
// (never more than max). Negative: no bound. A connection over a bound is closed
// unserved; without the bounds, clients holding connections that send nothing could use
// up the descriptors, and a model swap or probe could then not open its model file, or
// one client could hold every place. Its refusals are counted in
// edgeward_runtime_connections_refused_total{bound="total"|"source"} and logged at most
// every 10 s, its connections in edgeward_runtime_connections_open.
func (r *Runtime) ConnLimiter(max, perSource int) *connlimit.Limiter {
	switch {
	case max == 0:
		max = connlimit.FromDescriptors(256)
	case max < 0:
		max = 0
	}
	switch {
	case perSource == 0:
		perSource = 1024
		if max > 0 {
			perSource = min(perSource, max)
		}
	case perSource < 0:
		perSource = 0
	}
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgeward_runtime_connections_refused_total",
		Help: "Connections to the public listeners closed unserved because they held --max-conns connections (bound=total) or their source held --max-conns-per-source (bound=source)."}, []string{"bound"})
	var mu sync.Mutex
	var last time.Time
	var since int
	l := connlimit.NewLimiter(connlimit.Config{Max: max, PerSource: perSource, Refused: func(bound string, peer net.Addr) {
		refused.WithLabelValues(bound).Inc()
		mu.Lock()
		defer mu.Unlock()
		since++
		if now := time.Now(); now.Sub(last) >= 10*time.Second {
			r.log.Warn("connections refused: at the bound", "bound", bound, "peer", peer.String(), "refused_since_last_warning", since, "max_conns", max, "max_conns_per_source", perSource)
			last, since = now, 0
		}
	}})
	r.metrics.reg.MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgeward_runtime_connections_open",
		Help: "Connections the public listeners (HTTP and gRPC) hold open now."}, func() float64 { return float64(l.Open()) }))
	r.log.Info("connection bounds", "max_conns", max, "max_conns_per_source", perSource)
	return l
}
