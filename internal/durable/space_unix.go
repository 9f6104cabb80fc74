//go:build unix

package durable

import "syscall"

// freeBytes is the space an unprivileged writer can still use in dir's file system, or
// 0 when no inode is left (a file cannot be created however many blocks are free).
func freeBytes(dir string) (int64, bool) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, false
	}
	if st.Files > 0 && st.Ffree == 0 {
		return 0, true
	}
	return int64(st.Bavail) * int64(st.Bsize), true
}
