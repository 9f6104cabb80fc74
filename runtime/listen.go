package runtime

import (
	"fmt"
	"net"
	"os"
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
