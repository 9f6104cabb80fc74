package fleet

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// Nonces are single use, expire, and are shared by every store on the database (two
// replicas: one issues, the other consumes).
func testNoncesInTheDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	n1 := bytes.Repeat([]byte{1}, 32)
	if err := a.IssueNonce(ctx, "dev-1", n1, t0.Add(2*time.Minute), t0); err != nil {
		t.Fatal(err)
	}
	if err := b.ConsumeNonce(ctx, "dev-1", bytes.Repeat([]byte{2}, 32), t0); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(wrong nonce) = %v; want ErrNonceUnknown", err)
	}
	if err := b.ConsumeNonce(ctx, "dev-1", n1, t0.Add(time.Minute)); err != nil {
		t.Fatalf("ConsumeNonce(issued by the other replica) = %v", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n1, t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(replay) = %v; want ErrNonceUnknown", err)
	}
	a.IssueNonce(ctx, "dev-1", n1, t0.Add(2*time.Minute), t0)
	if err := a.ConsumeNonce(ctx, "dev-1", n1, t0.Add(3*time.Minute)); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("ConsumeNonce(expired) = %v; want ErrNonceExpired", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n1, t0.Add(3*time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(expired, again) = %v; want ErrNonceUnknown (single use)", err)
	}
	// Issuing prunes expired nonces.
	a.IssueNonce(ctx, "dev-2", n1, t0.Add(2*time.Minute), t0)
	a.IssueNonce(ctx, "dev-3", n1, t0.Add(time.Hour), t0.Add(time.Hour))
	var n int
	a.db.QueryRow(`SELECT count(*) FROM nonces`).Scan(&n)
	if n != 1 {
		t.Fatalf("outstanding nonces = %d; want 1 (the expired one pruned)", n)
	}
}

// Dashboard sessions are in the database (any replica serves them), hashed, bounded,
// and end with their token.
func testSessionsInTheDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	tok, info, err := a.CreateToken(ctx, "rita", RoleReleaseManager, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.StartSession(ctx, "sess-1", tok, "csrf-1", t0, t0.Add(30*time.Minute), 2, 0); err != nil {
		t.Fatal(err)
	}
	p, csrf, err := b.AuthenticateSession(ctx, "sess-1", t0.Add(time.Minute))
	if err != nil || p.Name != "rita" || csrf != "csrf-1" {
		t.Fatalf("AuthenticateSession at the other replica = %+v, %q, %v", p, csrf, err)
	}
	var n int
	a.db.QueryRow(`SELECT count(*) FROM sessions WHERE id_hash = ? OR token_hash = ?`, "sess-1", tok).Scan(&n)
	if n != 0 {
		t.Fatal("a session ID or token is stored in the clear")
	}
	if _, _, err := b.AuthenticateSession(ctx, "sess-1", t0.Add(31*time.Minute)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("AuthenticateSession(expired) = %v; want ErrNotFound", err)
	}
	a.StartSession(ctx, "sess-2", tok, "c", t0.Add(time.Second), t0.Add(time.Hour), 2, 0)
	a.StartSession(ctx, "sess-3", tok, "c", t0.Add(2*time.Second), t0.Add(time.Hour), 2, 0)
	a.StartSession(ctx, "sess-4", tok, "c", t0.Add(3*time.Second), t0.Add(time.Hour), 2, 0)
	if _, _, err := b.AuthenticateSession(ctx, "sess-2", t0.Add(time.Minute)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("oldest session beyond the bound = %v; want ended", err)
	}
	if err := a.RevokeToken(ctx, info.ID, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.AuthenticateSession(ctx, "sess-4", t0.Add(2*time.Minute)); !errors.Is(err, ErrTokenRevoked) {
		t.Fatalf("session of a revoked token = %v; want ErrTokenRevoked", err)
	}
	a.EndSession(ctx, "sess-3")
	if _, _, err := b.AuthenticateSession(ctx, "sess-3", t0.Add(2*time.Minute)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("ended session = %v; want ErrNotFound", err)
	}
}

// Admit with a nonce consumes it in the check-in's transaction: a wrong, replayed or
// expired nonce fails the check-in with nothing stored (not even the nonce's removal,
// for a wrong one), and a check-in that commits has used its nonce up, on every replica,
// and issued the next one it carries.
func testAdmitConsumesTheNonce(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	n1, n2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	admission := func(nonce []byte, now time.Time, report string) Admission {
		return Admission{CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: now},
			Reports: []wire.Report{{ID: report, Kind: artifact.KindModel, Name: "vib", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: now}},
			Verdict: policy.VerdictTrusted, Now: now, Nonce: nonce}
	}
	stored := func() (devices, reports, verdicts int) {
		t.Helper()
		for q, n := range map[string]*int{`SELECT count(*) FROM devices`: &devices, `SELECT count(*) FROM reports`: &reports, `SELECT count(*) FROM verdicts`: &verdicts} {
			if err := a.db.QueryRow(q).Scan(n); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	if err := a.IssueNonce(ctx, "dev-1", n1, t0.Add(2*time.Minute), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Admit(ctx, admission(n2, t0, "r1"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(wrong nonce) = %v; want ErrNonceUnknown", err)
	}
	if d, r, v := stored(); d+r+v != 0 {
		t.Fatalf("after a refused nonce: %d devices, %d reports, %d verdicts stored; want none", d, r, v)
	}
	n3 := bytes.Repeat([]byte{3}, 32)
	first := admission(n1, t0.Add(time.Minute), "r1")
	first.NextNonce, first.NextNonceExpires = n3, t0.Add(3*time.Minute)
	res, err := b.Admit(ctx, first, nil)
	if err != nil || res.Accepted != 1 {
		t.Fatalf("Admit(the nonce another replica issued) = %+v, %v", res, err)
	}
	if _, err := a.Admit(ctx, admission(n1, t0.Add(time.Minute), "r2"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(replayed nonce) = %v; want ErrNonceUnknown", err)
	}
	// The next nonce the check-in issued is the device's outstanding one, single use.
	if _, err := a.Admit(ctx, admission(n3, t0.Add(2*time.Minute), "r2"), nil); err != nil {
		t.Fatalf("Admit(the next nonce the last check-in issued) = %v", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n3, t0.Add(2*time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(after the check-in committed) = %v; want ErrNonceUnknown (used up)", err)
	}
	if err := a.IssueNonce(ctx, "dev-1", n2, t0.Add(3*time.Minute), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// The consumed row holds the next nonce only once the check-in commits: an
	// expired nonce issues none.
	n4 := bytes.Repeat([]byte{4}, 32)
	late := admission(n2, t0.Add(4*time.Minute), "r3")
	late.NextNonce, late.NextNonceExpires = n4, t0.Add(6*time.Minute)
	if _, err := a.Admit(ctx, late, nil); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("Admit(expired nonce) = %v; want ErrNonceExpired", err)
	}
	if _, err := a.Admit(ctx, admission(n4, t0.Add(4*time.Minute), "r3"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(the next nonce of a refused check-in) = %v; want ErrNonceUnknown", err)
	}
	if d, r, v := stored(); d != 1 || r != 2 || v != 2 {
		t.Fatalf("stored %d devices, %d reports, %d verdicts; want the two check-ins that committed", d, r, v)
	}
}

// testStrangerCannotReplaceTheNextNonce: a nonce request is not authenticated on the
// plain listener, so anyone may request nonces in a device's name; that replaces the
// nonce the device requested, but not the one its last check-in issued it, with which
// it still checks in (before, each request replaced the device's one outstanding nonce:
// 1,100 requests a second kept it from ever checking in). Each nonce stays single use.
func testStrangerCannotReplaceTheNextNonce(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	nonce := func(b byte) []byte { return bytes.Repeat([]byte{b}, 32) }
	admission := func(n []byte, now time.Time, report string) Admission {
		return Admission{CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: now},
			Reports: []wire.Report{{ID: report, Kind: artifact.KindModel, Name: "vib", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: now}},
			Verdict: policy.VerdictTrusted, Now: now, Nonce: n}
	}
	if err := a.IssueNonce(ctx, "dev-1", nonce(1), t0.Add(2*time.Minute), t0); err != nil {
		t.Fatal(err)
	}
	first := admission(nonce(1), t0, "r1")
	first.NextNonce, first.NextNonceExpires = nonce(2), t0.Add(2*time.Minute)
	if _, err := b.Admit(ctx, first, nil); err != nil {
		t.Fatal(err)
	}
	// The requested nonce used up, the row's expiry is the next nonce's: nonce requests
	// prune rows through the expiry index, and must not scan every device that checks in.
	var rowExpires int64
	if err := a.db.QueryRow(`SELECT expires_at FROM nonces WHERE device_id = 'dev-1'`).Scan(&rowExpires); err != nil || rowExpires != ns(t0.Add(2*time.Minute)) {
		t.Fatalf("row expiry after a check-in = %d, %v; want the next nonce's, %d", rowExpires, err, ns(t0.Add(2*time.Minute)))
	}
	// A stranger asks for nonces in dev-1's name, at either replica.
	for i, s := range []*Store{a, b, a} {
		if err := s.IssueNonce(ctx, "dev-1", nonce(byte(10+i)), t0.Add(3*time.Minute), t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	second := admission(nonce(2), t0.Add(time.Minute), "r2")
	second.NextNonce, second.NextNonceExpires = nonce(3), t0.Add(3*time.Minute)
	if _, err := a.Admit(ctx, second, nil); err != nil {
		t.Fatalf("Admit with the nonce the last check-in issued, after strangers requested nonces: %v", err)
	}
	if _, err := b.Admit(ctx, admission(nonce(2), t0.Add(time.Minute), "r3"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(replayed next nonce) = %v; want ErrNonceUnknown", err)
	}
	// The requested nonce is the last one requested, single use; the earlier ones are gone.
	if err := b.ConsumeNonce(ctx, "dev-1", nonce(10), t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(a replaced request) = %v; want ErrNonceUnknown", err)
	}
	if err := b.ConsumeNonce(ctx, "dev-1", nonce(12), t0.Add(time.Minute)); err != nil {
		t.Fatalf("ConsumeNonce(the last request) = %v", err)
	}
	if err := b.ConsumeNonce(ctx, "dev-1", nonce(12), t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(the last request, again) = %v; want ErrNonceUnknown", err)
	}
	// The next nonce the second check-in issued is still there, until it expires.
	if err := a.ConsumeNonce(ctx, "dev-1", nonce(3), t0.Add(4*time.Minute)); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("ConsumeNonce(the next nonce, expired) = %v; want ErrNonceExpired", err)
	}
}

// testDecommission: a decommissioned device's check-ins are refused with
// ErrDecommissioned before anything is written (its outstanding nonce, verdicts and
// reports stay as they were, another replica sees the same), it is decommissioned
// once (a second time changes nothing), its outstanding nonce is forgotten by the
// decommission, and the decommission and its audit record commit together.
func testDecommission(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	var audited []AuditRecord
	audit := func(_ context.Context, _ Tx, r AuditRecord) error {
		audited = append(audited, r)
		return nil
	}
	a, b = a.WithAudit(audit), b.WithAudit(audit)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	n1, n2 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	admission := func(nonce []byte, now time.Time, report string) Admission {
		return Admission{CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: now},
			Reports: []wire.Report{{ID: report, Kind: artifact.KindModel, Name: "vib", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: now}},
			Verdict: policy.VerdictTrusted, Now: now, Nonce: nonce}
	}
	count := func(q string) int {
		t.Helper()
		var n int
		if err := a.db.QueryRow(q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if err := a.Decommission(ctx, "dev-1", "never enrolled", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Decommission(unknown device) = %v; want ErrNotFound", err)
	}
	if err := a.IssueNonce(ctx, "dev-1", n1, t0.Add(2*time.Minute), t0); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Admit(ctx, admission(n1, t0, "r1"), nil); err != nil {
		t.Fatalf("Admit before the decommission: %v", err)
	}
	if err := a.IssueNonce(ctx, "dev-1", n2, t0.Add(3*time.Minute), t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	at := t0.Add(90 * time.Second)
	rec := AuditRecord{Actor: "op", Kind: "device.decommission", Subject: "dev-1", Data: map[string]any{"reason": "scrapped"}}
	audited = nil // the check-in's own records
	if err := a.Decommission(ctx, "dev-1", "scrapped", at, rec); err != nil {
		t.Fatal(err)
	}
	if len(audited) != 1 || audited[0].Kind != "device.decommission" {
		t.Fatalf("audit records: %+v", audited)
	}
	if n := count(`SELECT count(*) FROM nonces WHERE device_id = 'dev-1'`); n != 0 {
		t.Fatalf("the outstanding nonce outlived the decommission: %d rows", n)
	}
	d, err := b.Device(ctx, "dev-1")
	if err != nil || !d.Decommissioned() || !d.DecommissionedAt.Equal(at) || d.DecommissionReason != "scrapped" {
		t.Fatalf("Device after the decommission = %+v, %v", d, err)
	}
	if err := b.Decommission(ctx, "dev-1", "again", at.Add(time.Hour), rec); !errors.Is(err, ErrDecommissioned) {
		t.Fatalf("second Decommission = %v; want ErrDecommissioned", err)
	}
	if len(audited) != 1 {
		t.Fatalf("the refused second decommission was audited: %+v", audited)
	}
	if d, _ := a.Device(ctx, "dev-1"); d.DecommissionReason != "scrapped" || !d.DecommissionedAt.Equal(at) {
		t.Fatalf("a second Decommission changed the device: %+v", d)
	}

	// A nonce issued after the decommission (nonce requests are not authenticated) is
	// no way back in: the check-in is refused before the nonce is even looked at.
	if err := a.IssueNonce(ctx, "dev-1", n1, t0.Add(5*time.Minute), t0.Add(3*time.Minute)); err != nil {
		t.Fatal(err)
	}
	reports, verdicts := count(`SELECT count(*) FROM reports`), count(`SELECT count(*) FROM verdicts`)
	if _, err := b.Admit(ctx, admission(n1, t0.Add(4*time.Minute), "r2"), nil); !errors.Is(err, ErrDecommissioned) {
		t.Fatalf("Admit after the decommission = %v; want ErrDecommissioned", err)
	}
	if len(audited) != 1 {
		t.Fatalf("the refused check-in was audited by the store: %+v", audited[1:])
	}
	if r, v := count(`SELECT count(*) FROM reports`), count(`SELECT count(*) FROM verdicts`); r != reports || v != verdicts {
		t.Fatalf("the refused check-in stored %d reports and %d verdicts", r-reports, v-verdicts)
	}
	if n := count(`SELECT count(*) FROM nonces WHERE device_id = 'dev-1'`); n != 1 {
		t.Fatalf("the refused check-in used its nonce: %d rows", n)
	}
	if d, _ := a.Device(ctx, "dev-1"); !d.LastCheckIn.Equal(t0) {
		t.Fatalf("the refused check-in moved the last check-in to %v", d.LastCheckIn)
	}
}
