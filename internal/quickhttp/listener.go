package quickhttp

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// Responder answers a request Parse accepted: it appends the status line and the header
// fields (the empty line included) to dst and returns them with the body to send after
// them. ok false hands the request, and its connection from then on, to net/http. It is
// called from one goroutine per connection, concurrently.
type Responder func(dst []byte, r *Request, date []byte) (head, body []byte, ok bool)

// Config tunes a Listener. The zero value is net/http's defaults as Edgeward's servers
// set them.
type Config struct {
	// HeaderTimeout bounds the time from a connection's accept, or from the first byte
	// of a later request, to the end of the request's header fields (0: 10 seconds);
	// IdleTimeout the wait for a connection's next request after a response (0: 2
	// minutes): the http.Server's ReadHeaderTimeout and IdleTimeout, so that a
	// connection is held as long either way. IdleTimeout also bounds how long a client
	// may take to accept each 64 KiB of a response (net/http, without a WriteTimeout,
	// waits forever).
	HeaderTimeout, IdleTimeout time.Duration
	// Now is the clock (nil: time.Now).
	Now func() time.Time
	// AcceptError, when set, hears of the inner listener's temporary accept errors,
	// retried after a pause as net/http retries them.
	AcceptError func(error)
}

const (
	// bufSize is a connection's read buffer: a request that does not fit is net/http's.
	bufSize = 4 << 10
	// flushAt is how much of pipelined responses is gathered before a write.
	flushAt = 32 << 10
	// writeChunk is how much of a large body is written under one write deadline.
	writeChunk = 64 << 10
	// keepOut is the most of a gathering buffer a connection keeps while idle.
	keepOut = 8 << 10
	// rearm is how stale a deadline may grow before it is set again: deadlines are set
	// at most about once a second per connection rather than per request.
	rearm = time.Second
)

// Listener serves the connections of an inner listener (plain TCP: a TLS connection
// must reach net/http as a *tls.Conn) and hands those it cannot answer to whoever
// calls Accept, normally an http.Server's Serve. A handed connection reads first the
// bytes this package read but did not answer, so net/http sees the connection as if it
// had read it from its first unanswered byte.
type Listener struct {
	inner   net.Listener
	respond Responder
	cfg     Config
	handoff chan net.Conn
	done    chan struct{}

	doneOnce sync.Once // closes done: at Close, or at an accept error that ends the loop

	mu     sync.Mutex
	closed bool  // Close was called
	err    error // the inner listener's accept error that ended the loop
	conns  map[net.Conn]struct{}
}

func (l *Listener) finish() { l.doneOnce.Do(func() { close(l.done) }) }

// Listen serves inner's connections with respond until Close.
func Listen(inner net.Listener, respond Responder, cfg Config) *Listener {
	if cfg.HeaderTimeout <= 0 {
		cfg.HeaderTimeout = 10 * time.Second
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 2 * time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	l := &Listener{inner: inner, respond: respond, cfg: cfg, handoff: make(chan net.Conn),
		done: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	go l.acceptLoop()
	return l
}

// Accept returns the next connection handed to net/http.
func (l *Listener) Accept() (net.Conn, error) {
	select {
	case c := <-l.handoff:
		return c, nil
	case <-l.done:
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.err != nil {
			return nil, l.err
		}
		return nil, net.ErrClosed
	}
}

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Close closes the inner listener and every connection this package still serves once
// its current response is written; connections already handed over are net/http's.
func (l *Listener) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.finish()
	past := time.Unix(1, 0)
	for c := range l.conns {
		c.SetReadDeadline(past) // its goroutine closes it
	}
	l.mu.Unlock()
	return l.inner.Close()
}

func (l *Listener) acceptLoop() {
	var pause time.Duration
	for {
		c, err := l.inner.Accept()
		if err != nil {
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() && !errors.Is(err, net.ErrClosed) {
				// Out of file descriptors and the like: as net/http does.
				if pause == 0 {
					pause = 5 * time.Millisecond
				} else if pause *= 2; pause > time.Second {
					pause = time.Second
				}
				if l.cfg.AcceptError != nil {
					l.cfg.AcceptError(err)
				}
				select {
				case <-time.After(pause):
					continue
				case <-l.done:
					return
				}
			}
			// The loop ends here; Close (which http.Server.Serve calls as it returns
			// this error from Accept) still closes the inner listener and what is served.
			l.mu.Lock()
			if !l.closed {
				l.err = err
			}
			l.mu.Unlock()
			l.finish()
			return
		}
		pause = 0
		go l.serve(c)
	}
}

// track registers c as served here; false once the listener is closed.
func (l *Listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *Listener) untrack(c net.Conn) {
	l.mu.Lock()
	delete(l.conns, c)
	l.mu.Unlock()
}

// conn is one connection's state while this package serves it.
type conn struct {
	l               *Listener
	c               net.Conn
	w               io.Writer // c, or the connection it wraps (NetConn): net.Buffers writes it with writev
	buf             []byte
	start, end      int // the unanswered bytes are buf[start:end]
	out             []byte
	readBy, writeBy time.Time // the deadlines set
	headerBy        time.Time // when the current request's header is due (zero: none begun)
	dateSec         int64
	date            []byte
	handed          bool
	answered        bool // a response was written: the wait for the next request is idle
}

func (l *Listener) serve(c net.Conn) {
	if !l.track(c) {
		c.Close()
		return
	}
	s := &conn{l: l, c: c, w: c, buf: make([]byte, bufSize), dateSec: -1}
	if u, ok := c.(interface{ NetConn() net.Conn }); ok {
		s.w = u.NetConn() // a wrapper (connlimit's) would hide writev from net.Buffers
	}
	// The first request's header is due HeaderTimeout after the accept, as net/http
	// has it: a connection that sends nothing is not held for IdleTimeout.
	s.headerBy = l.cfg.Now().Add(l.cfg.HeaderTimeout)
	s.run()
	if !s.handed {
		l.untrack(c)
		c.Close()
	}
}

func (s *conn) run() {
	for {
		// Answer every whole request read, gathering the responses.
		for s.start < s.end {
			req, n, more := Parse(s.buf[s.start:s.end])
			if n == 0 {
				if more {
					break
				}
				s.handOver()
				return
			}
			head, body, ok := s.l.respond(s.out, &req, s.dateNow())
			if !ok {
				s.handOver()
				return
			}
			s.start += n
			s.headerBy = time.Time{} // the next request has its own HeaderTimeout
			s.answered = true
			s.out = head
			if len(body) > flushAt {
				if !s.write(body) {
					return
				}
				continue
			}
			s.out = append(s.out, body...)
			if len(s.out) >= flushAt && !s.write(nil) {
				return
			}
		}
		if len(s.out) > 0 && !s.write(nil) {
			return
		}
		switch {
		case s.start == s.end:
			s.start, s.end = 0, 0
			if cap(s.out) > keepOut {
				s.out = nil // a burst's buffer is not kept while idle
			}
		case s.end == len(s.buf):
			if s.start == 0 {
				s.handOver() // a request longer than the buffer: net/http reads it
				return
			}
			s.end = copy(s.buf, s.buf[s.start:s.end])
			s.start = 0
		}
		if !s.armRead() {
			return
		}
		n, err := s.c.Read(s.buf[s.end:])
		s.end += n
		if err != nil {
			return // closed, timed out, reset: as net/http, no answer
		}
	}
}

// armRead sets the read deadline for what is awaited: the next request after a response
// (idle), or the rest of the current request's header.
func (s *conn) armRead() bool {
	now := s.l.cfg.Now()
	var by time.Time
	if s.start == s.end && s.answered && s.headerBy.IsZero() {
		by = now.Add(s.l.cfg.IdleTimeout)
		if !s.readBy.IsZero() && by.Sub(s.readBy) < s.rearm() {
			return true
		}
	} else {
		if s.headerBy.IsZero() {
			s.headerBy = now.Add(s.l.cfg.HeaderTimeout)
		}
		by = s.headerBy
		if by.Equal(s.readBy) {
			return true
		}
	}
	s.readBy = by
	// Under the listener's lock, so that a Close, which sets every connection's read
	// deadline in the past, cannot be undone by this one.
	s.l.mu.Lock()
	defer s.l.mu.Unlock()
	if s.l.closed {
		return false
	}
	return s.c.SetReadDeadline(by) == nil
}

// rearm is how stale an idle or write deadline may grow before it is set again.
func (s *conn) rearm() time.Duration { return min(rearm, s.l.cfg.IdleTimeout/8) }

// armWrite gives the next write IdleTimeout, re-arming the deadline only when it has
// grown stale (force: always, for each chunk of a large body).
func (s *conn) armWrite(force bool) bool {
	by := s.l.cfg.Now().Add(s.l.cfg.IdleTimeout)
	if !force && !s.writeBy.IsZero() && by.Sub(s.writeBy) < s.rearm() {
		return true
	}
	s.writeBy = by
	return s.c.SetWriteDeadline(by) == nil
}

// write writes the gathered responses and then body. A large body goes out a chunk at
// a time, each with its own deadline, so that a slow client is cut off only when it
// stops reading, not because the whole body takes long.
func (s *conn) write(body []byte) bool {
	if !s.armWrite(false) {
		return false
	}
	var err error
	if len(body) == 0 {
		_, err = s.w.Write(s.out)
	} else {
		first := min(len(body), writeChunk)
		bufs := net.Buffers{s.out, body[:first]}
		_, err = bufs.WriteTo(s.w)
		for rest := body[first:]; err == nil && len(rest) > 0; {
			n := min(len(rest), writeChunk)
			if !s.armWrite(true) {
				return false
			}
			_, err = s.w.Write(rest[:n])
			rest = rest[n:]
		}
	}
	if cap(s.out) > 2*flushAt {
		s.out = nil // a burst's buffer is not kept for the connection's life
	} else {
		s.out = s.out[:0]
	}
	return err == nil
}

// dateNow is the Date header's value for now, formatted once a second.
func (s *conn) dateNow() []byte {
	now := s.l.cfg.Now()
	if sec := now.Unix(); sec != s.dateSec {
		s.dateSec = sec
		s.date = now.UTC().AppendFormat(s.date[:0], http.TimeFormat)
	}
	return s.date
}

// handOver gives the connection to net/http with the bytes read and not answered.
// Responses gathered so far are written first, so answers keep the requests' order.
func (s *conn) handOver() {
	if len(s.out) > 0 && !s.write(nil) {
		return
	}
	if s.c.SetDeadline(time.Time{}) != nil {
		return
	}
	var pending []byte
	if s.start < s.end {
		pending = s.buf[s.start:s.end]
	}
	pc := &prefixConn{Conn: s.c, pending: pending, headerBy: s.headerBy}
	s.l.untrack(s.c)
	select {
	case s.l.handoff <- pc:
		s.handed = true
	case <-s.l.done:
		// Closed: serve's caller closes it (untracking twice is harmless).
	}
}

// prefixConn is a handed connection: it reads the bytes read before the hand-over
// first. It keeps the methods net/http looks for on a *net.TCPConn: ReadFrom (sendfile
// for files) and CloseWrite (its graceful close).
//
// A request handed over before its header ended (one longer than the buffer) keeps the
// header deadline it had here: net/http's first read deadline, its ReadHeaderTimeout
// for the first request, is moved no later than headerBy. Without that, a client
// trickling a long header had HeaderTimeout here and a whole ReadHeaderTimeout again
// in net/http.
type prefixConn struct {
	net.Conn
	pending  []byte
	headerBy time.Time // zero: no header begun at the hand-over, or already applied
}

// SetReadDeadline is the inner connection's, the first time no later than headerBy.
// net/http sets it from the goroutine serving the connection, first for the header.
func (c *prefixConn) SetReadDeadline(t time.Time) error {
	if by := c.headerBy; !by.IsZero() {
		c.headerBy = time.Time{}
		if t.IsZero() || t.After(by) {
			t = by
		}
	}
	return c.Conn.SetReadDeadline(t)
}

func (c *prefixConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// ReadFrom is the inner connection's, so a file goes out by sendfile(2) as it would on
// a *net.TCPConn.
func (c *prefixConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c.Conn}, r)
}

// CloseWrite shuts the sending side down, when the inner connection can.
func (c *prefixConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

type writerOnly struct{ io.Writer }
