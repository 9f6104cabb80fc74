//go:build unix

package updater

import (
	"fmt"
	"os"
	"syscall"
)

// openRegular opens path for reading without ever blocking on it, and returns it only
// if it is a regular file (after following symlinks). O_NONBLOCK makes opening a FIFO
// return at once instead of waiting for a writer; fstat on the open descriptor then
// decides, so the file checked is the file read.
func openRegular(path string) (*os.File, os.FileInfo, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	// Reads of a regular file never block; clear the flag all the same so the
	// descriptor behaves like one from os.Open.
	if err := syscall.SetNonblock(int(f.Fd()), false); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, fi, nil
}
