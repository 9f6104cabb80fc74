// Package units formats quantities for people (the operator CLI and the dashboard
// show the same figures the same way).
package units

import "fmt"

// Bytes formats n bytes with binary prefixes: "512 B", "1.5 KiB", "4.0 MiB".
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
