package reposerver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/fleet"
)

// TestFullDiskErrorsNameTheCause: a fleet write that failed for want of space is
// answered by the operator API 503 saying the database cannot take writes because its
// disk is full (before: "the fleet database is not answering"), and is passed to the
// attestation CA as ErrUnavailable with ENOSPC (503 with Retry-After there; before,
// 500 "internal error").
func TestFullDiskErrorsNameTheCause(t *testing.T) {
	full := fmt.Errorf("create token: %w", &os.PathError{Op: "write", Path: "fleet.db-wal", Err: syscall.ENOSPC})
	o := &operatorAPI{s: &Server{log: slog.New(slog.DiscardHandler)}}
	rec := httptest.NewRecorder()
	o.fail(rec, httptest.NewRequest("POST", "/v1/tokens", nil), "create token", full)
	if body := rec.Body.String(); rec.Code != http.StatusServiceUnavailable || !strings.Contains(body, "cannot take writes (its disk is full)") || rec.Header().Get("Retry-After") == "" {
		t.Errorf("operator API on a full disk = %d %s (Retry-After %q); want 503 naming the full disk", rec.Code, body, rec.Header().Get("Retry-After"))
	}
	if err := caUnavailable(full); !errors.Is(err, attestca.ErrUnavailable) || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("caUnavailable(%v) = %v; want ErrUnavailable and ENOSPC", full, err)
	}
	if err := caUnavailable(fleet.ErrClosed); !errors.Is(err, attestca.ErrUnavailable) || errors.Is(err, syscall.ENOSPC) {
		t.Errorf("caUnavailable(ErrClosed) = %v; want ErrUnavailable only", err)
	}
	if err := caUnavailable(fleet.ErrNotFound); errors.Is(err, attestca.ErrUnavailable) {
		t.Errorf("caUnavailable(ErrNotFound) = %v; want it as it was", err)
	}
}

// TestCheckInOnAFullDiskSaysSo: a check-in whose writes fail because the fleet
// database's disk is full is answered 503 with Retry-After saying so, on both backends:
// sqlite on a tmpfs filled to the last byte, and PostgreSQL raising its own disk_full
// (53100) from a trigger. Before, the device was told "the fleet database is not
// answering", which sends whoever reads the agent's log to the network.
func TestCheckInOnAFullDiskSaysSo(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) {
		// Not under t.TempDir: the test's temporary directories are made in the
		// first one's parent, which must be on the small disk.
		tmp, err := os.MkdirTemp("", "fulldisk")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(tmp) }) // after the unmount
		fill, free := smallDisk(t, tmp, "64m")
		t.Setenv("TMPDIR", tmp) // the fixture's repository (and fleet.db) on the small disk
		f, d := newDeviceFixtureOn(t, testPolicy, "")
		testCheckInOnAFullDisk(t, f, d, func() (undo func()) {
			// The WAL's pages are written over again after a checkpoint, which needs no
			// new space: empty it first, so that the check-in's write needs some.
			db, err := OpenDB(context.Background(), DBLocation(f.repo.Dir(), ""))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
				t.Fatal(err)
			}
			fill()
			return free
		})
	})
	t.Run("postgres", func(t *testing.T) {
		where := pg.Database(t)
		f, d := newDeviceFixtureOn(t, testPolicy, where)
		testCheckInOnAFullDisk(t, f, d, func() (undo func()) {
			db, err := OpenDB(context.Background(), DBLocation(f.repo.Dir(), where))
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{
				`CREATE OR REPLACE FUNCTION inject_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$`,
				`CREATE TRIGGER inject BEFORE INSERT ON reports FOR EACH ROW EXECUTE FUNCTION inject_disk_full()`,
			} {
				if _, err := db.Exec(q); err != nil {
					t.Fatal(err)
				}
			}
			return func() {
				defer db.Close()
				if _, err := db.Exec(`DROP TRIGGER inject ON reports`); err != nil {
					t.Fatal(err)
				}
			}
		})
	})
}

func testCheckInOnAFullDisk(t *testing.T, f *deviceFixture, d *device, full func() (undo func())) {
	model := []byte("vibration model 1.0.0 bytes")
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", model, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatalf("first check-in: %v", err)
	}
	d.load(artifact.KindModel, "vibration", "1.0.0", model)
	d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "1.0.0"}
	rep := wire.Report{ID: "commit-1", Kind: artifact.KindModel, Name: "vibration", Version: "1.0.0", Outcome: "committed", At: time.Now()}
	undo := full()
	_, err := d.checkIn(d.request(rep))
	undo()
	var apiErr *deviceapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable || !strings.Contains(apiErr.Message, "its disk is full") {
		t.Fatalf("check-in on a full disk = %v; want 503 saying the fleet database's disk is full", err)
	}
	if resp, err := d.checkIn(d.request(rep)); err != nil || resp.ReportsAccepted != 1 {
		t.Fatalf("check-in once there is room = %+v, %v; want the report accepted", resp, err)
	}
}

// TestOutageRefusalsAreLoggedOnce: while the fleet database cannot take writes, every
// check-in is refused 503, and the server logs the refusals once a minute with a count
// and once when they stop, not a line per check-in (at fleet scale a flood that buried
// everything else during an outage).
func TestOutageRefusalsAreLoggedOnce(t *testing.T) {
	where := pg.Database(t)
	f, d := newDeviceFixtureOn(t, testPolicy, where)
	var buf lockedBuffer
	f.srv.devices.outage.Logger = slog.New(slog.NewTextHandler(&buf, nil))
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatalf("first check-in: %v", err)
	}
	db, err := OpenDB(context.Background(), DBLocation(f.repo.Dir(), where))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, q := range []string{
		`CREATE OR REPLACE FUNCTION inject_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$`,
		`CREATE TRIGGER inject BEFORE INSERT OR UPDATE ON devices FOR EACH ROW EXECUTE FUNCTION inject_disk_full()`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	const refused = 5
	for i := range refused {
		var apiErr *deviceapi.Error
		if _, err := d.checkIn(d.request()); !errors.As(err, &apiErr) || apiErr.Status != http.StatusServiceUnavailable {
			t.Fatalf("check-in %d during the outage = %v; want 503", i+1, err)
		}
	}
	if _, err := db.Exec(`DROP TRIGGER inject ON devices`); err != nil {
		t.Fatal(err)
	}
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatalf("check-in after the outage: %v", err)
	}
	out := buf.String()
	if n := strings.Count(out, "check-ins refused"); n != 1 {
		t.Errorf("%d log lines for %d refused check-ins within a minute; want 1:\n%s", n, refused, out)
	}
	if !strings.Contains(out, "takes check-ins again") || !strings.Contains(out, fmt.Sprintf("failures=%d", refused)) {
		t.Errorf("no recovery line counting %d failures:\n%s", refused, out)
	}
}
