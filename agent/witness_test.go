package agent

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	reposerver "github.com/edgeward/edgeward/repo-server"
	"github.com/edgeward/edgeward/repo-server/audit"
	"golang.org/x/mod/sumdb/tlog"
)

// TestDeviceWitnessesTheAuditLog: a device keeps the newest audit checkpoint it verified
// and refuses the server's answer when the server's log was rolled back (truncated in
// its database) or forked (rewritten to other records past the device's checkpoint).
func TestDeviceWitnessesTheAuditLog(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	lab := newDeviceAPILab(ctx, t, dir)
	res, store, maker, ca := lab.res, lab.store, lab.maker, lab.ca
	repo := res.Repo
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte("version: 1\n")})
	if err != nil {
		t.Fatal(err)
	}
	// The server keeps its newest checkpoint for ServerConfig.CheckpointRefresh (1 s) on
	// its clock; the test signs checkpoints and rewrites the database behind its back,
	// then moves that clock past the refresh (later) instead of sleeping: what the device
	// must see, it sees at its first check-in after the refresh, no later.
	var ahead atomic.Int64
	later := func() { ahead.Add(int64(2 * time.Second)) }
	srv, err := reposerver.NewServer(reposerver.ServerConfig{Repo: repo, Now: func() time.Time { return time.Now().Add(time.Duration(ahead.Load())) }})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.EnableDeviceAPI(reposerver.DeviceConfig{Fleet: store, AttestCA: ca, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()

	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	ak, err := (&attest.EnrollClient{URL: hs.URL + wire.PathAttest}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	state := filepath.Join(dir, "device")
	mlog, err := OpenMeasurementLog(ctx, filepath.Join(state, "measurements.json"), tpm, 0)
	if err != nil {
		t.Fatal(err)
	}
	l, err := srv.AuditLog(ctx) // in the fleet store's database
	if err != nil {
		t.Fatal(err)
	}
	db := store.DB()
	witness := &AuditWitness{Key: l.Verifier(), Path: StateDir(state).AuditCheckpoint()}
	link := &Attested{API: &deviceapi.Client{BaseURL: hs.URL}, TPM: tpm, AK: ak, Log: mlog, Hardware: "x86_64", Audit: witness}
	held := func() int64 {
		t.Helper()
		echo, err := (&AuditWitness{Key: l.Verifier(), Path: witness.Path}).Echo() // as after a restart
		if err != nil || echo == "" {
			t.Fatalf("device checkpoint = %q, %v", echo, err)
		}
		c, _ := checkpoint.ParseUnverified([]byte(echo))
		return c.Size
	}
	grow := func(n int, kind string) int64 {
		t.Helper()
		for i := 0; i < n; i++ {
			if _, err := l.Append(ctx, "server", kind, fmt.Sprint(i), nil); err != nil {
				t.Fatal(err)
			}
		}
		c, err := l.Checkpoint(ctx)
		if err != nil {
			t.Fatal(err)
		}
		later()
		return c.Size
	}

	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatal(err)
	}
	grow(5, "repo.publish")
	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatalf("check-in over a grown log = %v", err)
	}
	n1 := held()
	size2 := grow(5, "repo.publish")
	if _, err := link.CheckIn(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got := held(); got != size2 || got <= n1 {
		t.Fatalf("device holds checkpoint %d; want %d", got, size2)
	}

	// Rollback: the attacker truncates the log in the database back to n1 records.
	attack := func(stmts ...string) {
		t.Helper()
		for _, s := range stmts {
			if _, err := db.Exec(s); err != nil {
				t.Fatalf("%s: %v", s, err)
			}
		}
	}
	attack(`DROP TRIGGER audit_leaves_no_delete`, `DROP TRIGGER audit_hashes_no_delete`,
		fmt.Sprintf(`DELETE FROM audit_leaves WHERE seq > %d`, n1),
		fmt.Sprintf(`DELETE FROM audit_hashes WHERE id >= %d`, tlog.StoredHashIndex(0, n1)),
		fmt.Sprintf(`DELETE FROM audit_checkpoints_v2 WHERE size > %d`, n1),
		fmt.Sprintf(`UPDATE audit_tree_size SET size = %d`, n1))
	later()
	_, err = link.CheckIn(ctx, nil)
	if !errors.Is(err, ErrAuditInconsistent) || !strings.Contains(err.Error(), "rollback") {
		t.Fatalf("check-in after a rollback = %v; want refused as a rollback", err)
	}
	// Fork: the log grows again past the device's checkpoint, with other records.
	grow(int(size2-n1)+3, "forged")
	_, err = link.CheckIn(ctx, nil)
	if !errors.Is(err, ErrAuditInconsistent) {
		t.Fatalf("check-in after a fork = %v; want refused", err)
	}
	if got := held(); got != size2 {
		t.Fatalf("device holds checkpoint %d after refusing; want still %d", got, size2)
	}
	// The server, shown the device's checkpoint, recorded that it cannot extend it.
	recs, err := l.Records(ctx, audit.Query{Kind: "audit.inconsistent"})
	if err != nil || len(recs) == 0 {
		t.Fatalf("audit.inconsistent records = %d, %v; want the fork recorded", len(recs), err)
	}
}
