//go:build !linux

package fleet

import "time"

// setTCPUserTimeout does nothing where TCP_USER_TIMEOUT does not exist: the keepalive
// probes and the database's idle-in-transaction timeout still apply.
func setTCPUserTimeout(fd uintptr, d time.Duration) error { return nil }
