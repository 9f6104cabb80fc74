package reposerver

import (
	"context"
	"crypto/ed25519"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/edgeward/edgeward/internal/checkpoint"
)

// TestWitnessedServerGivesDevicesCosignedCheckpoints: a server that has witnesses
// answers check-ins with the newest checkpoint that carries cosignatures, which a device
// requiring a quorum (edgeward-agent --audit-quorum) can accept; the newest, not yet
// cosigned, it could not. Without witnesses, the newest.
func TestWitnessedServerGivesDevicesCosignedCheckpoints(t *testing.T) {
	ctx := context.Background()
	f := newFixture(t, "ed25519")
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := l.Append(ctx, "server", "test", string(rune('a'+i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	c1, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, wPriv, _ := ed25519.GenerateKey(nil)
	cosigned, err := note.Sign(&note.Note{Text: checkpoint.Body(l.Origin(), c1.Size, c1.Hash)}, checkpoint.Cosigner("w.example", wPriv, time.Now))
	if err != nil {
		t.Fatal(err)
	}
	_, sig, _ := strings.Cut(string(cosigned), "\n\n")
	if err := l.AddCosignatures(ctx, c1.Size, []string{sig}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(ctx, "server", "test", "d", nil); err != nil {
		t.Fatal(err)
	}
	c2, err := l.Checkpoint(ctx)
	if err != nil || c2.Size <= c1.Size {
		t.Fatalf("second checkpoint = %v, %v", c2, err)
	}
	f.clock.Add(time.Minute) // past the newest checkpoint's cache
	answer := func() int64 {
		t.Helper()
		a := f.srv.auditWitness(ctx, "dev-1", "")
		c, err := checkpoint.ParseUnverified([]byte(a.Checkpoint))
		if err != nil {
			t.Fatal(err)
		}
		return c.Size
	}
	if got := answer(); got != c2.Size {
		t.Errorf("checkpoint given without witnesses: size %d; want the newest, %d", got, c2.Size)
	}
	f.srv.cfg.Witnesses = []string{"http://witness.example"}
	if got := answer(); got != c1.Size {
		t.Errorf("checkpoint given with witnesses: size %d; want the newest cosigned, %d", got, c1.Size)
	}
}
