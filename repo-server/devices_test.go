package reposerver

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/theupdateframework/go-tuf/v2/metadata"
	"math/big"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/attest/attestca"
	"github.com/edgeward/edgeward/attest/attesttest"
	"github.com/edgeward/edgeward/attest/verify"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
	"github.com/edgeward/edgeward/repo-server/audit"
	"github.com/edgeward/edgeward/repo-server/fleet"

	"github.com/edgeward/edgeward/repository"
)

const testPolicy = `version: 1
attestation: {required: true, max_age: 30m}
rollouts:
  - id: vib-1.0.0
    target: {kind: model, name: vibration, version: 1.0.0}
    selector: {labels: {line: press}}
    waves: [{percent: 100}]
`

// device is an agent's TPM side: a simulator TPM with a manufacturer EK certificate,
// an AK certificate from the server's attestation CA, and a measurement log.
type device struct {
	t    *testing.T
	tpm  *attest.TPM
	ak   *attest.AKCertificate
	log  eventlog.Log
	api  *deviceapi.Client
	id   string
	slot map[artifact.Kind]wire.Slot
	// bootLog, if set, is sent with every check-in, the quote covering PCRs 0–7.
	bootLog []byte
	// imaLog, if set, is sent with every check-in, the quote covering PCRs 0–10.
	imaLog []byte
}

type deviceFixture struct {
	*fixture
	store *fleet.Store
}

func newDeviceFixture(t *testing.T) (*deviceFixture, *device) {
	t.Helper()
	return newDeviceFixtureWith(t, testPolicy)
}

// newDeviceFixtureWith is newDeviceFixture under the policy file policyYAML.
func newDeviceFixtureWith(t *testing.T, policyYAML string) (*deviceFixture, *device) {
	t.Helper()
	return newDeviceFixtureOn(t, policyYAML, testDB(t))
}

// newDeviceFixtureOn is newDeviceFixtureWith with the server's database at db
// (DBLocation: a PostgreSQL URL, or "" for sqlite in the repository directory).
func newDeviceFixtureOn(t *testing.T, policyYAML, db string) (*deviceFixture, *device) {
	t.Helper()
	f := newFixtureOn(t, repository.KeyEd25519, db)
	ctx := context.Background()
	store, err := fleet.Open(ctx, DBLocation(f.repo.Dir(), db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	maker, err := attesttest.NewManufacturer("Acme TPM")
	if err != nil {
		t.Fatal(err)
	}
	signer, root, err := attestca.NewRoot("Edgeward Attestation CA", 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	inter := x509.NewCertPool()
	inter.AddCert(maker.Intermediate)
	ca, err := attestca.New(attestca.Config{Signer: signer, Certificate: root, ManufacturerRoots: maker.Roots(), ManufacturerIntermediates: inter,
		Audit: func(ctx context.Context, e attestca.Event) { f.srv.AuditAttestCA(ctx, e) }})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policy.File{Name: "fleet.yaml", Data: []byte(policyYAML)})
	if err != nil {
		t.Fatal(err)
	}
	// The device API uses the real clock (certificates, nonces); so does the repository.
	f.clock.useReal()
	if err := f.srv.EnableDeviceAPI(DeviceConfig{Fleet: store, AttestCA: ca, Policy: func() *policy.Policy { return pol }}); err != nil {
		t.Fatal(err)
	}

	tpm, err := attest.Open(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	if _, err := maker.Provision(ctx, tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	ak, err := (&attest.EnrollClient{URL: f.http.URL + wire.PathAttest}).Enroll(ctx, tpm)
	if err != nil {
		t.Fatalf("enroll: %v", err)
	}
	if err := tpm.ResetPCR(ctx, eventlog.PCRDevelopment); err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, tpm: tpm, ak: ak, api: &deviceapi.Client{BaseURL: f.http.URL}, id: ak.PermanentIdentifier, slot: map[artifact.Kind]wire.Slot{}}
	return &deviceFixture{fixture: f, store: store}, d
}

// request builds and quotes a check-in.
func (d *device) request(reports ...wire.Report) *wire.CheckInRequest {
	d.t.Helper()
	ctx := context.Background()
	nonce, err := d.api.Nonce(ctx, d.id)
	if err != nil {
		d.t.Fatalf("nonce: %v", err)
	}
	req := &wire.CheckInRequest{DeviceID: d.id, Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
		AgentVersion: "0.1.0", Slots: d.slot, Reports: reports, Nonce: nonce}
	d.quote(req)
	return req
}

func (d *device) quote(req *wire.CheckInRequest) {
	d.t.Helper()
	bound, err := wire.QuoteData(req.Nonce, req)
	if err != nil {
		d.t.Fatal(err)
	}
	pcrs := []int{eventlog.PCRDevelopment}
	if d.bootLog != nil {
		pcrs = append(reference.BootPCRs(), pcrs...)
	}
	if d.imaLog != nil {
		pcrs = []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, eventlog.PCRDevelopment}
	}
	q, err := d.tpm.Quote(context.Background(), bound, pcrs)
	if err != nil {
		d.t.Fatal(err)
	}
	req.Evidence = wire.Evidence{AKCert: d.ak.Certificate.Raw, Quote: *q, Log: append(eventlog.Log(nil), d.log...), BootLog: d.bootLog, IMALog: d.imaLog}
	for _, c := range d.ak.Chain[:len(d.ak.Chain)-1] {
		req.Evidence.AKChain = append(req.Evidence.AKChain, c.Raw)
	}
}

// load measures an artifact as the agent does when the runtime loads it.
func (d *device) load(kind artifact.Kind, name, version string, content []byte) {
	d.t.Helper()
	sum := sha256.Sum256(content)
	ev, err := d.tpm.Measure(context.Background(), eventlog.Event{PCR: eventlog.PCRDevelopment, Kind: string(kind), Name: name, Version: version, SHA256: hex.EncodeToString(sum[:])})
	if err != nil {
		d.t.Fatal(err)
	}
	d.log = append(d.log, ev)
}

func (d *device) checkIn(req *wire.CheckInRequest) (*wire.CheckInResponse, error) {
	return d.api.CheckIn(context.Background(), req)
}

// auditActors returns the actors of subject's audit records of kind, oldest first.
func auditActors(t *testing.T, f *fixture, subject, kind string) []string {
	t.Helper()
	l, db, err := OpenAuditAt(context.Background(), f.repo, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(context.Background(), audit.Query{Subject: subject, Kind: kind})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Actor)
	}
	return out
}

func auditKinds(t *testing.T, f *fixture, subject string) []string {
	t.Helper()
	l, db, err := OpenAuditAt(context.Background(), f.repo, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, err := l.Records(context.Background(), audit.Query{Subject: subject})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, r.Kind)
	}
	return out
}

func TestDeviceCheckInLifecycle(t *testing.T) {
	f, d := newDeviceFixture(t)
	model := []byte("vibration model 1.0.0 bytes")
	if _, err := f.publish(artifact.KindModel, "vibration", "1.0.0", ".onnx", model, nil); err != nil {
		t.Fatal(err)
	}

	// First check-in: nothing installed; trusted; told to install the rollout's target.
	resp, err := d.checkIn(d.request())
	if err != nil {
		t.Fatalf("check-in: %v", err)
	}
	if !resp.Trusted || len(resp.Slots) == 0 || resp.Slots[0].Action != "install" || resp.Slots[0].Target != "models/vibration/1.0.0.onnx" {
		t.Fatalf("first check-in = %+v; want trusted and install models/vibration/1.0.0.onnx", resp)
	}

	// The agent installs it, loads (measures) it, and reports the commit.
	d.load(artifact.KindModel, "vibration", "1.0.0", model)
	d.slot[artifact.KindModel] = wire.Slot{Name: "vibration", Version: "1.0.0"}
	rep := wire.Report{ID: "r1", Kind: artifact.KindModel, Name: "vibration", Version: "1.0.0", Outcome: "committed", At: time.Now()}
	req := d.request(rep)
	resp, err = d.checkIn(req)
	if err != nil {
		t.Fatal(err)
	}
	if !resp.Trusted || resp.Slots[0].Action != "hold" || resp.Slots[0].Reason != "up_to_date" || resp.ReportsAccepted != 1 {
		t.Fatalf("second check-in = %+v; want trusted, up to date, 1 report", resp)
	}
	dev, err := f.store.Device(context.Background(), d.id)
	if err != nil || dev.Slots[artifact.KindModel].Version != "1.0.0" || dev.Verdict != policy.VerdictTrusted {
		t.Fatalf("stored device = %+v, %v", dev, err)
	}

	// Attacks are rejected, audited, and change nothing about the device.
	attacks := []struct {
		name string
		req  func() *wire.CheckInRequest
		want string
	}{
		{"replayed check-in", func() *wire.CheckInRequest { return req }, "nonce"},
		{"body altered after quoting", func() *wire.CheckInRequest {
			r := d.request()
			r.Slots = map[artifact.Kind]wire.Slot{artifact.KindModel: {Name: "vibration", Version: "9.9.9"}}
			return r
		}, "nonce_mismatch"},
		{"another device's identity", func() *wire.CheckInRequest {
			r := d.request()
			nonce, _ := d.api.Nonce(context.Background(), "other-device")
			r.DeviceID, r.Nonce = "other-device", nonce
			d.quote(r)
			return r
		}, "identity_mismatch"},
		{"forged AK certificate", func() *wire.CheckInRequest {
			r := d.request()
			r.Evidence.AKCert = d.ak.Chain[len(d.ak.Chain)-1].Raw // the CA root is not an AK cert
			return r
		}, "ak_cert_invalid"},
		{"stale nonce", func() *wire.CheckInRequest {
			r := d.request()
			r.Nonce = bytes.Repeat([]byte{1}, 32)
			d.quote(r)
			return r
		}, "nonce"},
	}
	for _, a := range attacks {
		_, err := d.checkIn(a.req())
		var apiErr *deviceapi.Error
		if !errors.As(err, &apiErr) || (apiErr.Status != 401 && apiErr.Status != 403) || !strings.Contains(apiErr.Message, a.want) {
			t.Fatalf("%s: check-in = %v; want 401/403 mentioning %q", a.name, err, a.want)
		}
	}
	after, _ := f.store.Device(context.Background(), d.id)
	if after.Verdict != policy.VerdictTrusted || after.Quarantined || after.Slots[artifact.KindModel].Version != "1.0.0" {
		t.Fatalf("device after rejected attacks = %+v; want it unchanged", after)
	}
	kinds := strings.Join(auditKinds(t, f.fixture, d.id), ",")
	if n := strings.Count(kinds, "attestation.rejected"); n < 3 {
		t.Fatalf("audit records for %s = %s; want the rejections recorded", d.id, kinds)
	}
	// None of them was the device's own act: each is recorded as a stranger's claim.
	for _, a := range auditActors(t, f.fixture, d.id, "attestation.rejected") {
		if a != "unauthenticated" {
			t.Fatalf("a rejected attack on %s recorded with actor %q; want \"unauthenticated\"", d.id, a)
		}
	}

	// The model file changes on disk; at its next load the measurement differs from the
	// published target: the verdict is untrusted and the device is quarantined.
	d.load(artifact.KindModel, "vibration", "1.0.0", []byte("tampered model bytes"))
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Trusted || !resp.Quarantined || !strings.Contains(strings.Join(resp.Reasons, " "), "artifact_mismatch") {
		t.Fatalf("check-in after tampering = %+v; want untrusted (artifact_mismatch) and quarantined", resp)
	}
	// A new version is published and rolled out: the quarantined device does not get it.
	if _, err := f.publish(artifact.KindModel, "vibration", "1.1.0", ".onnx", []byte("v1.1"), nil); err != nil {
		t.Fatal(err)
	}
	resp, err = d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range resp.Slots {
		if s.Action == "install" {
			t.Fatalf("quarantined device was told to install %s", s.Target)
		}
	}
	if !strings.Contains(strings.Join(auditKinds(t, f.fixture, d.id), ","), "device.quarantine") {
		t.Fatal("quarantine not in the audit log")
	}
}

func TestDeviceAPIRejectsMalformedRequests(t *testing.T) {
	f, d := newDeviceFixture(t)
	for _, body := range []string{`{`, `[]`, `{"device_id":"x","unknown":1}`, `{"device_id":"../../etc"}`, strings.Repeat(" ", 5<<20)} {
		resp, err := httpPost(f.http.URL+wire.PathCheckIn, body)
		if err != nil {
			t.Fatal(err)
		}
		if resp != 400 && resp != 413 && resp != 401 {
			t.Errorf("POST checkin %.30q = %d; want 400/413", body, resp)
		}
	}
	// The device can still check in.
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatalf("check-in after malformed requests: %v", err)
	}
}

func httpPost(url, body string) (int, error) {
	resp, err := http.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// TestEnrollmentWithForeignEKIsRejectedAndAudited: a TPM whose EK certificate does not
// chain to the configured manufacturer roots gets no AK certificate, and the refusal is
// in the audit log.
func TestEnrollmentWithForeignEKIsRejectedAndAudited(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	evil, err := attesttest.NewManufacturer("Evil TPM")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := evil.Provision(ctx, d.tpm, attest.RSA); err != nil {
		t.Fatal(err)
	}
	_, err = (&attest.EnrollClient{URL: f.http.URL + wire.PathAttest}).Enroll(ctx, d.tpm)
	if err == nil || !strings.Contains(err.Error(), "403") {
		t.Fatalf("enroll with a foreign EK = %v; want 403", err)
	}
	l, db, err := OpenAuditAt(ctx, f.repo, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, _ := l.Records(ctx, audit.Query{Kind: "enrollment.rejected"})
	if len(recs) != 1 || !strings.Contains(string(recs[0].Data), "EK certificate") || !strings.Contains(string(recs[0].Data), `"source":"127.0.0.1"`) {
		t.Fatalf("audit records of rejected enrollments = %+v; want one naming the EK certificate and the source", recs)
	}

	// The same refusal again and again (anyone can send it) adds no record at once, and
	// one summary counting them when the window closes (before, each was a record).
	for range 30 {
		if _, err := (&attest.EnrollClient{URL: f.http.URL + wire.PathAttest}).Enroll(ctx, d.tpm); err == nil {
			t.Fatal("enroll with a foreign EK succeeded")
		}
	}
	if recs, _ := l.Records(ctx, audit.Query{Kind: "enrollment.rejected"}); len(recs) != 1 {
		t.Fatalf("after 31 refusals: %d enrollment.rejected records; want 1", len(recs))
	}
	if err := f.srv.FlushRefusals(ctx, true); err != nil {
		t.Fatal(err)
	}
	sums, _ := l.Records(ctx, audit.Query{Kind: "enrollment.rejected.summary"})
	var sum struct{ Refused int }
	if len(sums) != 1 || json.Unmarshal(sums[0].Data, &sum) != nil || sum.Refused != 30 {
		t.Fatalf("enrollment.rejected.summary records = %+v; want one counting the 30 after the first", sums)
	}
}

// TestRejectedCheckInKeepsTheNonce: a check-in whose quote signature does not verify,
// or whose body is not what the device quoted, is rejected before its nonce is
// consumed (verify.Check's contract), so the device's genuine check-in with that nonce
// still succeeds; after it, the nonce is spent.
func TestRejectedCheckInKeepsTheNonce(t *testing.T) {
	_, d := newDeviceFixture(t)
	req := d.request()
	badSig := *req
	badSig.Evidence.Quote.Signature = bytes.Clone(req.Evidence.Quote.Signature)
	badSig.Evidence.Quote.Signature[len(badSig.Evidence.Quote.Signature)-1] ^= 0xff
	altered := *req
	altered.Hardware = "aarch64"
	for _, tt := range []struct {
		name   string
		req    *wire.CheckInRequest
		status int
		want   string
	}{
		{"bad signature", &badSig, http.StatusForbidden, "signature_invalid"},
		{"body altered after quoting", &altered, http.StatusForbidden, "nonce_mismatch"},
		{"genuine, same nonce", req, http.StatusOK, ""},
		{"genuine, replayed", req, http.StatusUnauthorized, "nonce_unknown_or_reused"},
	} {
		resp, err := d.checkIn(tt.req)
		var apiErr *deviceapi.Error
		switch {
		case tt.status == http.StatusOK && (err != nil || !resp.Trusted):
			t.Fatalf("%s: check-in = %+v, %v; want trusted", tt.name, resp, err)
		case tt.status != http.StatusOK && (!errors.As(err, &apiErr) || apiErr.Status != tt.status || !strings.Contains(apiErr.Message, tt.want)):
			t.Fatalf("%s: check-in = %v; want %d mentioning %q", tt.name, err, tt.status, tt.want)
		}
	}
}

// TestRefusalsAreAggregated: 2,000 refused check-ins (a replayed request) add a bounded
// number of audit records, one at once and one summary with the count, while the metric
// counts every one.
func TestRefusalsAreAggregated(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	req := d.request()
	if _, err := d.checkIn(req); err != nil {
		t.Fatal(err)
	}
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := l.Size(ctx)
	const n = 2000
	for i := 0; i < n; i++ {
		var apiErr *deviceapi.Error
		if _, err := d.checkIn(req); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
			t.Fatalf("replay %d = %v; want 401", i, err)
		}
	}
	if err := f.srv.FlushRefusals(ctx, true); err != nil {
		t.Fatal(err)
	}
	after, _ := l.Size(ctx)
	if added := after - before; added < 2 || added > 4 {
		t.Fatalf("%d refused check-ins added %d audit records; want 2 (the first, and one summary)", n, added)
	}
	sums, _ := l.Records(ctx, audit.Query{Kind: "attestation.rejected.summary"})
	var s struct{ Refused int }
	if len(sums) != 1 || json.Unmarshal(sums[0].Data, &s) != nil || s.Refused != n-1 {
		t.Fatalf("summaries = %+v; want one counting %d refusals after the first", sums, n-1)
	}
	var got float64
	mfs, _ := f.srv.Registry().Gather()
	for _, mf := range mfs {
		if mf.GetName() == "edgeward_device_refusals_total" {
			for _, m := range mf.GetMetric() {
				got += m.GetCounter().GetValue()
			}
		}
	}
	if got != n {
		t.Fatalf("edgeward_device_refusals_total = %v; want %d", got, n)
	}
}

// TestCheckInCarriesLastUpdateError: the agent's last update error, in the quoted
// check-in, is kept with the device until a check-in without one (issue 14: a device
// stuck on expired metadata used to look healthy).
func TestCheckInCarriesLastUpdateError(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	at := time.Now().UTC().Truncate(time.Second)
	nonce, err := d.api.Nonce(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	req := &wire.CheckInRequest{DeviceID: d.id, Hardware: "x86_64", AgentVersion: "0.1.0", Slots: d.slot, Nonce: nonce,
		LastError: &wire.UpdateError{Kind: wire.ErrorExpiredMetadata, Message: "timestamp.json is expired", At: at}}
	d.quote(req)
	if _, err := d.checkIn(req); err != nil {
		t.Fatalf("check-in with a last error: %v", err)
	}
	dev, err := f.store.Device(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	if e := dev.LastError; e == nil || e.Kind != wire.ErrorExpiredMetadata || e.Message != "timestamp.json is expired" || !e.At.Equal(at) {
		t.Fatalf("stored last error = %+v; want expired_metadata at %v", e, at)
	}
	if _, err := d.checkIn(d.request()); err != nil {
		t.Fatal(err)
	}
	if dev, _ = f.store.Device(ctx, d.id); dev.LastError != nil {
		t.Errorf("last error after a check-in without one = %+v; want nil", dev.LastError)
	}
}

// TestNextNonce: a check-in's answer carries a nonce for the next check-in, which the
// device may quote over without asking for one; it is single use, a nonce asked for
// since does not replace it, and a check-in refused for its nonce changes nothing and
// issues none.
func TestNextNonce(t *testing.T) {
	_, d := newDeviceFixture(t)
	resp, err := d.checkIn(d.request())
	if err != nil || !resp.Trusted || len(resp.NextNonce) != verify.NonceSize {
		t.Fatalf("check-in = %+v, %v; want trusted with a next nonce of %d bytes", resp, err, verify.NonceSize)
	}
	next := func(nonce []byte) *wire.CheckInRequest {
		req := &wire.CheckInRequest{DeviceID: d.id, Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
			AgentVersion: "0.1.0", Slots: d.slot, Nonce: nonce}
		d.quote(req)
		return req
	}
	req := next(resp.NextNonce)
	resp2, err := d.checkIn(req)
	if err != nil || !resp2.Trusted || len(resp2.NextNonce) != verify.NonceSize || bytes.Equal(resp2.NextNonce, resp.NextNonce) {
		t.Fatalf("check-in over the issued next nonce = %+v, %v; want trusted, with another next nonce", resp2, err)
	}
	refused := func(what string, req *wire.CheckInRequest) {
		t.Helper()
		r, err := d.checkIn(req)
		var apiErr *deviceapi.Error
		if !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized || !strings.Contains(apiErr.Message, "nonce_unknown_or_reused") {
			t.Fatalf("%s: check-in = %+v, %v; want 401 nonce_unknown_or_reused", what, r, err)
		}
	}
	refused("replayed check-in", req)
	// A nonce asked for since, by anyone (the request is not authenticated), does not
	// replace the one the last answer issued: the device still checks in with it (it
	// used to, so a stranger asking for nonces in a device's name kept it out).
	if _, err := d.api.Nonce(context.Background(), d.id); err != nil {
		t.Fatal(err)
	}
	resp3, err := d.checkIn(next(resp2.NextNonce))
	if err != nil || !resp3.Trusted {
		t.Fatalf("check-in over the issued next nonce after a nonce request in its name = %+v, %v", resp3, err)
	}
	refused("the same next nonce again", next(resp2.NextNonce))
	if resp4, err := d.checkIn(d.request()); err != nil || !resp4.Trusted {
		t.Fatalf("check-in with a fresh nonce = %+v, %v", resp4, err)
	}
}

// TestNonceRequestsInADevicesName: anyone may ask for nonces in a device's name (the
// request is not authenticated on the plain listener); that takes nothing from the
// device, whose own nonce still works once (before, each request replaced the device's
// one outstanding nonce). A nonce the server did not issue to the device is refused
// for what it is before the quote is verified: a forged nonce with a forged signature
// is a nonce refusal, not a signature one.
func TestNonceRequestsInADevicesName(t *testing.T) {
	_, d := newDeviceFixture(t)
	ctx := context.Background()
	mine, err := d.api.Nonce(ctx, d.id)
	if err != nil {
		t.Fatal(err)
	}
	for range 200 {
		if _, err := d.api.Nonce(ctx, d.id); err != nil {
			t.Fatal(err)
		}
	}
	other, err := d.api.Nonce(ctx, "another-device")
	if err != nil {
		t.Fatal(err)
	}
	over := func(nonce []byte) *wire.CheckInRequest {
		req := &wire.CheckInRequest{DeviceID: d.id, Labels: map[string]string{"line": "press"}, Hardware: "x86_64",
			AgentVersion: "0.1.0", Slots: d.slot, Nonce: nonce}
		d.quote(req)
		return req
	}
	forged := over(bytes.Repeat([]byte{9}, verify.NonceSize))
	forged.Evidence.Quote.Signature[len(forged.Evidence.Quote.Signature)-1] ^= 0xff
	for _, tt := range []struct {
		name string
		req  *wire.CheckInRequest
		want string // "": trusted
	}{
		{"another device's nonce", over(other), "nonce_unknown_or_reused"},
		{"a forged nonce, forged signature", forged, "nonce_unknown_or_reused"},
		{"its own nonce, after 200 requests in its name", over(mine), ""},
		{"its own nonce again", over(mine), "nonce_unknown_or_reused"},
	} {
		resp, err := d.checkIn(tt.req)
		var apiErr *deviceapi.Error
		switch {
		case tt.want == "" && (err != nil || !resp.Trusted):
			t.Fatalf("%s: check-in = %+v, %v; want trusted", tt.name, resp, err)
		case tt.want != "" && (!errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized || !strings.Contains(apiErr.Message, tt.want)):
			t.Fatalf("%s: check-in = %v; want 401 %s", tt.name, err, tt.want)
		}
	}
}

// TestRefusalSummariesSurviveAClientThatHangsUp: the summaries of refusal windows that
// a refused request happens to close are recorded even when that request's context is
// cancelled (an unauthenticated client that hangs up at once); they used to be dropped
// from memory before the append that then failed, so any client could erase other
// sources' refusal counts from the audit log.
func TestRefusalSummariesSurviveAClientThatHangsUp(t *testing.T) {
	f, _ := newDeviceFixture(t)
	ctx := context.Background()
	l, err := f.srv.AuditLog(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	a := refusalKey{source: "192.0.2.1", device: "dev-a", reason: "nonce_unknown_or_reused"}
	b := refusalKey{source: "198.51.100.7", device: "dev-b", reason: "no client certificate"}
	f.srv.refused.note(a, t0, false)
	f.srv.refused.note(a, t0.Add(time.Second), false)
	f.srv.refused.note(a, t0.Add(2*time.Second), false)
	_, closed, _ := f.srv.refused.note(b, t0.Add(f.srv.refused.interval+time.Minute), false) // closes a's window
	if len(closed) != 1 {
		t.Fatalf("closed windows = %+v; want a's", closed)
	}
	hungUp, cancel := context.WithCancel(ctx)
	cancel()
	if err := f.srv.recordRefusals(hungUp, closed); err != nil {
		t.Fatalf("recording the summaries under a cancelled request: %v", err)
	}
	sums, _ := l.Records(ctx, audit.Query{Kind: "attestation.rejected.summary"})
	var s refusalSummary
	if len(sums) != 1 || json.Unmarshal(sums[0].Data, &s) != nil || s.Source != a.source || s.Refused != 2 {
		t.Fatalf("summaries = %+v; want a's, counting 2 refusals after the first", sums)
	}
}

// TestRefusalTextIsBounded: a refused check-in's reason quotes what failed to parse,
// and the AK certificate is the sender's: one whose URI name does not parse repeats that
// name (twice) in x509's error. A 6 MB name made a 12 MB answer and a 25 MB audit
// record (found from outside, 1 Dec). Both stay near a kilobyte whatever the name.
func TestRefusalTextIsBounded(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri := "http://%zz/" + strings.Repeat("A", 200_000)
	san, err := asn1.Marshal([]asn1.RawValue{{Class: asn1.ClassContextSpecific, Tag: 6, Bytes: []byte(uri)}})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 17}, Value: san}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	req := d.request()
	req.Evidence.AKCert = der
	_, err = d.checkIn(req)
	var apiErr *deviceapi.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusForbidden || !strings.Contains(apiErr.Message, "cannot parse URI") || len(apiErr.Message) > 2048 {
		t.Fatalf("check-in with an AK certificate whose URI does not parse: %v (%d bytes); want 403 saying so, within 2 KiB", err, len(fmt.Sprint(err)))
	}
	l, db, err := OpenAuditAt(ctx, f.repo, f.db)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	recs, _ := l.Records(ctx, audit.Query{Kind: "attestation.rejected"})
	if len(recs) != 1 || len(recs[0].Data) > 8<<10 {
		t.Fatalf("audit records of the refusal: %d, the first of %d bytes; want one within 8 KiB", len(recs), len(recs[0].Data))
	}
}

// TestCheckInAnnouncesTheRoot: every check-in answer says which root the repository
// publishes, and says the new one as soon as a rotation is published (the device holds
// its installs while its metadata source serves an older one: a mirror withholding it).
func TestCheckInAnnouncesTheRoot(t *testing.T) {
	f, d := newDeviceFixture(t)
	ctx := context.Background()
	resp, err := d.checkIn(d.request())
	if err != nil {
		t.Fatal(err)
	}
	if resp.RootVersion != 1 {
		t.Fatalf("check-in announces root v%d; want v1", resp.RootVersion)
	}
	res, err := f.repo.RotateKey(ctx, metadata.TIMESTAMP, repository.KeyEd25519, "", f.keyring(f.keys[metadata.ROOT]...))
	if err != nil || !res.Published {
		t.Fatalf("RotateKey(timestamp) = %+v, %v; want published", res, err)
	}
	if resp, err = d.checkIn(d.request()); err != nil {
		t.Fatal(err)
	}
	if resp.RootVersion != 2 {
		t.Errorf("check-in after the rotation announces root v%d; want v2", resp.RootVersion)
	}
}
