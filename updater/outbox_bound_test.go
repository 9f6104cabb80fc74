package updater

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRecordCheckInIsBounded: the check-in result holds the server's words (its
// reasons, its error body); it is stored bounded and escaped, so that a hostile server
// can neither grow the outbox nor break 'edgeward-agent status' (whose socket answer
// is read up to 1 MiB: a 2 MiB result made it fail with EOF, found from outside).
func TestRecordCheckInIsBounded(t *testing.T) {
	ctx := context.Background()
	o, err := OpenOutbox(ctx, filepath.Join(t.TempDir(), "outbox.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	if err := o.RecordCheckIn(ctx, time.Now(), "check-in: 500: \x1b[2J"+strings.Repeat("x", 2<<20)); err != nil {
		t.Fatal(err)
	}
	_, got, err := o.LastCheckIn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) > maxCheckInResult+64 || strings.Contains(got, "\x1b") || !strings.HasPrefix(got, `check-in: 500: \x1b[2J`) || !strings.Contains(got, "bytes more)") {
		t.Errorf("stored result of %d bytes, starting %q; want it bounded near %d and escaped", len(got), got[:min(len(got), 40)], maxCheckInResult)
	}
}
