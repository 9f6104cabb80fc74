package reposerver

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/checkpoint"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repository"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Two replicas on one database; replica 2 keeps the newest audit checkpoint in memory
// (for an hour here) and replica 1 signs a newer one. A device that saw the newer one
// at replica 1 and echoes it at replica 2 gets it back (or a newer one, with a proof its
// witness accepts), and replica 2 does not record an audit.inconsistent: its stale
// cache is not a rollback. A device echoing nothing still gets replica 2's cached one.
func TestCheckInCheckpointFromAnotherReplica(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	replica2 := secondReplica(t, f, d, ServerConfig{Repo: f.repo, CheckpointRefresh: time.Hour})
	l1, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkIn := func(at *deviceapi.Client, echo string) *wire.AuditCheckpoint {
		t.Helper()
		req := d.request()
		req.AuditCheckpoint = echo
		d.quote(req)
		resp, err := at.CheckIn(ctx, req)
		if err != nil || !resp.Trusted || resp.Audit == nil {
			t.Fatalf("check-in = %+v, %v; want trusted, with an audit checkpoint", resp, err)
		}
		return resp.Audit
	}
	sizeOf := func(note string) int64 {
		t.Helper()
		c, err := audit.OpenCheckpoint([]byte(note), l1.Verifier(), nil, 0)
		if err != nil {
			t.Fatalf("checkpoint %q: %v", note, err)
		}
		return c.Size
	}

	cached := checkIn(replica2, "").Checkpoint // replica 2 reads and keeps it
	for i := 0; i < 5; i++ {
		if _, err := l1.Append(ctx, "server", "repo.publish", fmt.Sprint(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	newer, err := l1.Checkpoint(ctx) // signed at replica 1
	if err != nil {
		t.Fatal(err)
	}
	if newer.Size <= sizeOf(cached) {
		t.Fatalf("replica 1 signed size %d; want more than replica 2's %d", newer.Size, sizeOf(cached))
	}
	if got := checkIn(replica2, "").Checkpoint; got != cached {
		t.Fatalf("replica 2 answered size %d; want its cached size %d (the test needs a stale replica)", sizeOf(got), sizeOf(cached))
	}

	got := checkIn(replica2, string(newer.Note))
	if n := sizeOf(got.Checkpoint); n < newer.Size {
		t.Fatalf("replica 2, shown a checkpoint of size %d, answered size %d; want at least %d", newer.Size, n, newer.Size)
	}
	var proof tlog.TreeProof
	for _, h := range got.Proof {
		proof = append(proof, tlog.Hash(h))
	}
	if _, err := audit.Next(l1.Verifier(), newer.Note, []byte(got.Checkpoint), proof); err != nil {
		t.Fatalf("the device's witness refuses replica 2's answer: %v", err)
	}
	if recs, err := l1.Records(ctx, audit.Query{Kind: "audit.inconsistent"}); err != nil || len(recs) != 0 {
		t.Fatalf("audit.inconsistent records = %d, %v; want none (a stale cache is not a fork)", len(recs), err)
	}
	// The cache moved on: the next device echoing nothing gets the newer one too.
	if got := checkIn(replica2, ""); sizeOf(got.Checkpoint) < newer.Size {
		t.Fatalf("replica 2 after the refresh answered size %d; want at least %d", sizeOf(got.Checkpoint), newer.Size)
	}
}

// A checkpoint of a tree larger than the database's, signed with the log's key (a
// rollback of the database, or a fork), is still reported, cache or not: the echo
// makes the server read the database, which cannot extend it.
func TestCheckInCheckpointBeyondTheLog(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	req := d.request()
	if _, err := d.checkIn(req); err != nil { // the server caches its newest checkpoint
		t.Fatal(err)
	}
	size, err := l.Size(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A note over a tree of size+100 records, signed with the log's own key.
	forged := signedCheckpoint(t, f, size+100)
	req = d.request()
	req.AuditCheckpoint = forged
	d.quote(req)
	resp, err := d.checkIn(req)
	if err != nil || resp.Audit == nil {
		t.Fatalf("check-in = %+v, %v", resp, err)
	}
	if len(resp.Audit.Proof) != 0 || resp.Audit.Checkpoint == forged {
		t.Fatalf("answer to a checkpoint beyond the log = %+v; want the log's own, without a proof", resp.Audit)
	}
	if recs, err := l.Records(ctx, audit.Query{Kind: "audit.inconsistent"}); err != nil || len(recs) != 1 {
		t.Fatalf("audit.inconsistent records = %d, %v; want 1", len(recs), err)
	}
}

// An echoed checkpoint that is not signed with the log's key (garbage, unsigned, huge)
// proves no fork: it is not recorded. Recorded whole as audit.inconsistent, it let any
// device write megabytes of its choosing ("FORK DETECTED…") into the audit log at every
// check-in (found from outside, 2 Dec). One signed with the key still is (above).
func TestCheckInCheckpointNotTheLogsIsNotRecorded(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatal(err)
	}
	for _, echo := range []string{
		"FORK DETECTED: operator key compromised\n" + strings.Repeat("x", 1<<20),
		"edgeward.audit\n5\nAAAA\n\n— someone AAAA\n",
	} {
		req := d.request()
		req.AuditCheckpoint = echo
		d.quote(req)
		resp, err := d.checkIn(req)
		if err != nil || resp.Audit == nil || resp.Audit.Checkpoint == echo {
			t.Fatalf("check-in echoing %.40q = %+v, %v; want the log's own checkpoint", echo, resp, err)
		}
	}
	if recs, err := l.Records(ctx, audit.Query{Kind: "audit.inconsistent"}); err != nil || len(recs) != 0 {
		t.Fatalf("audit.inconsistent records = %d, %v; want none", len(recs), err)
	}
}

// signedCheckpoint is a checkpoint note over a made-up tree of size records, signed with
// the fixture's audit key as the server signs its own.
func signedCheckpoint(t *testing.T, f *deviceFixture, size int64) string {
	t.Helper()
	key, err := repository.AuditKey(f.repo.Dir())
	if err != nil {
		t.Fatal(err)
	}
	signer, err := audit.Signer(audit.DefaultOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := note.Sign(&note.Note{Text: checkpoint.Body(audit.DefaultOrigin, size, tlog.Hash{1})}, signer)
	if err != nil {
		t.Fatal(err)
	}
	return string(msg)
}

// The audit API's proof endpoints over HTTP: an inclusion proof for a record in the
// tree is served and verifies; indices and sizes that are negative, not numbers, or past
// any tree (MaxInt64, where index+1 overflowed into "record -9223372036854775808",
// found by an outside audit) are 400 before any proof is computed.
func TestAuditProofQueryBounds(t *testing.T) {
	f, _ := newDeviceFixture(t)
	ctx := context.Background()
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := l.Append(ctx, "server", "repo.publish", fmt.Sprint(i), nil); err != nil {
			t.Fatal(err)
		}
	}
	c, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(f.srv.Handler())
	defer hs.Close()
	get := func(q string) (int, []byte) {
		t.Helper()
		resp, err := http.Get(hs.URL + "/v1/audit/proof/" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}
	code, body := get(fmt.Sprintf("inclusion?index=0&size=%d", c.Size))
	var proof tlog.RecordProof
	if code != http.StatusOK || json.Unmarshal(body, &proof) != nil {
		t.Fatalf("inclusion proof of record 1: %d %s", code, body)
	}
	rec, err := l.Record(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := tlog.CheckRecord(proof, c.Size, c.Hash, 0, rec.LeafHash()); err != nil {
		t.Fatalf("the served inclusion proof does not verify: %v", err)
	}
	for _, q := range []string{
		"inclusion?index=9223372036854775807&size=3",
		fmt.Sprintf("inclusion?index=%d&size=3", int64(checkpoint.MaxTreeSize)+1),
		"inclusion?index=-1&size=3",
		"inclusion?index=0&size=x",
		"consistency?old=1&new=9223372036854775807",
		"consistency?old=-2&new=3",
	} {
		if code, body := get(q); code != http.StatusBadRequest {
			t.Errorf("%s: %d %s; want 400", q, code, body)
		}
	}
}

// A device's echoed checkpoint that the server cannot check now (reading the log's
// tree failed: the database away, the check-in's request gone) is no evidence of a
// fork: the server says it could not check, answers without a proof (the device tries
// again at its next check-in), and records no audit.inconsistent. Before 2 Dec any
// error reading the tree hash was taken for a checkpoint the log cannot extend: an
// ERROR "a device holds an audit checkpoint this log cannot extend" and an
// audit.inconsistent record, a false fork alarm, whenever the append that followed
// went through (found from outside: a replica stopped for 45 s behind nginx logged it
// for the check-ins nginx had given up on).
func TestCheckInCheckpointUnreadableIsNotAFork(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	var logged lockedBuffer
	f.srv.log = slog.New(slog.NewTextHandler(&logged, nil))
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first, err := d.checkIn(d.request())
	if err != nil || first.Audit == nil {
		t.Fatalf("check-in = %+v, %v", first, err)
	}
	old := first.Audit.Checkpoint
	// The log grows and a newer checkpoint is signed: the old one needs a proof.
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatal(err)
	}
	c, err := l.Checkpoint(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.srv.noteCheckpoint(c)
	if a := f.srv.auditWitness(ctx, d.id, old); a == nil || len(a.Proof) == 0 {
		t.Fatalf("auditWitness(old checkpoint) = %+v; want the newest with a consistency proof", a)
	}

	gone, cancel := context.WithCancel(ctx)
	cancel() // the check-in's request is gone: the log cannot be read for it
	a := f.srv.auditWitness(gone, d.id, old)
	if a != nil && len(a.Proof) != 0 {
		t.Fatalf("auditWitness with the log unreadable = %+v; want no proof", a)
	}
	if strings.Contains(logged.String(), "cannot extend") {
		t.Errorf("the server took a log it could not read for a fork:\n%s", logged.String())
	}
	if recs, err := l.Records(ctx, audit.Query{Kind: "audit.inconsistent"}); err != nil || len(recs) != 0 {
		t.Fatalf("audit.inconsistent records = %d, %v; want none", len(recs), err)
	}
}
