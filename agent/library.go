package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// Library is an ONNX Runtime library sealed in memory (a memfd that can no longer be
// written, grown or shrunk), with the SHA-256 of its bytes. A runtime started with it
// loads it from its descriptor (/proc/self/fd/N), not from the slot's path: the bytes
// the agent measured and checked against the signed metadata are the bytes that run,
// whatever happens to the file afterwards (replaced by rename, written in place).
// Hashing the path and letting the runtime open it later left that window open.
type Library struct {
	// Path is the file it was read from, for logs and status.
	Path string
	// SHA256 is the hex digest of the sealed bytes.
	SHA256 string
	f      *os.File
}

// SealLibrary copies the library at path into a sealed memfd, hashing it on the way.
// The copy costs memory the size of the library (tens of MiB) while a runtime or the
// Library holds it; the runtime maps those pages rather than the file's.
func SealLibrary(path string) (*Library, error) {
	src, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("runtime library: %w", err)
	}
	defer src.Close()
	// MFD_EXEC: a kernel whose vm.memfd_noexec makes memfds non-executable by default
	// would refuse the mapping dlopen makes; older kernels do not know the flag.
	fd, err := unix.MemfdCreate("edgeward-ort", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_EXEC)
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.MemfdCreate("edgeward-ort", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("runtime library %s: memfd_create: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), "memfd:edgeward-ort")
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(f, h), src); err != nil {
		f.Close()
		return nil, fmt.Errorf("runtime library %s: copy: %w", path, err)
	}
	const seals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(f.Fd(), unix.F_ADD_SEALS, seals); err != nil {
		f.Close()
		return nil, fmt.Errorf("runtime library %s: seal: %w", path, err)
	}
	return &Library{Path: path, SHA256: hex.EncodeToString(h.Sum(nil)), f: f}, nil
}

// Close releases the agent's descriptor; a runtime started with the library keeps its
// own.
func (l *Library) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	return l.f.Close()
}
