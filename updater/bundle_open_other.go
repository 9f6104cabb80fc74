//go:build !unix

package updater

import (
	"fmt"
	"os"
	"path/filepath"
)

// openRegular opens name under the directory root for reading and returns it only if
// it is a regular file inside root (os.Root: no path or symlink leads out). Without
// O_NONBLOCK the type is checked with Stat before opening, and again on the open file.
func openRegular(root, name string) (*os.File, os.FileInfo, error) {
	r, err := os.OpenRoot(root)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	path := filepath.Join(root, name)
	fi, err := r.Stat(name)
	if err != nil {
		return nil, nil, outside(path, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	f, err := r.Open(name)
	if err != nil {
		return nil, nil, err
	}
	if fi, err = f.Stat(); err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, nil, fmt.Errorf("%s: %w", path, ErrNotRegular)
	}
	return f, fi, nil
}

// ReadRegular reads the file at path (symlinks followed) if it is a regular file of at
// most limit bytes, reading no more than the size it had when opened.
func ReadRegular(path string, limit int64) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w (%s)", path, ErrNotRegular, fi.Mode().Type())
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readOpened(path, f, limit)
}
