// Package durable holds the two ways Edgeward makes data survive a crash: atomic file
// replacement (temporary file, fsync, rename, directory fsync) and sqlite databases
// opened in WAL mode with synchronous=FULL. Server and agent both use it; it imports
// nothing of Edgeward's.
package durable

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// WriteFile atomically replaces path with data. The data goes to a temporary file in
// the same directory, which is given mode perm, fsynced, renamed over path, and then
// the directory is fsynced. A reader (or a process restarted after a crash) therefore
// sees the old file or the new one, never a part of either. The directory must exist.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	_, err := write(path, perm, func(w io.Writer) (int64, error) {
		n, err := w.Write(data)
		return int64(n), err
	})
	return err
}

// WriteFrom is WriteFile with the content read from r; it returns the bytes written.
// If r fails, path is left as it was.
func WriteFrom(path string, r io.Reader, perm os.FileMode) (int64, error) {
	return write(path, perm, func(w io.Writer) (int64, error) {
		return io.CopyBuffer(w, r, make([]byte, 1<<20))
	})
}

// Rename moves oldpath to newpath and fsyncs newpath's directory (and oldpath's, when
// it is another one), so the move survives a crash.
func Rename(oldpath, newpath string) error {
	if err := os.Rename(oldpath, newpath); err != nil {
		return err // *LinkError names both paths
	}
	if err := SyncDir(filepath.Dir(newpath)); err != nil {
		return err
	}
	if filepath.Dir(oldpath) != filepath.Dir(newpath) {
		return SyncDir(filepath.Dir(oldpath))
	}
	return nil
}

func write(path string, perm os.FileMode, fill func(io.Writer) (int64, error)) (n int64, err error) {
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return 0, fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if n, err = fill(tmp); err != nil {
		return n, fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Chmod(perm); err != nil {
		return n, fmt.Errorf("write %s: %w", path, err)
	}
	if err = tmp.Sync(); err != nil {
		return n, fmt.Errorf("fsync %s: %w", path, err)
	}
	if err = tmp.Close(); err != nil {
		return n, fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp.Name(), path); err != nil {
		return n, fmt.Errorf("write %s: %w", path, err)
	}
	return n, SyncDir(dir)
}

// MkdirAll is os.MkdirAll whose new directories survive a crash: the parent of each
// directory it created is fsynced, so a file later written durably inside one is not
// lost with a directory entry that was never made durable (power loss; a SIGKILL keeps
// the page cache and shows nothing). Directories that existed are left as they are.
func MkdirAll(path string, perm os.FileMode) error {
	var created []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil || !errors.Is(err, os.ErrNotExist) {
			break
		}
		created = append(created, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := os.MkdirAll(path, perm); err != nil {
		return err
	}
	for _, p := range created {
		if err := SyncDir(filepath.Dir(p)); err != nil && !errors.Is(err, os.ErrPermission) {
			// A parent the process may write into but not read (-wx) cannot be opened to
			// be synced: what os.MkdirAll made there is kept, as before.
			return err
		}
	}
	return nil
}

// SyncDir fsyncs a directory, making renames, creations and removals in it durable.
// File systems that cannot fsync a directory (EINVAL) are accepted.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}

// RemoveInterrupted removes, under root, the temporary files of writes (WriteFile,
// WriteFrom) that a crash or a power cut interrupted before their rename: files named
// ".NAME.tmp-DIGITS" last modified before before. Nothing else ever removes them, so a
// device that loses power while it writes keeps one more at every such loss. It returns
// the paths removed. Call it only while no write under root is in progress from another
// process; before is normally the caller's start, which spares its own writes.
func RemoveInterrupted(root string, before time.Time) ([]string, error) {
	var removed []string
	var errs []error
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if p != root {
				errs = append(errs, err)
				return nil
			}
			return err
		}
		if !d.Type().IsRegular() || !interruptedName(d.Name()) {
			return nil
		}
		fi, err := d.Info()
		if err != nil || !fi.ModTime().Before(before) {
			return nil
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
			return nil
		}
		removed = append(removed, p)
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}

// interruptedName reports whether name is one write's temporary file names: "." +
// the file's name + ".tmp-" + os.CreateTemp's digits.
func interruptedName(name string) bool {
	i := strings.LastIndex(name, ".tmp-")
	if !strings.HasPrefix(name, ".") || i < 2 || i+len(".tmp-") == len(name) {
		return false
	}
	for _, c := range name[i+len(".tmp-"):] {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}
