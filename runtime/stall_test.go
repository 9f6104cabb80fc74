package runtime

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeward/edgeward/runtime/modelgen"
	"github.com/edgeward/edgeward/runtime/runtimeapi"
)

// TestClientThatNeverReadsIsCutOff: a client that sends inference requests and never
// reads the answers is cut off after WriteTimeout, and what its requests held is
// released: their bytes under MaxHeldBytes (the answers' included) and the model
// version, which unloads without waiting for them. Before, four such clients held 62 MB
// of a 64 MiB bound for as long as they wished (every other client got 503), and an
// unload of the version waited for them (found from outside, 2 Dec).
func TestClientThatNeverReadsIsCutOff(t *testing.T) {
	r, err := New(Config{LibraryPath: ortLib(t), WriteTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(context.Background()) })
	path := filepath.Join(t.TempDir(), "echo.onnx")
	if err := os.WriteFile(path, modelgen.EchoOf("FP64"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Load(context.Background(), runtimeapi.LoadRequest{Name: "echo", Version: "1.0.0", Path: path}); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(r.Handler())
	defer srv.Close()
	// 4 MiB of FP64 in (binary), its JSON answer (about 10 MB) out: far more than the
	// loopback socket buffers hold.
	const n = 512 << 10
	data := make([]byte, 0, 8*n)
	for i := range n {
		data = binary.LittleEndian.AppendUint64(data, math.Float64bits(float64(i)+0.123456789))
	}
	header := fmt.Sprintf(`{"inputs":[{"name":"FP64","shape":[%d],"datatype":"FP64","parameters":{"binary_data_size":%d}}]}`, n, len(data))
	body, hl := binaryRequest(header, data)
	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetReadBuffer(4 << 10) // read nothing, and take little
		}
		fmt.Fprintf(c, "POST /v2/models/echo/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n%s: %d\r\nContent-Length: %d\r\n\r\n",
			runtimeapi.HeaderLengthHeader, hl, len(body))
		if _, err := c.Write(body); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The requests arrive (each holds its body), are run, and their
	// answers are being written, unread.
	deadline := time.Now().Add(10 * time.Second)
	for r.bodies.used.Load() < int64(len(conns)*len(body)) && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if used := r.bodies.used.Load(); used < int64(len(conns)*len(body)) {
		t.Fatalf("%d bytes held; the requests were never all read", used)
	}
	time.Sleep(300 * time.Millisecond) // the runs: an Identity of 4 MiB
	// The version unloads while the clients still do not read, well before WriteTimeout.
	unloaded := make(chan error, 1)
	go func() { unloaded <- r.Unload(context.Background(), "echo", "1.0.0") }()
	select {
	case err := <-unloaded:
		if err != nil {
			t.Fatalf("Unload: %v", err)
		}
	case <-time.After(time.Second):
		t.Fatal("the unload of the version still waits for clients that do not read")
	}
	// And, WriteTimeout on, nothing is held any more.
	for r.bodies.used.Load() != 0 && time.Now().Before(deadline.Add(5*time.Second)) {
		time.Sleep(10 * time.Millisecond)
	}
	if used := r.bodies.used.Load(); used != 0 {
		t.Fatalf("%d bytes still held for clients that never read, past WriteTimeout; want 0", used)
	}
}
