//go:build !unix

package durable

// freeBytes is unknown here: errors are reported as sqlite gives them.
func freeBytes(string) (int64, bool) { return 0, false }
