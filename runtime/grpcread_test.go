package runtime

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/edgeward/edgeward/runtime/inference"
)

// rawHTTP2 opens a raw HTTP/2 connection to addr, closed when the test ends, with its
// client preface and SETTINGS sent and, unless deadline is 0, nothing on it outlasting
// deadline; it returns the connection's framer.
func rawHTTP2(t *testing.T, addr string, deadline time.Duration) *http2.Framer {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if deadline > 0 {
		c.SetDeadline(time.Now().Add(deadline))
	}
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return fr
}

// serverSettings reads fr until the server's SETTINGS, acknowledges them and returns them.
func serverSettings(t *testing.T, fr *http2.Framer) *http2.SettingsFrame {
	t.Helper()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
			fr.WriteSettingsAck()
			return sf
		}
	}
}

// stalledInfer opens a raw HTTP/2 connection to addr and starts one ModelInfer call
// whose message announces announce bytes and sends only the first send of them. The
// returned function reads until the call's trailers and returns their grpc-status
// (-1 if the connection ended first).
func stalledInfer(t *testing.T, addr string, announce, send int) (status func() int) {
	t.Helper()
	fr := rawHTTP2(t, addr, 30*time.Second)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hb bytes.Buffer
	startInfer(t, fr, hpack.NewEncoder(&hb), &hb, 1, announce, send)
	return func() int {
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return -1
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				if f.StreamID == 1 && f.StreamEnded() {
					for _, h := range f.RegularFields() {
						if h.Name == "grpc-status" {
							if code, err := strconv.Atoi(h.Value); err == nil {
								return code
							}
						}
					}
					return -1
				}
			}
		}
	}
}

// startInfer starts ModelInfer call id on fr: its headers (encoded by enc, the
// connection's, into hb) and a message that announces announce bytes and sends the first
// send of them.
func startInfer(t *testing.T, fr *http2.Framer, enc *hpack.Encoder, hb *bytes.Buffer, id uint32, announce, send int) {
	t.Helper()
	hb.Reset()
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", inference.GRPCInferenceService_ModelInfer_FullMethodName},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
		t.Fatal(err)
	}
	msg := binary.BigEndian.AppendUint32([]byte{0}, uint32(announce))
	if err := fr.WriteData(id, false, append(msg, make([]byte, send)...)); err != nil {
		t.Fatal(err)
	}
}

// TestGRPCMessageReadsAreBounded: gRPC ModelInfer messages are read in at most
// MaxHeldBytes / MaxRequestBytes slots at once. Two calls that announce 1 MiB and
// stall hold both slots: a third call waits for a slot, a fourth is refused at once
// with UNAVAILABLE (room for one waiter). When the stalled reads pass ReadTimeout they
// end with DEADLINE_EXCEEDED, and the waiting call is served. Before, grpc-go read every
// message whole before the handler ran: 100 concurrent 16 MiB messages held 3.3 GB.
func TestGRPCMessageReadsAreBounded(t *testing.T) {
	const timeout = 2 * time.Second
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 2 << 20, MaxWaitingRequests: 1, ReadTimeout: timeout, GRPCReadGrace: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadIris(t, r, "1.0.0")
	addr := serveGRPC(t, r)
	client := grpcClientOf(t, addr)

	start := time.Now()
	stalled := []func() int{stalledInfer(t, addr, 1<<20-16, 1000), stalledInfer(t, addr, 1<<20-16, 1000)}
	waitFor(t, "both read slots taken", func() bool { return r.reads.running() == 2 })

	waiter := make(chan error, 1)
	go func() {
		_, err := client.ModelInfer(context.Background(), irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1))
		waiter <- err
	}()
	waitFor(t, "a call waiting for a read slot", func() bool { return r.reads.waitingCalls() == 1 })

	_, err = client.ModelInfer(context.Background(), irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1))
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("a call beyond the wait: %v, want UNAVAILABLE (busy)", err)
	}
	select {
	case err := <-waiter:
		t.Fatalf("the waiting call ended while both slots were held: %v", err)
	default:
	}

	for i, st := range stalled {
		if code := st(); code != int(codes.DeadlineExceeded) {
			t.Errorf("stalled call %d ended with grpc-status %d, want %d (DEADLINE_EXCEEDED)", i, code, codes.DeadlineExceeded)
		}
	}
	if d := time.Since(start); d < timeout {
		t.Errorf("stalled calls ended after %v, before the read timeout %v", d, timeout)
	}
	if err := <-waiter; err != nil {
		t.Fatalf("the waiting call, once the slots freed: %v", err)
	}
	waitFor(t, "the read slots free", func() bool { return r.reads.running() == 0 && r.reads.waitingCalls() == 0 })

	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	for _, want := range []string{
		`edgeward_runtime_busy_refusals_total 1`,
		`edgeward_runtime_requests_total{code="408",model="",version=""} 2`,
		`edgeward_runtime_requests_total{code="503",model="",version=""} 1`,
		`edgeward_runtime_requests_total{code="200",model="iris",version="1.0.0"} 1`,
		`edgeward_runtime_grpc_messages_reading 0`,
	} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestGRPCStreamsPerConnectionAreBounded: the server announces at most
// MaxConcurrentRuns + MaxWaitingRequests concurrent streams per connection (grpc-go's
// default is no limit, a handler goroutine per stream), and refuses a stream past it
// with REFUSED_STREAM while the others are still open.
func TestGRPCStreamsPerConnectionAreBounded(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), MaxConcurrentRuns: 1, MaxWaitingRequests: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	fr := rawHTTP2(t, serveGRPC(t, r), 20*time.Second)
	announced, ok := serverSettings(t, fr).Value(http2.SettingMaxConcurrentStreams)
	if !ok {
		t.Fatal("the server's SETTINGS announce no stream limit")
	}
	if announced != 3 {
		t.Fatalf("the server announces %d concurrent streams, want 3 (1 run + 2 waiting)", announced)
	}
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := uint32(0); i <= announced; i++ {
		startInfer(t, fr, enc, &hb, 2*i+1, 1000, 10) // never finished: the stream stays open
	}
	last := 2*announced + 1
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no refusal of stream %d: %v", last, err)
		}
		if rst, ok := f.(*http2.RSTStreamFrame); ok {
			if rst.StreamID != last || rst.ErrCode != http2.ErrCodeRefusedStream {
				t.Fatalf("RST_STREAM %d %v; want stream %d refused", rst.StreamID, rst.ErrCode, last)
			}
			return
		}
	}
}

// TestGRPCMetadataIsBounded: the server announces a header list of at most 64 KiB per
// call and resets a stream whose metadata is larger, instead of holding it (grpc-go's
// default is 16 MiB per stream: 40 streams of 8 MiB metadata held 340 MB).
func TestGRPCMetadataIsBounded(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	fr := rawHTTP2(t, serveGRPC(t, r), 20*time.Second)
	if v, ok := serverSettings(t, fr).Value(http2.SettingMaxHeaderListSize); !ok || v != maxGRPCHeaderBytes {
		t.Fatalf("the server announces a header list size of %d (set %v); want %d", v, ok, maxGRPCHeaderBytes)
	}
	// 128 KiB of metadata, in HEADERS and CONTINUATION frames of 16 KiB.
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", inference.GRPCInferenceService_ModelInfer_FullMethodName},
		{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
		enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	for i := range 8 {
		enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-pad-%d", i), Value: strings.Repeat("a", 16<<10), Sensitive: true})
	}
	block := hb.Bytes()
	const frame = 16 << 10
	// grpc-go may close the connection before the last frames are written: refused.
	closed := func(err error) bool {
		return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:frame]}); closed(err) {
		return
	} else if err != nil {
		t.Fatal(err)
	}
	for rest := block[frame:]; len(rest) > 0; {
		n := min(len(rest), frame)
		if err := fr.WriteContinuation(1, n == len(rest), rest[:n]); closed(err) {
			return
		} else if err != nil {
			t.Fatal(err)
		}
		rest = rest[n:]
	}
	for {
		f, err := fr.ReadFrame()
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return // grpc-go closes the connection: nothing of it is held
		}
		if err != nil {
			t.Fatalf("stream with 128 KiB of metadata not refused: %v", err)
		}
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.StreamID == 1 {
				return
			}
		case *http2.GoAwayFrame:
			return // refused with the connection: also not held
		case *http2.HeadersFrame:
			if f.StreamID == 1 {
				return // answered with an error status at once (not served: no message was sent)
			}
		}
	}
}

// TestGRPCStalledReadsArePreempted: eight ModelInfer streams on one connection, each
// announcing 100 bytes and sending none, take the four read slots and queue four more;
// another client's call is still served within about the read grace (300 ms here), not
// after the read timeout (a minute): while it waits the stalled reads are preempted
// with DEADLINE_EXCEEDED, and freed slots go to the connections in turn, so the
// stalled connection's queued calls do not go first. Before, such streams held every
// slot for the read timeout (one stalled a legitimate call 14 s, found from outside).
func TestGRPCStalledReadsArePreempted(t *testing.T) {
	const grace = 300 * time.Millisecond
	r, err := New(Config{LibraryPath: ortLib(t), MaxRequestBytes: 1 << 20, MaxHeldBytes: 4 << 20, GRPCReadGrace: grace})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	loadIris(t, r, "1.0.0")
	addr := serveGRPC(t, r)
	fr := rawHTTP2(t, addr, 0)
	go func() { // read (and drop) what the server sends, so that it is never blocked
		for {
			if _, err := fr.ReadFrame(); err != nil {
				return
			}
		}
	}()
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	for i := range uint32(8) {
		startInfer(t, fr, enc, &hb, 2*i+1, 100, 0)
	}
	waitFor(t, "the stalled streams holding every read slot and waiting", func() bool {
		return r.reads.running() == 4 && r.reads.waitingCalls() == 4
	})

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := grpcClientOf(t, addr).ModelInfer(ctx, irisInfer("", f32Raw(5.1, 3.5, 1.4, 0.2), 1)); err != nil {
		t.Fatalf("a call behind stalled reads: %v", err)
	}
	if d := time.Since(start); d > 10*grace {
		t.Errorf("the call was served after %v; want about the read grace %v (the stalled reads began before it)", d, grace)
	}
	if got := r.reads.preempted.Load(); got < 4 {
		t.Errorf("%d reads preempted; want at least the 4 that held the slots", got)
	}
	rec := httptest.NewRecorder()
	r.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if !strings.Contains(rec.Body.String(), "edgeward_runtime_grpc_reads_preempted_total ") {
		t.Error("metrics lack edgeward_runtime_grpc_reads_preempted_total")
	}
}
