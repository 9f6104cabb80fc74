package updater

import (
	"os"
	"syscall"
)

// Flags of sync_file_range(2).
const (
	// syncFileRangeWaitBefore waits for writeback already under way on the range.
	syncFileRangeWaitBefore = 1
	// syncFileRangeWrite starts writing back dirty pages of the range that are not
	// already being written, without waiting for them.
	syncFileRangeWrite = 2
	// syncFileRangeWaitAfter waits for the writeback the call started.
	syncFileRangeWaitAfter = 4
)

// startWriteback starts writing f's bytes [off, off+n) to the disk without waiting, so
// that a later fdatasync has little left to wait for. Errors are ignored: the sync that
// follows reports any.
func startWriteback(f *os.File, off, n int64) {
	syncRange(f, off, n, syncFileRangeWrite)
}

// awaitWriteback waits until f's bytes [off, off+n) have left the page cache for the
// disk (written back, not yet made durable: the fdatasync that follows does that), which
// bounds the dirty pages a download holds. Errors are ignored, as for startWriteback.
func awaitWriteback(f *os.File, off, n int64) {
	syncRange(f, off, n, syncFileRangeWaitBefore|syncFileRangeWrite|syncFileRangeWaitAfter)
}

func syncRange(f *os.File, off, n int64, flags int) {
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		for syscall.SyncFileRange(int(fd), off, n, flags) == syscall.EINTR {
		}
	})
}

// directAlign is the alignment of offsets, lengths and buffers for writes through a
// descriptor opened by openDirect (4 KiB: a multiple of every logical block size in use).
const directAlign = 4096

// openDirect opens path for writes that bypass the page cache (O_DIRECT): the disk
// takes each write straight from the caller's buffer, with no copy into the page cache
// and no dirty pages to write back later. It returns nil where the file system refuses.
// Writes through it must be aligned to directAlign (offset, length and buffer).
func openDirect(path string) *os.File {
	f, err := os.OpenFile(path, os.O_WRONLY|syscall.O_DIRECT, 0)
	if err != nil {
		return nil
	}
	return f
}

// datasync makes f's data (and the metadata needed to read it, its size) durable.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return f.Sync()
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return f.Sync()
	}
	if serr != nil {
		return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
