package delta

import (
	"errors"
	"io"
)

// Chunk boundaries are content-defined (a gear rolling hash, as in FastCDC and casync):
// an insertion or a changed tensor moves only the boundaries next to it, so every
// unchanged run of a new version falls into chunks the base has too, at any offset.
const (
	minChunk = 2 << 10
	maxChunk = 64 << 10
	// chunkMask gives an average chunk of about minChunk + 8 KiB.
	chunkMask = 1<<13 - 1
)

// gear is the rolling hash's table: 256 fixed pseudo-random words (splitmix64 from a
// fixed seed). Publisher and device must agree on it only for the publisher's own two
// passes; the device never chunks.
var gear = func() (g [256]uint64) {
	x := uint64(0x6564676577617264) // "edgeward"
	for i := range g {
		x += 0x9e3779b97f4a7c15
		z := x
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
		z = (z ^ (z >> 27)) * 0x94d049bb133111eb
		g[i] = z ^ (z >> 31)
	}
	return g
}()

// cut returns the length of the first chunk of b (all of b if it holds no boundary and
// is at most maxChunk long).
func cut(b []byte) int {
	if len(b) <= minChunk {
		return len(b)
	}
	end := min(len(b), maxChunk)
	var h uint64
	for i := minChunk; i < end; i++ {
		h = h<<1 + gear[b[i]]
		if h&chunkMask == 0 {
			return i + 1
		}
	}
	return end
}

// chunks calls fn for each content-defined chunk of r, in order, with its offset. The
// slice is valid only during the call. Memory: two maximal chunks.
func chunks(r io.Reader, fn func(off int64, c []byte) error) error {
	buf := make([]byte, 4*maxChunk)
	var start, end int // buf[start:end] is read but not yet chunked
	var off int64
	eof := false
	for {
		if !eof && end-start < maxChunk {
			copy(buf, buf[start:end])
			end -= start
			start = 0
			n, err := io.ReadFull(r, buf[end:])
			end += n
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				eof = true
			} else if err != nil {
				return err
			}
		}
		if start == end {
			return nil
		}
		n := cut(buf[start:end])
		if !eof && n == end-start && n < maxChunk {
			continue // unreachable: a full window always holds maxChunk bytes
		}
		if err := fn(off, buf[start:start+n]); err != nil {
			return err
		}
		off += int64(n)
		start += n
	}
}
