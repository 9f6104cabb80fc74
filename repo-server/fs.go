package reposerver

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
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

// OSFS is the real file system.
type OSFS struct{}

func (OSFS) WriteFile(name string, data []byte, perm os.FileMode) error {
	_, err := atomicWrite(name, perm, func(w io.Writer) (int64, error) {
		n, err := w.Write(data)
		return int64(n), err
	})
	return err
}

func (OSFS) WriteStream(name string, r io.Reader, perm os.FileMode) (int64, error) {
	return atomicWrite(name, perm, func(w io.Writer) (int64, error) {
		buf := make([]byte, 1<<20)
		return io.CopyBuffer(w, r, buf)
	})
}

func (OSFS) Rename(oldname, newname string) error {
	if err := os.MkdirAll(filepath.Dir(newname), 0o755); err != nil {
		return err
	}
	if err := os.Rename(oldname, newname); err != nil {
		return err
	}
	return syncDir(filepath.Dir(newname))
}

func atomicWrite(name string, perm os.FileMode, fill func(io.Writer) (int64, error)) (n int64, err error) {
	dir := filepath.Dir(name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return 0, err
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if n, err = fill(tmp); err != nil {
		return n, fmt.Errorf("write %s: %w", name, err)
	}
	if err = tmp.Chmod(perm); err != nil {
		return n, err
	}
	if err = tmp.Sync(); err != nil {
		return n, fmt.Errorf("fsync %s: %w", name, err)
	}
	if err = tmp.Close(); err != nil {
		return n, err
	}
	if err = os.Rename(tmp.Name(), name); err != nil {
		return n, err
	}
	return n, syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && err != syscall.EINVAL {
		return fmt.Errorf("fsync dir %s: %w", dir, err)
	}
	return nil
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
