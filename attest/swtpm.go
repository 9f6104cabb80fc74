package attest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// swtpm speaks raw TPM commands on its server port and its own control
// protocol (not the reference simulator's platform protocol) on the control
// port; this is what tpm2-tools' "swtpm" TCTI does too.

const (
	swtpmCmdInit     = 0x02 // CMD_INIT: power on / re-initialise the TPM
	swtpmIOTimeout   = 2 * time.Minute
	swtpmMaxResponse = 1 << 20
)

type swtpmTransport struct {
	mu   sync.Mutex
	conn net.Conn
}

// swtpmStartGrace is how long openSwtpm keeps retrying a refused connection.
const swtpmStartGrace = 3 * time.Second

func openSwtpm(raw string) (Transport, error) {
	pu, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrBadURL, raw, err)
	}
	host, portStr, err := net.SplitHostPort(pu.Host)
	if err != nil {
		return nil, fmt.Errorf("%w: %q: %w", ErrBadURL, raw, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port >= 65535 {
		return nil, fmt.Errorf("%w: %q: bad port", ErrBadURL, raw)
	}
	// swtpm binds its control port a moment before its command port, so a TPM that was
	// just started (by systemd, a test, the lab) may refuse the first connection: retry
	// a refused connection briefly, fail on anything else at once.
	addr := net.JoinHostPort(host, strconv.Itoa(port))
	var conn net.Conn
	for deadline := time.Now().Add(swtpmStartGrace); ; {
		conn, err = net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("attest: swtpm %s: %w", raw, err)
	}
	t := &swtpmTransport{conn: conn}
	// A running TPM answers TPM_RC_INITIALIZE (already started: keep its
	// PCRs, e.g. across an agent restart); a powered-off swtpm answers
	// TPM_RC_FAILURE until CMD_INIT on the control port powers it on.
	_, err = (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(t)
	if errors.Is(err, tpm2.TPMRCFailure) {
		if err := swtpmInit(net.JoinHostPort(host, strconv.Itoa(port+1))); err != nil {
			t.Close()
			return nil, fmt.Errorf("attest: swtpm %s power on: %w", raw, err)
		}
		_, err = (tpm2.Startup{StartupType: tpm2.TPMSUClear}).Execute(t)
	}
	if err != nil && !errors.Is(err, tpm2.TPMRCInitialize) {
		t.Close()
		return nil, fmt.Errorf("attest: swtpm %s startup: %w", raw, err)
	}
	return t, nil
}

// swtpmInit sends CMD_INIT on the control port. A TPM that is already
// initialised answers success too.
func swtpmInit(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	var req [8]byte
	binary.BigEndian.PutUint32(req[0:], swtpmCmdInit)
	binary.BigEndian.PutUint32(req[4:], 0) // init flags
	if _, err := c.Write(req[:]); err != nil {
		return err
	}
	var rsp [4]byte
	if _, err := io.ReadFull(c, rsp[:]); err != nil {
		return err
	}
	if rc := binary.BigEndian.Uint32(rsp[:]); rc != 0 {
		return fmt.Errorf("CMD_INIT returned %#x", rc)
	}
	return nil
}

// Send implements transport.TPM.
func (s *swtpmTransport) Send(cmd []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_ = s.conn.SetDeadline(time.Now().Add(swtpmIOTimeout))
	if _, err := s.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("attest: swtpm send: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(s.conn, hdr); err != nil {
		return nil, fmt.Errorf("attest: swtpm receive: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[2:6])
	if n < 10 || n > swtpmMaxResponse {
		return nil, fmt.Errorf("attest: swtpm response size %d", n)
	}
	rsp := make([]byte, n)
	copy(rsp, hdr)
	if _, err := io.ReadFull(s.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("attest: swtpm receive: %w", err)
	}
	return rsp, nil
}

// Close implements io.Closer.
func (s *swtpmTransport) Close() error { return s.conn.Close() }
