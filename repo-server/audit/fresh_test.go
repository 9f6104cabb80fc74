package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"
)

// settable is a clock the witnesses and the auditor share.
type settable struct {
	mu sync.Mutex
	t  time.Time
}

func (c *settable) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *settable) set(t time.Time)     { c.mu.Lock(); c.t = t; c.mu.Unlock() }
func (c *settable) add(d time.Duration) { c.set(c.now().Add(d)) }

// clockedWitness is newWitness with the witness's clock (the time in its cosignatures).
func clockedWitness(t *testing.T, name string, l *Log, now func() time.Time) *testWitness {
	t.Helper()
	_, key, _ := ed25519.GenerateKey(nil)
	w, err := NewWitness(WitnessConfig{Signer: Cosigner(name, key, now), Logs: []note.Verifier{l.Verifier()}, State: filepath.Join(t.TempDir(), "witness.json")})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(w)
	t.Cleanup(srv.Close)
	return &testWitness{w: w, url: srv.URL, vkey: mustVerifier(t, CosignerKey(name, key.Public().(ed25519.PublicKey)))}
}

// TestRolledBackLogShowsItsAge: a server shows an auditor an earlier prefix of its log,
// cosigned by both witnesses when it was current (a database restored from a backup
// taken then, or a server that stopped sending checkpoints to its witnesses); both
// witnesses have cosigned a larger tree since. Without a last-seen checkpoint it
// verifies, cosigned by the quorum: the time of the cosignatures is what shows it, and
// MaxAge refuses it, for an export and for a record's proof alike.
func TestRolledBackLogShowsItsAge(t *testing.T) {
	ctx := context.Background()
	clock := &settable{t: time.Now().UTC().Add(-72 * time.Hour).Truncate(time.Second)}
	l, _ := newLog(t, 1000)
	w1, w2 := clockedWitness(t, "w1.example", l, clock.now), clockedWitness(t, "w2.example", l, clock.now)
	clients := []*WitnessClient{{URL: w1.url}, {URL: w2.url}}
	appendN(t, l, 1, 3)
	old, err := l.Cosign(ctx, clients)
	if err != nil {
		t.Fatal(err)
	}
	oldAt := clock.now()
	var oldExport bytes.Buffer // what the rolled-back server serves
	if err := l.ExportCosigned(ctx, &oldExport); err != nil {
		t.Fatal(err)
	}
	oldProof, err := l.ProveAt(ctx, old, 2, 0)
	if err != nil {
		t.Fatal(err)
	}

	clock.add(48 * time.Hour)
	appendN(t, l, 4, 2)
	if _, err := l.Cosign(ctx, clients); err != nil {
		t.Fatal(err)
	}
	clock.add(time.Hour)
	o := VerifyOptions{LogKey: l.Verifier(), Witnesses: []note.Verifier{w1.vkey, w2.vkey}, Quorum: 2, Now: clock.now}

	rep, err := Verify(bytes.NewReader(oldExport.Bytes()), o)
	if err != nil || rep.Records != 3 {
		t.Fatalf("Verify(the earlier prefix) without MaxAge = %+v, %v; want it verified (the premise)", rep, err)
	}
	if !rep.CosignedAt.Equal(oldAt) {
		t.Errorf("Report.CosignedAt = %v; want the witnesses' time %v", rep.CosignedAt, oldAt)
	}

	o.MaxAge = 24 * time.Hour
	_, err = Verify(bytes.NewReader(oldExport.Bytes()), o)
	if !errors.Is(err, ErrStale) || !strings.Contains(err.Error(), "49h0m0s ago") || !strings.Contains(err.Error(), "size 3") {
		t.Errorf("Verify(the earlier prefix, MaxAge 24h) = %v; want ErrStale, size 3 cosigned 49h0m0s ago", err)
	}
	if _, err := VerifyProof(oldProof, o); !errors.Is(err, ErrStale) {
		t.Errorf("VerifyProof(under the old checkpoint, MaxAge 24h) = %v; want ErrStale", err)
	}

	var now bytes.Buffer
	if err := l.ExportCosigned(ctx, &now); err != nil {
		t.Fatal(err)
	}
	if rep, err := Verify(bytes.NewReader(now.Bytes()), o); err != nil || rep.Records != 5 {
		t.Errorf("Verify(the current log, MaxAge 24h) = %+v, %v; want 5 records verified", rep, err)
	}
	p, err := l.ProveAt(ctx, mustCosigned(t, l), 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyProof(p, o); err != nil {
		t.Errorf("VerifyProof(under the current checkpoint, MaxAge 24h) = %v", err)
	}

	// A maximum age without witnesses cannot be checked: refused, not ignored.
	if _, err := Verify(bytes.NewReader(now.Bytes()), VerifyOptions{LogKey: l.Verifier(), MaxAge: time.Hour}); err == nil {
		t.Error("Verify with MaxAge and no witnesses succeeded; want it refused")
	}
}

func mustCosigned(t *testing.T, l *Log) *Checkpoint {
	t.Helper()
	c, err := l.CosignedCheckpoint(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return c
}
