package inference

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
)

type readyServer struct {
	UnimplementedGRPCInferenceServiceServer
}

func (readyServer) ServerReady(context.Context, *ServerReadyRequest) (*ServerReadyResponse, error) {
	return &ServerReadyResponse{Ready: true}, nil
}

// rawCalls makes n unary ServerReady calls over one raw HTTP/2 connection to a server
// built with opts, and returns the stream window the server announced and the number
// of PING frames it sent (none is acked, so a BDP estimator sends one and then waits).
func rawCalls(t *testing.T, n int, opts ...grpc.ServerOption) (window uint32, pings int) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(opts...)
	RegisterGRPCInferenceServiceServer(s, readyServer{})
	go s.Serve(ln)
	defer s.Stop()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	window = 65535 // HTTP/2's default, unless the server's SETTINGS say otherwise
	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	msg := []byte{0, 0, 0, 0, 0} // gRPC frame: not compressed, empty ServerReadyRequest
	for i := range n {
		hb.Reset()
		for _, f := range [][2]string{{":method", "POST"}, {":scheme", "http"}, {":path", "/inference.GRPCInferenceService/ServerReady"},
			{":authority", "x"}, {"content-type", "application/grpc"}, {"te", "trailers"}} {
			enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
		}
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true}); err != nil {
			t.Fatal(err)
		}
		if err := fr.WriteData(id, true, msg); err != nil {
			t.Fatal(err)
		}
		for done := false; !done; {
			f, err := fr.ReadFrame()
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
						window = v
					}
					fr.WriteSettingsAck()
				}
			case *http2.PingFrame:
				pings++
			case *http2.HeadersFrame:
				done = f.StreamID == id && f.StreamEnded() // the trailers end the call
			case *http2.GoAwayFrame, *http2.RSTStreamFrame:
				t.Fatalf("call %d: %v", i, f)
			}
		}
	}
	return window, pings
}

// TestServerOptionsNoBDPPings: with ServerOptions the server announces its static
// 64 KiB stream window and sends no BDP pings, which grpc-go's default server does.
func TestServerOptionsNoBDPPings(t *testing.T) {
	if w, p := rawCalls(t, 5); p == 0 {
		t.Fatalf("default server: %d pings, window %d; the test no longer sees BDP estimation", p, w)
	}
	w, p := rawCalls(t, 20, ServerOptions()...)
	if p != 0 {
		t.Errorf("ServerOptions: the server sent %d pings in 20 calls, want 0", p)
	}
	if w != streamWindow {
		t.Errorf("ServerOptions: stream window %d, want %d", w, streamWindow)
	}
}
