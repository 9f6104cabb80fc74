// Command deltaapply applies one delta as a device would (the result hashed and
// synced), in a process of its own, for the delta section of bench/driver.
//
//	deltaapply copy|cdc|kzstd BASE DELTA OUT
package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/edgeward/edgeward/internal/delta"
)

// main is `deltaapply HOW BASE DELTA OUT`: one apply, as a device would
// do it (the result hashed and synced), in a process of its own for its peak RSS.
func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: deltaapply HOW BASE DELTA OUT")
		return 2
	}
	if err := deltaApply(args[0], args[1], args[2], args[3]); err != nil {
		fmt.Fprintln(os.Stderr, "deltaapply:", err)
		return 1
	}
	return 0
}

func deltaApply(how, base, d, out string) error {
	ctx := context.Background()
	of, err := os.Create(out)
	if err != nil {
		return err
	}
	defer of.Close()
	h := sha256.New()
	w := io.MultiWriter(of, h)
	df, err := os.Open(d)
	if err != nil {
		return err
	}
	defer df.Close()
	switch how {
	case "copy":
		if _, err := io.CopyBuffer(w, df, make([]byte, 256<<10)); err != nil {
			return err
		}
	case "cdc":
		bf, err := os.Open(base)
		if err != nil {
			return err
		}
		defer bf.Close()
		fi, err := bf.Stat()
		if err != nil {
			return err
		}
		if _, err := delta.Apply(ctx, bf, fi.Size(), df, w, 1<<40); err != nil {
			return err
		}
	case "kzstd":
		bf, err := os.Open(base)
		if err != nil {
			return err
		}
		defer bf.Close()
		fi, err := bf.Stat()
		if err != nil {
			return err
		}
		mm, err := syscall.Mmap(int(bf.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
		if err != nil {
			return err
		}
		defer syscall.Munmap(mm)
		dec, err := zstd.NewReader(df, zstd.WithDecoderDictRaw(1, mm), zstd.WithDecoderMaxWindow(1<<31), zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return err
		}
		defer dec.Close()
		if _, err := io.CopyBuffer(w, dec, make([]byte, 256<<10)); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown method %q", how)
	}
	_ = h.Sum(nil)
	return of.Sync()
}
