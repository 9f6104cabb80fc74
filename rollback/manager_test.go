package rollback

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/durable"
)

// blobs is a Fetcher serving targets from memory, written like the real downloader
// (temporary file, sync, rename). fail, when set, is returned instead.
type blobs struct {
	mu    sync.Mutex
	data  map[string][]byte
	fail  error
	calls int
}

type permErr struct{ error }

func (permErr) Permanent() bool { return true }

func (b *blobs) add(v string) Target {
	data := []byte("model bytes of version " + v)
	sum := sha256.Sum256(data)
	ver, _ := artifact.ParseVersion(v)
	f, _ := ver.Floor()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.data == nil {
		b.data = map[string][]byte{}
	}
	t := Target{Path: artifact.TargetPath(artifact.KindModel, "m", v, ".onnx"), Version: v, Floor: f, Length: int64(len(data)), SHA256: hex.EncodeToString(sum[:])}
	b.data[t.Path] = data
	return t
}

func (b *blobs) Fetch(ctx context.Context, t Target, path string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	if b.fail != nil {
		return b.fail
	}
	return durable.WriteFile(path, b.data[t.Path], 0o600)
}

// tpm stands in for the TPM NV counters: it survives deleting the agent's state.
type tpm struct {
	mu sync.Mutex
	f  map[artifact.Kind]uint64
}

func (p *tpm) Floor(_ context.Context, k artifact.Kind) (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.f[k], nil
}

func (p *tpm) Raise(_ context.Context, k artifact.Kind, f uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		p.f = map[artifact.Kind]uint64{}
	}
	p.f[k] = max(p.f[k], f)
	return nil
}

type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func openTest(t *testing.T, dir string, b *blobs, floors FloorStore, c *clock) *Manager {
	t.Helper()
	m, err := Open(context.Background(), Config{Dir: dir, Fetch: b, Floors: floors, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	if err := m.Recover(context.Background()); err != nil {
		t.Fatalf("Recover = %v", err)
	}
	return m
}

func commit(t *testing.T, m *Manager, tg Target) State {
	t.Helper()
	ctx := context.Background()
	if s, err := m.Install(ctx, artifact.KindModel, tg); err != nil || s.Phase != Staged {
		t.Fatalf("Install(%s) = %v, %v; want staged", tg.Version, s, err)
	}
	if _, err := m.BeginTrial(ctx, artifact.KindModel, time.Minute); err != nil {
		t.Fatal(err)
	}
	s, err := m.Confirm(ctx, artifact.KindModel, true, "")
	if err != nil || s.Phase != Committed || s.Current.Version != tg.Version {
		t.Fatalf("Confirm(pass) = %v, %v; want %s committed", s, err, tg.Version)
	}
	return s
}

func TestManagerLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, c := &blobs{}, &clock{t: t0}
	m := openTest(t, dir, b, nil, c)
	v1, v2 := b.add("1.0.0"), b.add("2.0.0")
	s := commit(t, m, v1)
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	// 2.0.0 fails its trial: back to 1.0.0 in the same slot, slot b cleared.
	if _, err := m.Install(ctx, artifact.KindModel, v2); err != nil {
		t.Fatal(err)
	}
	m.BeginTrial(ctx, artifact.KindModel, time.Minute)
	s2, err := m.Confirm(ctx, artifact.KindModel, false, "p99 12ms > 5ms")
	if err != nil || s2.Phase != RolledBack || s2.Active != s.Active || s2.Current.Version != "1.0.0" {
		t.Fatalf("Confirm(fail) = %v, %v; want rolled back to 1.0.0 in slot %s", s2, err, s.Active)
	}
	if _, err := os.Stat(m.Payload(artifact.KindModel, s.Active.Other())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("trial slot not cleared after rollback: %v", err)
	}
	// Not a downgrade: 2.0.0 can be retried and committed; the floor rises.
	s3 := commit(t, m, v2)
	if s3.Active == s.Active {
		t.Errorf("commit of 2.0.0 kept slot %s active", s.Active)
	}
	if f, _ := m.Floor(ctx, artifact.KindModel); f != v2.Floor {
		t.Errorf("floor = %d; want %d", f, v2.Floor)
	}
	ptr, err := os.ReadFile(filepath.Join(dir, "slots", "model", "current"))
	if err != nil || !strings.Contains(string(ptr), `"version":"2.0.0"`) {
		t.Errorf("current pointer = %s, %v; want version 2.0.0", ptr, err)
	}
	_, err = m.Install(ctx, artifact.KindModel, v1)
	if !errors.Is(err, ErrDowngrade) {
		t.Errorf("Install(1.0.0) after 2.0.0 = %v; want ErrDowngrade", err)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	log, _ := m.DB().Transitions(ctx, artifact.KindModel)
	if len(log) != 15 {
		t.Errorf("%d transitions logged; want 15: %q", len(log), log)
	}
}

func TestManagerFloorSurvivesWipe(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	b, c, p := &blobs{}, &clock{t: t0}, &tpm{}
	m := openTest(t, dir, b, p, c)
	v1, v2 := b.add("1.0.0"), b.add("2.0.0")
	commit(t, m, v2)
	m.Close()
	for _, f := range []string{"state.db", "state.db-wal", "state.db-shm"} {
		os.Remove(filepath.Join(dir, f))
	}
	m = openTest(t, dir, b, p, c)
	// Recovery adopted the committed version the slot pointer names, intact.
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != Committed || s.Current.Version != "2.0.0" {
		t.Errorf("after wiping sqlite: %v; want 2.0.0 adopted", s)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Error(err)
	}
	_, err := m.Install(ctx, artifact.KindModel, v1)
	var de *DowngradeError
	if !errors.As(err, &de) || de.Current != v2.Floor {
		t.Fatalf("Install(1.0.0) after wiping sqlite = %v; want a DowngradeError at floor 2.0.0", err)
	}
}

func TestManagerDownloadFailures(t *testing.T) {
	ctx := context.Background()
	b, c := &blobs{}, &clock{t: t0}
	dir := t.TempDir()
	m := openTest(t, dir, b, nil, c)
	v1, v2 := b.add("1.0.0"), b.add("1.1.0")
	s1 := commit(t, m, v1)

	// Disk full: permanent, the transaction fails, the active slot is untouched.
	b.fail = permErr{errors.New("no space left on device")}
	s, err := m.Install(ctx, artifact.KindModel, v2)
	if err != nil || s.Phase != Failed || s.Active != s1.Active {
		t.Fatalf("Install on a full disk = %v, %v; want failed with slot %s active", s, err, s1.Active)
	}
	// Network down: transient, the transaction stays downloading; Recover resumes it.
	b.fail = errors.New("connection reset")
	if s, err = m.Install(ctx, artifact.KindModel, v2); err == nil || s.Phase != Downloading {
		t.Fatalf("Install with the network down = %v, %v; want an error, still downloading", s, err)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	b.fail = nil
	if s, err = m.Install(ctx, artifact.KindModel, v2); err != nil || s.Phase != Staged {
		t.Fatalf("Install again after the network came back = %v, %v; want staged", s, err)
	}
	// A slot file that does not verify (written behind our back) fails verification.
	os.WriteFile(m.Payload(artifact.KindModel, s.Inactive()), []byte("tampered"), 0o600)
	m.Abort(ctx, artifact.KindModel, "test")
	b.data[v2.Path] = []byte("not what TUF said")
	if s, err = m.Install(ctx, artifact.KindModel, v2); err != nil || s.Phase != Failed || !strings.Contains(s.Reason, "verify") {
		t.Fatalf("Install of a wrong payload = %v, %v; want failed verification", s, err)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestManagerTrialDeadline(t *testing.T) {
	ctx := context.Background()
	b, c := &blobs{}, &clock{t: t0}
	dir := t.TempDir()
	m := openTest(t, dir, b, nil, c)
	v1, v2 := b.add("1.0.0"), b.add("1.1.0")
	commit(t, m, v1)
	m.Install(ctx, artifact.KindModel, v2)
	m.BeginTrial(ctx, artifact.KindModel, 10*time.Minute)
	c.t = c.t.Add(5 * time.Minute)
	m.Tick(ctx)
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != Trial {
		t.Fatalf("before the deadline: %v; want trial", s)
	}
	m.Close()
	c.t = c.t.Add(6 * time.Minute)
	m = openTest(t, dir, b, nil, c) // restart past the deadline
	s, _ := m.State(ctx, artifact.KindModel)
	if s.Phase != RolledBack || s.Current.Version != "1.0.0" {
		t.Fatalf("restart past the trial deadline: %v; want rolled back to 1.0.0", s)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestManagerCorruptStateRow(t *testing.T) {
	ctx := context.Background()
	b, c := &blobs{}, &clock{t: t0}
	dir := t.TempDir()
	m := openTest(t, dir, b, nil, c)
	v1 := b.add("1.0.0")
	want := commit(t, m, v1)
	for _, q := range []string{
		`UPDATE slot_state SET state = '{"kind":"model","phase":"committed","active":"b"' WHERE kind = 'model'`,
		`UPDATE slot_state SET state = replace(state, '"active":"a"', '"active":"b"') WHERE kind = 'model'`,
	} {
		if _, err := m.db.db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
		s, err := m.State(ctx, artifact.KindModel)
		if err != nil || s.Active != want.Active || s.Seq != want.Seq {
			t.Errorf("after %s: State = %v, %v; want the last logged state %v", q, s, err, want)
		}
	}
	m.db.db.ExecContext(ctx, `UPDATE transitions SET sum = 'x'`)
	if _, err := m.State(ctx, artifact.KindModel); !errors.Is(err, ErrCorruptState) {
		t.Errorf("State with every row corrupt = %v; want ErrCorruptState", err)
	}
	if _, err := m.Install(ctx, artifact.KindModel, b.add("2.0.0")); !errors.Is(err, ErrCorruptState) {
		t.Errorf("Install with corrupt state = %v; want ErrCorruptState", err)
	}
}

// TestTransitionLogIsBounded: each kind keeps its newest KeepTransitions logged
// transitions (give or take one pruning period), the other kind's untouched, and a
// damaged state row is still restored from the newest. Before, the log kept every
// transition: 2–3 KB per update for good (found from outside, 2 Dec).
func TestTransitionLogIsBounded(t *testing.T) {
	ctx := context.Background()
	db, err := OpenDB(ctx, filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Save(ctx, State{Kind: artifact.KindRuntime, Phase: Idle, Seq: 1}, "recover", "t"); err != nil {
		t.Fatal(err)
	}
	const n = 3 * KeepTransitions
	for i := 1; i <= n; i++ {
		if err := db.Save(ctx, State{Kind: artifact.KindModel, Phase: Idle, Seq: uint64(i)}, "recover", "t"); err != nil {
			t.Fatal(err)
		}
	}
	// The kinds interleaved, two model saves then two runtime ones (a model and a runtime
	// failing together, retried from the same rounds): each kind bounded alike.
	db2, err := OpenDB(ctx, filepath.Join(t.TempDir(), "s2.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	for i := 1; i <= n; i++ {
		for _, k := range []artifact.Kind{artifact.KindModel, artifact.KindRuntime} {
			for j := range 2 {
				if err := db2.Save(ctx, State{Kind: k, Phase: Idle, Seq: uint64(2*i + j)}, "recover", "t"); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	for _, k := range []artifact.Kind{artifact.KindModel, artifact.KindRuntime} {
		if log, err := db2.Transitions(ctx, k); err != nil || len(log) > KeepTransitions+pruneTransitionsEvery {
			t.Errorf("%s transitions logged with the kinds interleaved: %d, %v; want at most %d", k, len(log), err, KeepTransitions+pruneTransitionsEvery)
		}
	}
	log, err := db.Transitions(ctx, artifact.KindModel)
	if err != nil || len(log) < KeepTransitions || len(log) > KeepTransitions+pruneTransitionsEvery {
		t.Fatalf("%d model transitions logged after %d, %v; want %d to %d", len(log), n, err, KeepTransitions, KeepTransitions+pruneTransitionsEvery)
	}
	if !strings.HasPrefix(log[len(log)-1], fmt.Sprintf("%d ", n)) {
		t.Errorf("newest logged transition %q; want seq %d", log[len(log)-1], n)
	}
	if rt, _ := db.Transitions(ctx, artifact.KindRuntime); len(rt) != 1 {
		t.Errorf("runtime transitions = %q; want its one, untouched", rt)
	}
	if _, err := db.db.ExecContext(ctx, `UPDATE slot_state SET sum = 'x' WHERE kind = 'model'`); err != nil {
		t.Fatal(err)
	}
	if s, err := db.Load(ctx, artifact.KindModel); err != nil || s.Seq != n {
		t.Errorf("Load with the state row damaged = %+v, %v; want seq %d from the log", s, err, n)
	}
}

func TestOpenDBPragmas(t *testing.T) {
	db, err := OpenDB(context.Background(), filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var sync int
	db.db.QueryRow("PRAGMA synchronous").Scan(&sync)
	if sync != 2 {
		t.Errorf("PRAGMA synchronous = %d; want 2 (FULL)", sync)
	}
}

// TestRecoverLocalLeavesTheDownload: before a device serves, RecoverLocal recovers
// without the network: an interrupted download is not resumed (no fetch), stays
// downloading and is not an error; a trial past its deadline still rolls back. Recover
// then resumes the download.
func TestRecoverLocalLeavesTheDownload(t *testing.T) {
	ctx := context.Background()
	b, c := &blobs{}, &clock{t: t0}
	dir := t.TempDir()
	m := openTest(t, dir, b, nil, c)
	v1, v2 := b.add("1.0.0"), b.add("1.1.0")
	commit(t, m, v1)
	b.fail = errors.New("connection refused")
	if s, err := m.Install(ctx, artifact.KindModel, v2); err == nil || s.Phase != Downloading {
		t.Fatalf("Install with the server down = %v, %v; want an error, still downloading", s, err)
	}
	m.Close()
	m, err := Open(ctx, Config{Dir: dir, Fetch: b, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	calls := b.calls
	if err := m.RecoverLocal(ctx); err != nil {
		t.Fatalf("RecoverLocal with a download to resume = %v; want nil", err)
	}
	if b.calls != calls {
		t.Errorf("RecoverLocal fetched %d times; want no network", b.calls-calls)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != Downloading || s.Current.Version != "1.0.0" {
		t.Errorf("after RecoverLocal: %v; want still downloading 1.1.0 with 1.0.0 committed", s)
	}
	if err := m.CheckInvariant(ctx); err != nil {
		t.Fatal(err)
	}
	b.fail = nil
	if err := m.Recover(ctx); err != nil {
		t.Fatalf("Recover with the server back = %v", err)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != Staged || s.Pending.Version != "1.1.0" {
		t.Errorf("after Recover: %v; want 1.1.0 staged", s)
	}

	// A trial past its deadline rolls back without the network too.
	m.BeginTrial(ctx, artifact.KindModel, time.Minute)
	m.Close()
	c.t = c.t.Add(2 * time.Minute)
	m, err = Open(ctx, Config{Dir: dir, Fetch: b, Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.RecoverLocal(ctx); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.State(ctx, artifact.KindModel); s.Phase != RolledBack || s.Current.Version != "1.0.0" {
		t.Errorf("RecoverLocal past the trial deadline: %v; want rolled back to 1.0.0", s)
	}
}
