package runtime

import (
	"fmt"
	"net"
	"os"

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
// its Listen) keep open at once, together: max, or with max 0 half the file
// descriptors left after 256 for the runtime's own files (connlimit.FromDescriptors);
// negative, no bound. A connection over it is closed unserved; without the bound,
// clients holding connections that send nothing could use up the descriptors, and a
// model swap or probe could then not open its model file. Its refusals are counted in
// edgeward_runtime_connections_refused_total, its connections in
// edgeward_runtime_connections_open.
func (r *Runtime) ConnLimiter(max int) *connlimit.Limiter {
	switch {
	case max == 0:
		max = connlimit.FromDescriptors(256)
	case max < 0:
		max = 0
	}
	refused := prometheus.NewCounter(prometheus.CounterOpts{Name: "edgeward_runtime_connections_refused_total",
		Help: "Connections to the public listeners closed unserved because they held --max-conns connections."})
	l := connlimit.NewLimiter(connlimit.Config{Max: max, Refused: func(string, net.Addr) { refused.Inc() }})
	r.metrics.reg.MustRegister(refused, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "edgeward_runtime_connections_open",
		Help: "Connections the public listeners (HTTP and gRPC) hold open now."}, func() float64 { return float64(l.Open()) }))
	r.log.Info("connection bound", "max_conns", max)
	return l
}
