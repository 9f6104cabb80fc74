// Package delta makes and applies Edgeward's binary deltas: a new version of a target
// written as copies from a base version and literal bytes, found by content-defined
// chunking and compressed with zstd (method MethodCDC).
//
// The device applies a delta with memory that does not grow with the target: it reads
// the base at the offsets the delta names (pread, no mapping), decodes zstd with a small
// bounded window and writes the result as it goes. A delta says nothing about trust: the
// caller checks the result against the full target's signed hash, and falls back to the
// full target on any error.
package delta

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
)

// MethodCDC is the name of this package's method in a delta target's metadata.
const MethodCDC = "cdc-zstd"

const magic = "EWDCDC1\n"

// Window is the zstd window of a delta; the device's decoder refuses a larger one.
const Window = 1 << 20

const (
	opCopy    = 'C'
	opLiteral = 'L'
	opEnd     = 'E'
)

// Errors of Apply.
var (
	// ErrCorrupt: the delta is not a well-formed delta of this method.
	ErrCorrupt = errors.New("corrupt delta")
	// ErrBaseMismatch: the base is not the one the delta was made from.
	ErrBaseMismatch = errors.New("delta does not apply to this base")
	// ErrTooLong: the result would be longer than the caller allows.
	ErrTooLong = errors.New("delta result longer than allowed")
)

// Stats says what a delta is made of.
type Stats struct {
	BaseLength   int64 // bytes of the base
	ResultLength int64 // bytes of the result
	Copied       int64 // result bytes copied from the base
	Literal      int64 // result bytes carried in the delta
	Ops          int   // copy and literal operations
}

type loc struct{ off, n int64 }

// Diff writes to w a delta that turns base into target. It reads each once, streaming;
// its memory is an index of the base's chunks (about 60 bytes per 10 KiB of base) and
// zstd's encoder.
func Diff(ctx context.Context, base, target io.Reader, w io.Writer) (Stats, error) {
	var st Stats
	index := map[[sha256.Size]byte]loc{}
	err := chunks(base, func(off int64, c []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		k := sha256.Sum256(c)
		if _, ok := index[k]; !ok {
			index[k] = loc{off, int64(len(c))}
		}
		st.BaseLength = off + int64(len(c))
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("delta: read base: %w", err)
	}
	zw, err := zstd.NewWriter(w, zstd.WithWindowSize(Window), zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return st, err
	}
	bw := bufio.NewWriterSize(zw, 64<<10)
	var hdr []byte
	hdr = append(hdr, magic...)
	hdr = binary.AppendUvarint(hdr, uint64(st.BaseLength))
	if _, err := bw.Write(hdr); err != nil {
		return st, err
	}
	// pending is a copy not yet written, grown while the next chunk continues it.
	var pending loc
	var lit []byte
	flushCopy := func() error {
		if pending.n == 0 {
			return nil
		}
		b := []byte{opCopy}
		b = binary.AppendUvarint(b, uint64(pending.off))
		b = binary.AppendUvarint(b, uint64(pending.n))
		st.Ops++
		st.Copied += pending.n
		pending = loc{}
		_, err := bw.Write(b)
		return err
	}
	flushLit := func() error {
		if len(lit) == 0 {
			return nil
		}
		b := []byte{opLiteral}
		b = binary.AppendUvarint(b, uint64(len(lit)))
		if _, err := bw.Write(b); err != nil {
			return err
		}
		st.Ops++
		st.Literal += int64(len(lit))
		_, err := bw.Write(lit)
		lit = lit[:0]
		return err
	}
	err = chunks(target, func(off int64, c []byte) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		st.ResultLength = off + int64(len(c))
		l, ok := index[sha256.Sum256(c)]
		if !ok {
			if err := flushCopy(); err != nil {
				return err
			}
			lit = append(lit, c...)
			if len(lit) >= 1<<20 {
				return flushLit()
			}
			return nil
		}
		if err := flushLit(); err != nil {
			return err
		}
		if pending.n > 0 && pending.off+pending.n == l.off {
			pending.n += l.n
			return nil
		}
		if err := flushCopy(); err != nil {
			return err
		}
		pending = l
		return nil
	})
	if err != nil {
		return st, fmt.Errorf("delta: read target: %w", err)
	}
	if err := flushCopy(); err != nil {
		return st, err
	}
	if err := flushLit(); err != nil {
		return st, err
	}
	end := []byte{opEnd}
	end = binary.AppendUvarint(end, uint64(st.ResultLength))
	if _, err := bw.Write(end); err != nil {
		return st, err
	}
	if err := bw.Flush(); err != nil {
		return st, err
	}
	return st, zw.Close()
}

// minOpAverage is the least average length of the operations before a delta's last
// one: Diff writes each operation from whole chunks, and every chunk but a file's last
// is longer than minChunk, so only the last operation can be shorter (a small file's,
// or the tail of a larger one).
const minOpAverage = minChunk

// Apply writes to w the result of delta applied to base (baseLen bytes), and returns
// its length. It writes at most max bytes (ErrTooLong past them) and fails with
// ErrBaseMismatch when the delta was made from a base of another length and with
// ErrCorrupt when the delta is malformed: among other things, when its operations so far
// average under 2 KiB (minOpAverage) before another begins, which Diff never writes. So
// the work of an apply, its operations and its writes to w, is bounded by the result's
// length whatever the delta says: a few KB of zstd of one-byte operations cost a device
// one write(2) per result byte, seconds per MiB (found from outside, 2 Dec). Apply stops
// with ctx's error within 256 KiB of result after ctx ends, in a long operation too. It
// does not check the result's hash: the caller does, against the signed full target.
// Memory: a 256 KiB write buffer and a zstd decoder with a window of at most Window. On
// an error, the last bytes it made may not have been written to w.
func Apply(ctx context.Context, base io.ReaderAt, baseLen int64, delta io.Reader, w io.Writer, max int64) (n int64, err error) {
	zr, err := zstd.NewReader(delta, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(Window))
	if err != nil {
		return 0, err
	}
	defer zr.Close()
	// Operations write into one buffer, and w gets it in 256 KiB writes: a copy and a
	// literal are read into it (its ReadFrom), never handed to w's own ReadFrom, which
	// bufio does whenever the buffer is empty, one small operation after another.
	bw := bufio.NewWriterSize(writeOnly{w}, 256<<10)
	defer func() {
		if err != nil {
			return
		}
		if err = bw.Flush(); err != nil {
			n -= int64(bw.Buffered())
		}
	}()
	r := bufio.NewReaderSize(zr, 64<<10)
	corrupt := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
	}
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(r, head); err != nil {
		return 0, corrupt("header: %v", err)
	}
	if string(head) != magic {
		return 0, corrupt("not a %s delta", MethodCDC)
	}
	bl, err := binary.ReadUvarint(r)
	if err != nil {
		return 0, corrupt("base length: %v", err)
	}
	if int64(bl) != baseLen {
		return 0, fmt.Errorf("%w: made from a base of %d bytes, this one has %d", ErrBaseMismatch, bl, baseLen)
	}
	var ops int64 // operations begun
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		op, err := r.ReadByte()
		if err != nil {
			return n, corrupt("at result byte %d: %v", n, err)
		}
		if op != opEnd {
			if n < ops*minOpAverage {
				return n, corrupt("%d operations made only %d bytes before another one at result byte %d (Diff's average more than %d)", ops, n, n, minOpAverage)
			}
			ops++
		}
		switch op {
		case opCopy:
			off, err1 := binary.ReadUvarint(r)
			cnt, err2 := binary.ReadUvarint(r)
			if err1 != nil || err2 != nil {
				return n, corrupt("copy at result byte %d: truncated", n)
			}
			if cnt == 0 {
				// Never written (Make flushes only non-empty copies): an operation that
				// produces nothing would let a tampered delta, a few hundred KB of
				// zstd, cost a billion iterations before its hash is checked.
				return n, corrupt("empty copy at result byte %d", n)
			}
			if off > uint64(baseLen) || cnt > uint64(baseLen)-off {
				return n, corrupt("copy of %d bytes at %d outside the %d-byte base", cnt, off, baseLen)
			}
			if int64(cnt) > max-n {
				return n, fmt.Errorf("%w (%d bytes)", ErrTooLong, max)
			}
			if _, err := io.Copy(bw, ctxReader{ctx, io.NewSectionReader(base, int64(off), int64(cnt))}); err != nil {
				return n, err
			}
			n += int64(cnt)
		case opLiteral:
			cnt, err := binary.ReadUvarint(r)
			if err != nil {
				return n, corrupt("literal at result byte %d: truncated", n)
			}
			if cnt == 0 {
				return n, corrupt("empty literal at result byte %d", n) // as an empty copy
			}
			if int64(cnt) > max-n || cnt > uint64(max) {
				return n, fmt.Errorf("%w (%d bytes)", ErrTooLong, max)
			}
			c, err := io.Copy(bw, ctxReader{ctx, io.LimitReader(r, int64(cnt))})
			n += c
			if err != nil {
				return n, err
			}
			if c != int64(cnt) {
				return n, corrupt("literal at result byte %d: %d of %d bytes", n-c, c, cnt)
			}
		case opEnd:
			total, err := binary.ReadUvarint(r)
			if err != nil || int64(total) != n {
				return n, corrupt("end: result is %d bytes, the delta says %d", n, total)
			}
			if _, err := r.ReadByte(); err != io.EOF {
				return n, corrupt("data after the end")
			}
			return n, nil
		default:
			return n, corrupt("unknown operation %#x at result byte %d", op, n)
		}
	}
}

// ctxReader reads from r until ctx ends: a copy or a literal as long as the result
// stops within a buffer (256 KiB) of its context's end.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// writeOnly hides every method of a Writer but Write.
type writeOnly struct{ w io.Writer }

func (w writeOnly) Write(p []byte) (int, error) { return w.w.Write(p) }

// ChunkStoreBytes is what a casync-style update would download for target given base,
// chunked as Diff chunks (for comparisons, docs/ARCHITECTURE.md): an index of 40 bytes
// (sha256 and length) per chunk of target, plus each distinct chunk base lacks,
// zstd-compressed on its own.
func ChunkStoreBytes(ctx context.Context, base, target io.Reader) (int64, error) {
	have := map[[sha256.Size]byte]bool{}
	if err := chunks(base, func(_ int64, c []byte) error {
		have[sha256.Sum256(c)] = true
		return ctx.Err()
	}); err != nil {
		return 0, err
	}
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		return 0, err
	}
	defer enc.Close()
	var n int64
	var buf []byte
	err = chunks(target, func(_ int64, c []byte) error {
		n += 40
		k := sha256.Sum256(c)
		if !have[k] {
			have[k] = true
			buf = enc.EncodeAll(c, buf[:0])
			n += int64(len(buf))
		}
		return ctx.Err()
	})
	return n, err
}
