package fleet

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// Nonces are single use, expire, are bound to their device, and any replica on the
// database accepts a nonce another issued; they are sealed, not stored: issuing writes
// nothing, a forged or altered nonce is unknown, and the tags of used ones are pruned
// once they are long expired.
func testNoncesInTheDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	used := func() int {
		t.Helper()
		var n int
		if err := a.db.QueryRow(`SELECT count(*) FROM used_nonces`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	issue := func(s *Store, device string, expires time.Time) []byte {
		t.Helper()
		n, err := s.IssueNonce(ctx, device, expires)
		if err != nil || len(n) != 32 {
			t.Fatalf("IssueNonce = %x, %v; want 32 bytes", n, err)
		}
		return n
	}
	n1 := issue(a, "dev-1", t0.Add(2*time.Minute))
	for range 100 {
		issue(b, "dev-1", t0.Add(2*time.Minute))
	}
	if n := used(); n != 0 {
		t.Fatalf("issuing nonces stored %d rows; want none", n)
	}
	for name, bad := range map[string][]byte{
		"random":          bytes.Repeat([]byte{2}, 32),
		"short":           n1[:31],
		"empty":           nil,
		"expiry extended": append([]byte{n1[0] + 1}, n1[1:]...),
		"tag altered":     append(append([]byte{}, n1[:31]...), n1[31]^1),
	} {
		if err := b.ConsumeNonce(ctx, "dev-1", bad, t0); !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("ConsumeNonce(%s nonce) = %v; want ErrNonceUnknown", name, err)
		}
		if err := b.CheckNonce("dev-1", bad, t0); !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("CheckNonce(%s nonce) = %v; want ErrNonceUnknown", name, err)
		}
	}
	if err := b.ConsumeNonce(ctx, "dev-2", n1, t0); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(another device's nonce) = %v; want ErrNonceUnknown", err)
	}
	if err := b.CheckNonce("dev-1", n1, t0.Add(time.Minute)); err != nil {
		t.Fatalf("CheckNonce(issued by the other replica) = %v", err)
	}
	if err := b.ConsumeNonce(ctx, "dev-1", n1, t0.Add(time.Minute)); err != nil {
		t.Fatalf("ConsumeNonce(issued by the other replica) = %v", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n1, t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(replay) = %v; want ErrNonceUnknown", err)
	}
	n2 := issue(a, "dev-1", t0.Add(2*time.Minute))
	if err := a.CheckNonce("dev-1", n2, t0.Add(3*time.Minute)); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("CheckNonce(expired) = %v; want ErrNonceExpired", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n2, t0.Add(3*time.Minute)); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("ConsumeNonce(expired) = %v; want ErrNonceExpired", err)
	}
	if n := used(); n != 1 {
		t.Fatalf("used nonces stored: %d; want 1 (the one used; the expired one is no good anyway)", n)
	}

	// Each use prunes up to two tags of nonces that expired more than the grace ago;
	// the tag of a nonce that has not is kept, whatever the replica's clock.
	t1 := t0.Add(time.Hour)
	for i := range 3 {
		if err := a.ConsumeNonce(ctx, "dev-3", issue(b, "dev-3", t1.Add(time.Duration(i+1)*time.Minute)), t1); err != nil {
			t.Fatal(err)
		}
	}
	if n := used(); n != 3 {
		t.Fatalf("used nonces after three more uses an hour later: %d; want 3 (dev-1's tag pruned)", n)
	}
	t2 := t1.Add(usedNonceGrace + 90*time.Second) // past the first's expiry and grace only
	if err := b.ConsumeNonce(ctx, "dev-4", issue(a, "dev-4", t2.Add(time.Minute)), t2); err != nil {
		t.Fatal(err)
	}
	var left []int64
	rows, err := a.db.Query(`SELECT expires_at FROM used_nonces ORDER BY expires_at`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var e int64
		rows.Scan(&e)
		left = append(left, e)
	}
	rows.Close()
	if want := []int64{ns(t1.Add(2 * time.Minute)), ns(t1.Add(3 * time.Minute)), ns(t2.Add(time.Minute))}; !slices.Equal(left, want) {
		t.Fatalf("used nonces' expiries after pruning: %v; want %v", left, want)
	}

	// A store on another database has another key: its nonces are not this fleet's.
	other, err := Open(ctx, filepath.Join(t.TempDir(), "other.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	foreign, err := other.IssueNonce(ctx, "dev-1", t2.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", foreign, t2); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(another fleet's nonce) = %v; want ErrNonceUnknown", err)
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

// Admit with a nonce uses it up in the check-in's transaction: a wrong, replayed or
// expired nonce fails the check-in with nothing stored, and a check-in that commits has
// used its nonce up, on every replica.
func testAdmitConsumesTheNonce(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	stored := func() (devices, reports, verdicts, used int) {
		t.Helper()
		for q, n := range map[string]*int{`SELECT count(*) FROM devices`: &devices, `SELECT count(*) FROM reports`: &reports,
			`SELECT count(*) FROM verdicts`: &verdicts, `SELECT count(*) FROM used_nonces`: &used} {
			if err := a.db.QueryRow(q).Scan(n); err != nil {
				t.Fatal(err)
			}
		}
		return
	}
	n1, err := a.IssueNonce(ctx, "dev-1", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	other, err := a.IssueNonce(ctx, "dev-2", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Admit(ctx, nonceAdmission(other, t0, "r1"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(another device's nonce) = %v; want ErrNonceUnknown", err)
	}
	if d, r, v, u := stored(); d+r+v+u != 0 {
		t.Fatalf("after a refused nonce: %d devices, %d reports, %d verdicts, %d used nonces stored; want none", d, r, v, u)
	}
	res, err := b.Admit(ctx, nonceAdmission(n1, t0.Add(time.Minute), "r1"), nil)
	if err != nil || res.Accepted != 1 {
		t.Fatalf("Admit(the nonce another replica issued) = %+v, %v", res, err)
	}
	if _, err := a.Admit(ctx, nonceAdmission(n1, t0.Add(time.Minute), "r2"), nil); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("Admit(replayed nonce) = %v; want ErrNonceUnknown", err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", n1, t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(after the check-in committed) = %v; want ErrNonceUnknown (used up)", err)
	}
	n2, err := b.IssueNonce(ctx, "dev-1", t0.Add(3*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Admit(ctx, nonceAdmission(n2, t0.Add(4*time.Minute), "r3"), nil); !errors.Is(err, ErrNonceExpired) {
		t.Fatalf("Admit(expired nonce) = %v; want ErrNonceExpired", err)
	}
	if d, r, v, u := stored(); d != 1 || r != 1 || v != 1 || u != 1 {
		t.Fatalf("stored %d devices, %d reports, %d verdicts, %d used nonces; want the one check-in that committed", d, r, v, u)
	}
	// A refused check-in does not use its nonce up: the device retries with it.
	if _, err := a.Admit(ctx, nonceAdmission(n2, t0.Add(2*time.Minute), "r3"), nil); err != nil {
		t.Fatalf("Admit(the nonce of a check-in refused as late, in time) = %v", err)
	}
}

// testStrangerCannotReplaceANonce: a nonce request is not authenticated on the plain
// listener, so anyone may request nonces in a device's name. That takes nothing from
// the device: the nonce it requested, and the one its last check-in gave it, both still
// work, once each (before, each request replaced the device's outstanding nonce: 1,100
// requests a second kept it from ever checking in with one it requested). And it
// stores nothing.
func testStrangerCannotReplaceANonce(t *testing.T, db opener) {
	ctx := context.Background()
	a, b := twoReplicas(t, db)
	t0 := time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)
	requested, err := a.IssueNonce(ctx, "dev-1", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	next, err := b.IssueNonce(ctx, "dev-1", t0.Add(2*time.Minute)) // as a check-in's answer
	if err != nil {
		t.Fatal(err)
	}
	var strangers [][]byte
	for i := range 1000 {
		n, err := []*Store{a, b}[i%2].IssueNonce(ctx, "dev-1", t0.Add(2*time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		strangers = append(strangers, n)
	}
	var rows int
	if err := a.db.QueryRow(`SELECT count(*) FROM used_nonces`).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("1,000 nonce requests stored %d rows (%v); want none", rows, err)
	}
	if _, err := b.Admit(ctx, nonceAdmission(requested, t0.Add(time.Second), "r1"), nil); err != nil {
		t.Fatalf("Admit with the nonce the device requested, after a stranger requested 1,000: %v", err)
	}
	if _, err := a.Admit(ctx, nonceAdmission(next, t0.Add(2*time.Second), "r2"), nil); err != nil {
		t.Fatalf("Admit with the nonce its last check-in gave it: %v", err)
	}
	for _, n := range [][]byte{requested, next} {
		if _, err := a.Admit(ctx, nonceAdmission(n, t0.Add(3*time.Second), "r3"), nil); !errors.Is(err, ErrNonceUnknown) {
			t.Fatalf("Admit(a used nonce again) = %v; want ErrNonceUnknown", err)
		}
	}
	// The stranger's nonces are dev-1's too, but useless without dev-1's TPM (the
	// device API verifies the quote before the store sees the nonce); each is still
	// single use.
	if err := b.ConsumeNonce(ctx, "dev-1", strangers[0], t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := a.ConsumeNonce(ctx, "dev-1", strangers[0], t0.Add(time.Minute)); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("ConsumeNonce(a used nonce again) = %v; want ErrNonceUnknown", err)
	}
}

// testDecommission: a decommissioned device's check-ins are refused with
// ErrDecommissioned before anything is written (its nonce is not used up, its verdicts
// and reports stay as they were, another replica sees the same), it is decommissioned
// once (a second time changes nothing), and the decommission and its audit record
// commit together.
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
	n1, err := a.IssueNonce(ctx, "dev-1", t0.Add(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Admit(ctx, nonceAdmission(n1, t0, "r1"), nil); err != nil {
		t.Fatalf("Admit before the decommission: %v", err)
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
	n2, err := a.IssueNonce(ctx, "dev-1", t0.Add(5*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	reports, verdicts := count(`SELECT count(*) FROM reports`), count(`SELECT count(*) FROM verdicts`)
	if _, err := b.Admit(ctx, nonceAdmission(n2, t0.Add(4*time.Minute), "r2"), nil); !errors.Is(err, ErrDecommissioned) {
		t.Fatalf("Admit after the decommission = %v; want ErrDecommissioned", err)
	}
	if len(audited) != 1 {
		t.Fatalf("the refused check-in was audited by the store: %+v", audited[1:])
	}
	if r, v := count(`SELECT count(*) FROM reports`), count(`SELECT count(*) FROM verdicts`); r != reports || v != verdicts {
		t.Fatalf("the refused check-in stored %d reports and %d verdicts", r-reports, v-verdicts)
	}
	if n := count(`SELECT count(*) FROM used_nonces WHERE device_id = 'dev-1'`); n != 1 {
		t.Fatalf("used nonces of dev-1: %d; want 1 (the refused check-in's not used up)", n)
	}
	if d, _ := a.Device(ctx, "dev-1"); !d.LastCheckIn.Equal(t0) {
		t.Fatalf("the refused check-in moved the last check-in to %v", d.LastCheckIn)
	}
}

// nonceAdmission is dev-1's check-in at now over nonce, with one report of its commit.
func nonceAdmission(nonce []byte, now time.Time, report string) Admission {
	return Admission{CheckIn: CheckIn{ID: "dev-1", Hardware: "x86_64", AgentVersion: "0.1.0", At: now},
		Reports: []wire.Report{{ID: report, Kind: artifact.KindModel, Name: "vib", Version: "1.0.0", Outcome: wire.OutcomeCommitted, At: now}},
		Verdict: policy.VerdictTrusted, Now: now, Nonce: nonce}
}
