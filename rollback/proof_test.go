package rollback

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
)

// provingBlobs is blobs that proves what it writes, as the downloader does; proof and
// after, when set, make the proof stale or forged, or change the file after the proof.
type provingBlobs struct {
	*blobs
	proof func(path string, t Target, honest Proof) Proof
	after func(t *testing.T, path string)
	t     *testing.T
}

func (p *provingBlobs) FetchProven(ctx context.Context, t Target, path string) (Proof, error) {
	if err := p.Fetch(ctx, t, path); err != nil {
		return Proof{}, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return Proof{}, err
	}
	pr := Proof{Length: t.Length, SHA256: t.SHA256, File: fi}
	if p.proof != nil {
		pr = p.proof(path, t, pr)
	}
	if p.after != nil {
		p.after(p.t, path)
	}
	return pr, nil
}

// corrupt rewrites the file at path in place with bytes of the same length, and moves
// its modification time so that the change shows even within one clock tick.
func corrupt(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Chtimes(path, time.Time{}, time.Now().Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyTakesOnlyAFreshProof: a slot the fetcher proved in the same call is staged
// without reading it again; a missing, stale or forged proof, or a file changed after
// the proof, is read and hashed again, and a changed file fails the install.
func TestVerifyTakesOnlyAFreshProof(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		proof     func(path string, t Target, honest Proof) Proof
		after     func(t *testing.T, path string)
		wantReads int
		wantPhase Phase
	}{
		{name: "honest proof", wantReads: 0, wantPhase: Staged},
		{name: "no proof", proof: func(string, Target, Proof) Proof { return Proof{} }, wantReads: 1, wantPhase: Staged},
		{name: "proof of another target", proof: func(_ string, _ Target, p Proof) Proof {
			p.SHA256 = strings.Repeat("0", 64)
			return p
		}, wantReads: 1, wantPhase: Staged},
		{name: "proof of another length", proof: func(_ string, _ Target, p Proof) Proof {
			p.Length++
			return p
		}, wantReads: 1, wantPhase: Staged},
		{name: "proof of another file", proof: func(path string, _ Target, p Proof) Proof {
			other := filepath.Join(filepath.Dir(path), "..", "other")
			os.WriteFile(other, []byte("x"), 0o600)
			p.File, _ = os.Stat(other)
			return p
		}, wantReads: 1, wantPhase: Staged},
		{name: "file changed in place after the proof", after: corrupt, wantReads: 1, wantPhase: Failed},
		{name: "file replaced after the proof", after: func(t *testing.T, path string) {
			b, _ := os.ReadFile(path)
			b[len(b)-1] ^= 0xff
			if err := durable.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
		}, wantReads: 1, wantPhase: Failed},
		{name: "file removed after the proof", after: func(t *testing.T, path string) { os.Remove(path) }, wantReads: 1, wantPhase: Failed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &blobs{}
			v1 := b.add("1.0.0")
			pb := &provingBlobs{blobs: b, proof: tc.proof, after: tc.after, t: t}
			m, err := Open(ctx, Config{Dir: t.TempDir(), Fetch: pb, Now: (&clock{t: t0}).now})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if err := m.Recover(ctx); err != nil {
				t.Fatal(err)
			}
			s, err := m.Install(ctx, artifact.KindModel, v1)
			if err != nil || s.Phase != tc.wantPhase {
				t.Fatalf("Install = %v, %v; want %s", s, err, tc.wantPhase)
			}
			if m.reads != tc.wantReads {
				t.Errorf("Install read the slot %d times; want %d", m.reads, tc.wantReads)
			}
			if s.Phase != Staged {
				return
			}
			// The trial of a slot this Manager verified starts without reading it again.
			reads := m.reads
			if s, err := m.BeginTrial(ctx, artifact.KindModel, time.Minute); err != nil || s.Phase != Trial {
				t.Fatalf("BeginTrial = %v, %v; want trial", s, err)
			}
			if m.reads != reads {
				t.Errorf("BeginTrial read the slot this Manager verified (%d reads, want %d)", m.reads, reads)
			}
		})
	}
}

// TestTrialRereadsASlotItDidNotVerify: the trial of a slot staged by an earlier process
// (another Manager), or changed since this Manager verified it, reads the slot first; a
// slot that no longer holds the target rolls back instead of starting its trial.
func TestTrialRereadsASlotItDidNotVerify(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name      string
		restart   bool
		change    func(t *testing.T, path string)
		wantPhase Phase
	}{
		{name: "staged by an earlier process", restart: true, wantPhase: Trial},
		{name: "staged by an earlier process, then changed", restart: true, change: corrupt, wantPhase: RolledBack},
		{name: "changed after staging", change: corrupt, wantPhase: RolledBack},
		{name: "touched after staging", change: func(t *testing.T, path string) {
			if err := os.Chtimes(path, time.Time{}, time.Now().Add(-time.Hour)); err != nil {
				t.Fatal(err)
			}
		}, wantPhase: Trial},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			b := &blobs{}
			v1 := b.add("1.0.0")
			c := &clock{t: t0}
			m := openTest(t, dir, &blobs{data: b.data}, nil, c)
			m.cfg.Fetch = &provingBlobs{blobs: b, t: t}
			if s, err := m.Install(ctx, artifact.KindModel, v1); err != nil || s.Phase != Staged || m.reads != 0 {
				t.Fatalf("Install = %v, %v (%d reads); want staged without reading", s, err, m.reads)
			}
			path := m.Payload(artifact.KindModel, SlotA)
			if tc.restart {
				m.Close()
				m = openTest(t, dir, b, nil, c)
			}
			if tc.change != nil {
				tc.change(t, path)
			}
			s, err := m.BeginTrial(ctx, artifact.KindModel, time.Minute)
			if err != nil || s.Phase != tc.wantPhase {
				t.Fatalf("BeginTrial = %v, %v; want %s", s, err, tc.wantPhase)
			}
			if m.reads != 1 {
				t.Errorf("BeginTrial read the slot %d times; want 1", m.reads)
			}
			if s.Phase == RolledBack && !strings.Contains(s.Reason, "no longer holds") {
				t.Errorf("rolled back for %q; want the slot named", s.Reason)
			}
		})
	}
}

// TestCrashBetweenDownloadAndStage: a slot downloaded (with a proof) by a process that
// died before staging it is read and hashed by the next one, which stages it only if it
// still holds the target.
func TestCrashBetweenDownloadAndStage(t *testing.T) {
	ctx := context.Background()
	for _, corrupted := range []bool{false, true} {
		dir := t.TempDir()
		b := &blobs{}
		v1 := b.add("1.0.0")
		c := &clock{t: t0}
		m := openTest(t, dir, b, nil, c)
		m.cfg.Fetch = &provingBlobs{blobs: b, t: t}
		s, err := m.Install(ctx, artifact.KindModel, v1)
		if err != nil || s.Phase != Staged {
			t.Fatalf("Install = %v, %v", s, err)
		}
		// As the crash left it: "downloaded" persisted, "verified" not.
		s.Phase, s.Seq = Verifying, s.Seq+1
		if err := m.db.Save(ctx, s, "downloaded", t0.Format(time.RFC3339Nano)); err != nil {
			t.Fatal(err)
		}
		m.Close()
		if corrupted {
			corrupt(t, filepath.Join(dir, "slots", "model", "a", PayloadName))
		}
		m = openTest(t, dir, b, nil, c) // Recover
		s, err = m.State(ctx, artifact.KindModel)
		want := Staged
		if corrupted {
			want = Failed
		}
		if err != nil || s.Phase != want {
			t.Errorf("corrupted=%v: after the restart: %v, %v; want %s", corrupted, s, err, want)
		}
		if m.reads != 1 {
			t.Errorf("corrupted=%v: the restart read the slot %d times; want 1", corrupted, m.reads)
		}
	}
}
