package repository

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"

	"github.com/edgeward/edgeward/internal/durable"
)

// FS is the repository's write path. Every write is atomic: temp file in the same
// directory, fsync, rename, fsync of the directory. Readers therefore see the old file or
// the new one, never a part. Tests replace it to simulate a full disk.
type FS interface {
	// WriteFile atomically replaces name with data.
	WriteFile(name string, data []byte, perm os.FileMode) error
	// WriteStream atomically creates name from r and returns the bytes written.
	WriteStream(name string, r io.Reader, perm os.FileMode) (int64, error)
	// Rename moves oldname to newname and makes the change durable.
	Rename(oldname, newname string) error
}

// OSFS is the real file system: internal/durable, creating missing directories.
type OSFS struct{}

func (OSFS) WriteFile(name string, data []byte, perm os.FileMode) error {
	if err := durable.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return err
	}
	return durable.WriteFile(name, data, perm)
}

func (OSFS) WriteStream(name string, r io.Reader, perm os.FileMode) (int64, error) {
	if err := durable.MkdirAll(filepath.Dir(name), 0o755); err != nil {
		return 0, err
	}
	return durable.WriteFrom(name, r, perm)
}

func (OSFS) Rename(oldname, newname string) error {
	if err := durable.MkdirAll(filepath.Dir(newname), 0o755); err != nil {
		return err
	}
	return durable.Rename(oldname, newname)
}

// lockFile takes an exclusive advisory lock on path (created if missing), so that the
// server and CLI processes never mutate one repository at the same time. The returned
// function releases it.
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
