//go:build !unix

package updater

// freeBytes is unknown here: the download finds out when a write fails.
func freeBytes(string) (int64, bool) { return 0, false }
