package reposerver

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/pgtest"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"
	"github.com/edgeward/edgeward/repository"
)

// The restore that docs/OPERATORS.md describes for sqlite, tested: an online backup of
// the live fleet.db (VACUUM INTO, while the store is open), the repository directory
// copied beside it into a new data directory, and a server started on the copy serves
// the same fleet: the device enrolled before the backup checks in there, trusted, and
// the restored audit log exports and verifies.
func TestBackupRestoreServes(t *testing.T) {
	f, d := newDeviceFixtureOn(t, testPolicy, "") // sqlite, whatever EDGEWARD_TEST_POSTGRES says
	ctx := context.Background()
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in before the backup = %+v, %v", resp, err)
	}

	backup := filepath.Join(t.TempDir(), "fleet.db")
	if _, err := f.store.DB().ExecContext(ctx, `VACUUM INTO ?`, backup); err != nil {
		t.Fatalf("online backup: %v", err)
	}
	restored := copyDataDir(t, f.repo.Dir())
	b, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(DBPath(restored), b, 0o600); err != nil {
		t.Fatal(err)
	}

	repo, err := repository.Open(repository.Config{Dir: restored, Actor: "server"})
	if err != nil {
		t.Fatal(err)
	}
	store, err := fleet.Open(ctx, DBPath(restored))
	if err != nil {
		t.Fatalf("open the restored fleet store: %v", err)
	}
	defer store.Close()
	if _, err := store.Device(ctx, d.id); err != nil {
		t.Fatalf("device %s in the restored store: %v", d.id, err)
	}
	srv, err := NewServer(ServerConfig{Repo: repo})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: f.srv.devices.cfg.AttestRoots, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	d.api = &deviceapi.Client{BaseURL: hs.URL}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in at the server restored from the backup = %+v, %v; want trusted", resp, err)
	}

	l, err := srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	var exp bytes.Buffer
	if err := l.Export(ctx, &exp); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyWithKey(&exp, l.PublicKey(), l.Origin())
	if err != nil {
		t.Fatalf("verify the restored audit log: %v", err)
	}
	t.Logf("restored audit log verified: %+v", rep)
}

// copyDataDir copies a server's data directory (the repository, its keys, attest/,
// policy/) but not fleet.db, as a backup of it would be restored, and returns the copy.
func copyDataDir(t *testing.T, dir string) string {
	t.Helper()
	restored := filepath.Join(t.TempDir(), "restored")
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if strings.HasPrefix(e.Name(), "fleet.db") {
			return nil // the database comes from the backup
		}
		dst := filepath.Join(restored, rel)
		if e.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(dst, b, 0o600)
	})
	if err != nil {
		t.Fatal(err)
	}
	return restored
}

// docsBlock returns the shell block of a documentation file that opens with fence.
func docsBlock(t *testing.T, file, fence string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case !in && trimmed == fence:
			if out != nil {
				t.Fatalf("%s: two blocks open with %s", file, fence)
			}
			in, out = true, []string{}
		case in && trimmed == "```":
			in = false
		case in:
			out = append(out, trimmed)
		}
	}
	if len(out) == 0 {
		t.Fatalf("%s: no block opens with %s", file, fence)
	}
	return strings.Join(out, "\n") + "\n"
}

// The PostgreSQL backup and restore that docs/OPERATORS.md describes, tested with its
// own commands: the "sh backup-postgres" block is read from the docs and run by bash
// with Debian's pg_dump and pg_restore, against the live database of a server whose
// device keeps checking in meanwhile, into a fresh empty database. The restore holds
// the fleet as it was (the device, its slots, its report, the rollout's state) and is
// consistent in itself (every verdict row has its audit record); a server started on it
// (with a copy of the data directory) checks the device in, trusted; the restored audit
// log exports and verifies with the same key, and the checkpoint signed after the
// restore is consistent with the one signed before the backup: the log goes on.
func TestPostgresBackupRestore(t *testing.T) {
	if testing.Short() {
		t.Skip("runs pg_dump and pg_restore against a PostgreSQL cluster")
	}
	live := pg.Database(t) // skips (fails under EDGEWARD_REQUIRE_DEPS=1) without PostgreSQL
	bin, err := pgtest.BinDir()
	if err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"pg_dump", "pg_restore"} {
		if _, err := os.Stat(filepath.Join(bin, tool)); err != nil {
			t.Fatalf("%s: %v", tool, err)
		}
	}
	script := docsBlock(t, filepath.Join("..", "docs", "OPERATORS.md"), "```sh backup-postgres")
	f, d := newDeviceFixtureOn(t, testPolicy, live)
	ctx := context.Background()

	// History: a publish, an enrollment, a rollout that the device completes.
	model := []byte("vibration model 1.0.0 bytes")
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", model, nil); err != nil {
		t.Fatal(err)
	}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("first check-in = %+v, %v", resp, err)
	}
	d.load(artifact.KindModel, "vibration", "1.0.0", model)
	d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "1.0.0"}
	rep := wire.Report{ID: "commit-1", Kind: artifact.KindModel, Name: "vibration", Version: "1.0.0", Outcome: "committed", At: time.Now()}
	if resp, err := d.checkIn(d.request(rep)); err != nil || resp.ReportsAccepted != 1 {
		t.Fatalf("check-in with the commit = %+v, %v", resp, err)
	}
	liveLog, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, err := liveLog.Checkpoint(ctx) // the last checkpoint witnesses saw before the backup
	if err != nil {
		t.Fatal(err)
	}
	liveState, err := f.store.RolloutState(ctx, "vib-1.0.0")
	if err != nil {
		t.Fatal(err)
	}
	liveDev, err := f.store.Device(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}

	// The docs' commands, while the device keeps checking in.
	restore := pg.Database(t)
	work := t.TempDir()
	cmd := exec.Command("bash", "-euo", "pipefail", "-c", script)
	cmd.Dir = work
	cmd.Env = append(os.Environ(), "PATH="+bin+string(os.PathListSeparator)+os.Getenv("PATH"), "EDGEWARD_DB="+live, "RESTORE_DB="+restore)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	during := 0
	// One device stands for a fleet's check-ins here: as many as it can, without the
	// per-device bound (DeviceConfig.CheckInBurst).
	f.srv.devices.cfg.CheckInBurst = -1
	for running := true; running; {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("the docs' backup-postgres block: %v\n%s", err, out.String())
			}
			running = false
		default:
			if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
				t.Fatalf("check-in during the backup = %+v, %v", resp, err)
			}
			during++
		}
	}
	t.Logf("%d check-ins while pg_dump and pg_restore ran", during)
	if fi, err := os.Stat(filepath.Join(work, "edgeward.dump")); err != nil || fi.Size() == 0 {
		t.Fatalf("the dump file: %v", err)
	}

	// The restored database: the fleet as it was, consistent in itself.
	store, err := fleet.Open(ctx, restore)
	if err != nil {
		t.Fatalf("open the restored fleet store: %v", err)
	}
	defer store.Close()
	dev, err := store.Device(ctx, d.id)
	if err != nil {
		t.Fatalf("device %s in the restored store: %v", d.id, err)
	}
	if fmt.Sprint(dev.Slots, dev.Labels, dev.EnrolledAt.Unix()) != fmt.Sprint(liveDev.Slots, liveDev.Labels, liveDev.EnrolledAt.Unix()) {
		t.Errorf("restored device = %+v; want %+v", dev, liveDev)
	}
	if st, err := store.RolloutState(ctx, "vib-1.0.0"); err != nil || fmt.Sprintf("%+v", st) != fmt.Sprintf("%+v", liveState) {
		t.Errorf("restored rollout state = %+v, %v; want %+v", st, err, liveState)
	}
	reps, err := store.Reports(ctx, fleet.ReportFilter{DeviceID: d.id})
	if err != nil || len(reps) != 1 || reps[0].Outcome != "committed" || reps[0].RolloutID != "vib-1.0.0" {
		t.Errorf("restored reports = %+v, %v; want the commit once, attributed to vib-1.0.0", reps, err)
	}
	rdb, err := OpenDB(ctx, restore)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	var verdicts int
	if err := rdb.QueryRow(`SELECT count(*) FROM verdicts`).Scan(&verdicts); err != nil {
		t.Fatal(err)
	}

	// A server on the restored database and a copy of the data directory.
	dir := copyDataDir(t, f.repo.Dir())
	repo, err := repository.Open(repository.Config{Dir: dir, Actor: "server"})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerConfig{Repo: repo, DB: restore})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(testPolicy)})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestRoots: f.srv.devices.cfg.AttestRoots, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	l, err := srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	size, err := l.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if size < before.Size {
		t.Fatalf("restored audit log has %d records; the checkpoint before the backup has %d", size, before.Size)
	}
	vrecs, err := l.Records(ctx, audit.Query{Kind: "attestation.verdict"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vrecs) != verdicts {
		t.Errorf("restored: %d verdict rows but %d attestation.verdict audit records; a consistent snapshot has one per row", verdicts, len(vrecs))
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	d.api = &deviceapi.Client{BaseURL: hs.URL}
	if resp, err := d.checkIn(d.request()); err != nil || !resp.Trusted {
		t.Fatalf("check-in at the server on the restored database = %+v, %v; want trusted", resp, err)
	}

	after, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.Size <= size {
		t.Fatalf("the check-in after the restore appended nothing: %d records, %d before it", after.Size, size)
	}
	proof, err := l.ConsistencyProof(ctx, before.Size, after.Size)
	if err != nil {
		t.Fatal(err)
	}
	if err := audit.CheckConsistency(before, after, proof); err != nil {
		t.Fatalf("the checkpoint after the restore (size %d) does not extend the one before the backup (size %d): %v", after.Size, before.Size, err)
	}
	if !bytes.Equal(l.PublicKey(), liveLog.PublicKey()) || l.Origin() != liveLog.Origin() {
		t.Error("the restored server signs with another checkpoint key or origin")
	}
	var exp bytes.Buffer
	if err := l.Export(ctx, &exp); err != nil {
		t.Fatal(err)
	}
	got, err := audit.VerifyWithKey(&exp, liveLog.PublicKey(), liveLog.Origin())
	if err != nil {
		t.Fatalf("verify the restored audit log: %v", err)
	}
	t.Logf("restored audit log verified: %+v (before the backup: %d records)", got, before.Size)
}
