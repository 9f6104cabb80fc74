package repository

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"runtime"
	"strconv"
	"testing"

	"github.com/edgeward/edgeward/internal/artifact"
)

// patternReader yields n deterministic bytes without holding them in memory.
type patternReader struct{ left, off int64 }

func (p *patternReader) Read(b []byte) (int, error) {
	if p.left == 0 {
		return 0, io.EOF
	}
	n := int64(len(b))
	n = min(n, p.left)
	for i := range n {
		b[i] = byte((p.off + i) * 7)
	}
	p.off += n
	p.left -= n
	return int(n), nil
}

// TestPublishStreamsLargeTargets publishes 64 MiB and checks it was streamed: the bytes
// allocated while publishing are a small fraction of the target's size, and the stored
// blob has the hash of what was read.
func TestPublishStreamsLargeTargets(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 64 MiB")
	}
	f := newFixture(t, KeyEd25519)
	const size = 64 << 20
	want := sha256.New()
	io.Copy(want, &patternReader{left: size})

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	res, err := f.repo.Publish(context.Background(), PublishRequest{
		Meta: artifact.Meta{Kind: artifact.KindModel, Name: "big", Version: "1.0.0"}, Ext: ".onnx",
		Content: &patternReader{left: size},
	}, f.keyring())
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	if res.Length != size || res.SHA256 != hex.EncodeToString(want.Sum(nil)) {
		t.Fatalf("published %d bytes sha256 %s; want %d bytes with the content's hash", res.Length, res.SHA256, size)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > size/4 {
		t.Fatalf("publishing %d MiB allocated %d MiB: the content was buffered, not streamed", size>>20, alloc>>20)
	}
}

// BenchmarkPublish measures streaming publish throughput (hash + copy + sign).
func BenchmarkPublish(b *testing.B) {
	const size = 256 << 20
	f := newFixture(b, KeyEd25519)
	b.SetBytes(size)
	for i := 0; b.Loop(); i++ {
		_, err := f.repo.Publish(context.Background(), PublishRequest{
			Meta: artifact.Meta{Kind: artifact.KindModel, Name: "big", Version: "1.0." + strconv.Itoa(i)}, Ext: ".onnx",
			Content: &patternReader{left: size, off: int64(i)},
		}, f.keyring())
		if err != nil {
			b.Fatal(err)
		}
	}
}
