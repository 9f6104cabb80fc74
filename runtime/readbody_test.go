package runtime

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net/http/httptest"
	goruntime "runtime"
	"testing"
)

// trickle returns its data a few bytes at a time, then err (io.EOF: the body's end).
type trickle struct {
	data []byte
	rnd  *rand.Rand
	err  error
}

func (t *trickle) Read(p []byte) (int, error) {
	if len(t.data) == 0 {
		return 0, t.err
	}
	n := min(len(p), len(t.data), 1+t.rnd.IntN(5000))
	copy(p, t.data[:n])
	t.data = t.data[n:]
	return n, nil
}

// TestReadBodyKnownLength: a body of known length arrives whole whatever its size and
// however it is cut, a short one is an error, and one that is announced large but does
// not come costs its first 64 KiB, not its announced length.
func TestReadBodyKnownLength(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{1, 1000, initialBodyBuffer, initialBodyBuffer + 1, 1 << 20, 3<<20 + 17} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(rnd.Uint32())
		}
		req := httptest.NewRequest("POST", "/", &trickle{data: bytes.Clone(data), rnd: rnd, err: io.EOF})
		req.ContentLength = int64(n)
		got, err := readBody(httptest.NewRecorder(), req, 16<<20, nil)
		if err != nil || !bytes.Equal(got, data) {
			t.Fatalf("%d bytes: read %d, %v", n, len(got), err)
		}
		// Into the caller's buffer when it is large enough.
		buf := make([]byte, n)
		req = httptest.NewRequest("POST", "/", &trickle{data: bytes.Clone(data), rnd: rnd, err: io.EOF})
		req.ContentLength = int64(n)
		if got, err := readBody(httptest.NewRecorder(), req, 16<<20, buf); err != nil || !bytes.Equal(got, data) || &got[0] != &buf[0] {
			t.Fatalf("%d bytes into a buffer: %v", n, err)
		}
	}

	short := httptest.NewRequest("POST", "/", &trickle{data: make([]byte, 100), rnd: rnd, err: io.EOF})
	short.ContentLength = 200
	if _, err := readBody(httptest.NewRecorder(), short, 16<<20, nil); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("a body shorter than its length: %v; want unexpected EOF", err)
	}

	stalled := errors.New("i/o timeout")
	var before, after goruntime.MemStats
	goruntime.ReadMemStats(&before)
	for range 4 {
		req := httptest.NewRequest("POST", "/", &trickle{data: make([]byte, 10), rnd: rnd, err: stalled})
		req.ContentLength = 16 << 20
		if _, err := readBody(httptest.NewRecorder(), req, 16<<20, nil); !errors.Is(err, stalled) {
			t.Fatalf("stalled body: %v", err)
		}
	}
	goruntime.ReadMemStats(&after)
	if got := after.TotalAlloc - before.TotalAlloc; got > 2<<20 {
		t.Errorf("4 bodies announced at 16 MiB that sent 10 bytes allocated %d bytes; want about 4 × 64 KiB", got)
	}
}
