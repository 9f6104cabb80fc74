//go:build !linux

package updater

import "os"

// startWriteback leaves writeback to the kernel here.
func startWriteback(*os.File, int64, int64) {}

// awaitWriteback leaves writeback to the kernel here.
func awaitWriteback(*os.File, int64, int64) {}

// directAlign is the alignment direct writes would need; none are made here.
const directAlign = 4096

// openDirect returns nil: every write goes through the page cache here.
func openDirect(string) *os.File { return nil }

// datasync makes f durable.
func datasync(f *os.File) error { return f.Sync() }
