//go:build unix

package updater

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// openRegular opens name under the directory root for reading without ever blocking on
// it, and returns it only if it is a regular file inside root: through os.Root, no
// path and no symlink may lead out of root (a bundle's target symlinked to /proc/kmsg
// hung the agent's round, and one to a root-only file was read into a slot's partial
// file; found by an outside audit, 1 Dec). O_NONBLOCK makes opening a FIFO return at
// once instead of waiting for a writer; fstat on the open descriptor then decides, so
// the file checked is the file read.
func openRegular(root, name string) (*os.File, os.FileInfo, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	path := filepath.Join(root, name)
	f, err := r.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, outside(path, err)
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

// ReadRegular reads the file at path (symlinks followed) if it is a regular file of at
// most limit bytes: a FIFO is refused without blocking on it, a device or a directory
// before a byte is read, and no more than the size the file had when opened is read (a
// procfs file says 0 and reads without end). For files given on the command line
// (`edgeward-agent enroll --root`): /dev/zero as root.json took the agent to 3.3 GB, a
// FIFO hung it past SIGTERM (found by an outside audit, 1 Dec).
func ReadRegular(path string, limit int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readOpened(path, f, limit)
}
