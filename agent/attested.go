package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgeward/edgeward/attest"
	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/deviceapi"
	"github.com/edgeward/edgeward/internal/eventlog"
	"github.com/edgeward/edgeward/internal/ima"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/rollback"
	"github.com/edgeward/edgeward/updater"
)

// Attested is the agent's side of the device API. Every call is one check-in proven by
// the TPM: a fresh nonce, the request, and a quote over both (wire.QuoteData) with
// the measurement log. It implements updater.Director (desired state) and
// updater.Sender (reports, acknowledged once the server stored them). Safe for
// concurrent use; check-ins are serialised (one nonce per device at a time).
type Attested struct {
	API          *deviceapi.Client
	TPM          *attest.TPM
	AK           *attest.AKCertificate
	Log          *MeasurementLog
	Labels       map[string]string
	Hardware     string
	AgentVersion string
	Attrs        map[string]any
	Logger       *slog.Logger
	// Extra, if set, adds attributes measured at check-in time (e.g. the drift summary
	// of the serving model) to Attrs.
	Extra func(ctx context.Context) map[string]any
	// LastError, if set, gives the agent's last update error for every check-in
	// (updater.Agent.LastError).
	LastError func() *wire.UpdateError
	// Slots, if set, is read at every check-in, so that reports sent after an install
	// carry the slots as they are then (the quote covers what was loaded since).
	Slots *rollback.Manager
	// Audit, if set, makes the device a witness of the server's audit log: a check-in
	// whose answer carries a checkpoint inconsistent with the last one the device
	// verified fails with ErrAuditInconsistent, and the answer is not acted on.
	Audit *AuditWitness
	// BootLog, if set, is the path of the TCG boot event log, read at every check-in
	// and sent with a quote that covers the boot PCRs (0–7) as well as the measurement
	// PCR. Empty: no boot evidence (a server with a boot policy then refuses trust).
	BootLog string
	// IMALog, if set, is the path of the kernel's IMA measurement list (binary, SHA-256
	// template hashes), read right after each quote, which then covers PCR 10 as well.
	IMALog string
	// DecryptionKey, if set, is certified by the AK at every check-in, with the
	// request's quote data as qualifying data, so that the server can wrap the content
	// keys of encrypted targets to it (issue 18). nil: no content keys are released.
	DecryptionKey *attest.DecryptionKey
	// RenewAK, if set, obtains a new AK certificate from the attestation CA (the agent
	// enrolls again). A check-in calls it first when a third or less of the current
	// one's lifetime remains (AKDue): the server verifies the AK certificate at every
	// check-in, and an agent that ran past it (365 days by default) was refused for
	// good until it restarted. A failure keeps the current certificate, is logged, and
	// is tried again akRetry later. OnAK, if set, is given each new one (the
	// device certificate's ACME orders carry it). Now is the clock; nil: time.Now.
	RenewAK func(ctx context.Context) (*attest.AKCertificate, error)
	OnAK    func(*attest.AKCertificate)
	Now     func() time.Time

	// akMu guards AK once RenewAK may replace it (DeviceID is read by other goroutines).
	akMu sync.Mutex
	// akFailed is when renewing the AK certificate last failed (zero: it did not); the
	// next try waits akRetry. Guarded by mu.
	akFailed time.Time
	mu       sync.Mutex
	status   map[artifact.Kind]updater.SlotStatus
	last     *wire.CheckInResponse
	// nextNonce is the nonce the last answer issued for the next check-in
	// (wire.CheckInResponse.NextNonce); nil: ask for one.
	nextNonce []byte
}

// DeviceID is the device's identity: the permanent identifier of its AK certificate.
func (a *Attested) DeviceID() string { return a.currentAK().PermanentIdentifier }

// currentAK is the AK certificate check-ins carry now.
func (a *Attested) currentAK() *attest.AKCertificate {
	a.akMu.Lock()
	defer a.akMu.Unlock()
	return a.AK
}

// AKDue reports whether an AK certificate should be renewed at now: a third or less of
// its lifetime remains (as for the device certificate), or it has expired.
func AKDue(ak *attest.AKCertificate, now time.Time) bool {
	c := ak.Certificate
	return c.NotAfter.Sub(now) <= c.NotAfter.Sub(c.NotBefore)/3
}

// akRetry is how long a failed renewal of the AK certificate waits before the next try:
// renewAK runs at every exchange with the server (reports too), and each try is an
// enrollment of TPM work and up to 2 minutes of HTTP; months remain when it is first due.
const akRetry = 15 * time.Minute

// renewAK replaces the AK certificate by a new one when it is due (RenewAK); a.mu is
// held, so no check-in is under way.
func (a *Attested) renewAK(ctx context.Context) {
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	old := a.currentAK()
	if a.RenewAK == nil || !AKDue(old, now()) || (!a.akFailed.IsZero() && now().Sub(a.akFailed) < akRetry) {
		return
	}
	ak, err := a.RenewAK(ctx)
	if err == nil && ak.PermanentIdentifier != old.PermanentIdentifier {
		err = fmt.Errorf("the new AK certificate names %q, not this device's %q", ak.PermanentIdentifier, old.PermanentIdentifier)
	}
	if err != nil {
		a.akFailed = now()
		if a.Logger != nil {
			a.Logger.Warn("AK certificate not renewed; the current one is kept, and renewing it is tried again later",
				"not_after", old.Certificate.NotAfter, "retry_in", akRetry, "err", printable.Text(err.Error(), 512))
		}
		return
	}
	a.akFailed = time.Time{}
	a.akMu.Lock()
	a.AK = ak
	a.akMu.Unlock()
	if a.OnAK != nil {
		a.OnAK(ak)
	}
	if a.Logger != nil {
		a.Logger.Info("AK certificate renewed", "not_after", ak.Certificate.NotAfter, "was", old.Certificate.NotAfter)
	}
}

// Last is the server's last answer (nil before the first check-in).
func (a *Attested) Last() *wire.CheckInResponse {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// Standing says what the server made of the last check-in's evidence when it did not
// trust it ("" when it did, or before any answer): the agent records it with the
// check-in's result, so 'edgeward-agent status' shows a quarantined device as such
// (it said "ok": found by an outside operator journey, 2 Dec). Reasons are shown up to
// three, the rest counted.
func (a *Attested) Standing() string {
	last := a.Last()
	if last == nil || (last.Trusted && !last.Quarantined) {
		return ""
	}
	s := "untrusted"
	if last.Quarantined {
		s = "quarantined by the server, untrusted"
	}
	reasons := last.Reasons
	more := ""
	if len(reasons) > 3 {
		reasons, more = reasons[:3], fmt.Sprintf("; %d more", len(last.Reasons)-3)
	}
	if len(reasons) > 0 {
		shown := make([]string, len(reasons))
		for i, r := range reasons {
			shown[i] = printable.Text(r, 256) // the server's words, shown on a terminal
		}
		s += ": " + strings.Join(shown, "; ") + more
	}
	return s
}

// AnnouncedRoot is the TUF root version the server said at the last check-in that it
// publishes (0: none yet, or a server that does not say): the updater holds its
// installs while the device's metadata source serves an older one.
func (a *Attested) AnnouncedRoot() int64 {
	if last := a.Last(); last != nil {
		return last.RootVersion
	}
	return 0
}

// CheckIn reports the slots and returns the server's whole decision per slot kind
// (target, action, gates, revert, rollout). The updater acts only on installs: a
// target the server only wants downloaded (outside the maintenance window) waits.
func (a *Attested) CheckIn(ctx context.Context, status map[artifact.Kind]updater.SlotStatus) (map[artifact.Kind]wire.SlotDecision, error) {
	a.mu.Lock()
	a.status = status
	a.mu.Unlock()
	resp, err := a.send(ctx, nil)
	if de := (*deviceapi.Error)(nil); errors.As(err, &de) && de.Status == http.StatusForbidden && strings.HasPrefix(de.Message, "device decommissioned") {
		return nil, fmt.Errorf("%w: %w", updater.ErrOutOfService, err)
	}
	if errors.Is(err, attest.ErrOutOfService) {
		// The TLS handshake's device certificate was refused for good (it expired, and
		// the CA renews none for a decommissioned device): asked again hourly, as above.
		return nil, fmt.Errorf("%w: %w", updater.ErrOutOfService, err)
	}
	if err != nil {
		return nil, err
	}
	out := make(map[artifact.Kind]wire.SlotDecision, len(resp.Slots))
	for _, s := range resp.Slots {
		out[s.Kind] = s
	}
	return out, nil
}

// Send delivers install reports in a check-in.
func (a *Attested) Send(ctx context.Context, msgs []updater.Message) ([]string, error) {
	var reps []wire.Report
	var ids []string
	for _, m := range msgs {
		if m.Kind != "install" {
			ids = append(ids, m.ID) // nothing else is reported today: acknowledge, do not resend forever
			continue
		}
		var r wire.Report
		if err := json.Unmarshal(m.Body, &r); err != nil {
			ids = append(ids, m.ID)
			continue
		}
		// The request names the device and the server attributes the rollout: the
		// report carries neither.
		r.ID, r.DeviceID, r.RolloutID = m.ID, "", ""
		reps = append(reps, r)
	}
	if len(reps) == 0 {
		return ids, nil
	}
	resp, err := a.send(ctx, reps)
	var de *deviceapi.Error
	if errors.As(err, &de) && (de.Status == http.StatusBadRequest || de.Status == http.StatusRequestEntityTooLarge) {
		// Refused as invalid: the reports are at fault only if the same check-in
		// without them is accepted (else nothing is refused, and all are retried).
		if _, perr := a.send(ctx, nil); perr != nil {
			return ids, err
		}
		re := &updater.RefusedError{Whole: true, Reasons: map[string]string{}}
		for _, r := range reps {
			re.Reasons[r.ID] = de.Message
		}
		return ids, re
	}
	if err != nil {
		return ids, err
	}
	refused := map[string]string{}
	for _, r := range resp.ReportsRefused {
		refused[r.ID] = r.Reason
	}
	if resp.ReportsAccepted+len(resp.ReportsRefused) != len(reps) {
		return ids, fmt.Errorf("server stored %d and refused %d of %d reports", resp.ReportsAccepted, len(resp.ReportsRefused), len(reps))
	}
	for _, r := range reps {
		if _, bad := refused[r.ID]; !bad {
			ids = append(ids, r.ID)
		}
	}
	if len(refused) > 0 {
		return ids, &updater.RefusedError{Reasons: refused}
	}
	return ids, nil
}

func (a *Attested) send(ctx context.Context, reports []wire.Report) (*wire.CheckInResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.renewAK(ctx)
	id := a.DeviceID()
	// The nonce the last check-in's answer carried, if any (single use: taken now);
	// else, or when the server refuses it (expired, or replaced since), a new one.
	nonce, held := a.nextNonce, a.nextNonce != nil
	a.nextNonce = nil
	for {
		if !held {
			var err error
			if nonce, err = a.API.Nonce(ctx, id); err != nil {
				return nil, err
			}
		}
		resp, err := a.sendWith(ctx, id, reports, nonce)
		var apiErr *deviceapi.Error
		if held && errors.As(err, &apiErr) && apiErr.Status == http.StatusUnauthorized {
			held = false
			continue
		}
		if err != nil {
			return nil, err
		}
		a.nextNonce = resp.NextNonce
		return resp, nil
	}
}

// sendWith is one check-in quoting over nonce; a.mu is held.
func (a *Attested) sendWith(ctx context.Context, id string, reports []wire.Report, nonce []byte) (*wire.CheckInResponse, error) {
	var err error
	attrs := a.Attrs
	if a.Extra != nil {
		if extra := a.Extra(ctx); len(extra) > 0 {
			attrs = make(map[string]any, len(a.Attrs)+len(extra))
			for k, v := range a.Attrs {
				attrs[k] = v
			}
			for k, v := range extra {
				attrs[k] = v
			}
		}
	}
	req := &wire.CheckInRequest{DeviceID: id, Labels: a.Labels, Hardware: a.Hardware, AgentVersion: a.AgentVersion,
		Attrs: attrs, Slots: map[artifact.Kind]wire.Slot{}, Reports: reports, Nonce: nonce}
	if a.LastError != nil {
		req.LastError = a.LastError()
	}
	status := a.status
	if a.Slots != nil {
		status = map[artifact.Kind]updater.SlotStatus{}
		for _, k := range rollback.Kinds() {
			s, err := a.Slots.State(ctx, k)
			if err != nil {
				return nil, err
			}
			if s.Current != nil {
				status[k] = updater.SlotStatus{Version: s.Current.Version, Path: s.Current.Path}
			}
		}
	}
	for kind, st := range status {
		if st.Version == "" {
			continue
		}
		_, name, _, err := artifact.ParseTargetPath(st.Path)
		if err != nil {
			return nil, fmt.Errorf("slot %s: %w", kind, err)
		}
		req.Slots[kind] = wire.Slot{Name: name, Version: st.Version}
	}
	if a.Audit != nil {
		if req.AuditCheckpoint, err = a.Audit.Echo(); err != nil {
			return nil, err
		}
	}
	bound, err := wire.QuoteData(nonce, req)
	if err != nil {
		return nil, err
	}
	pcrs := []int{a.Log.PCR()}
	var bootLog []byte
	if a.BootLog != "" {
		if bootLog, err = readBounded(a.BootLog, wire.MaxBootLogBytes); err != nil {
			return nil, fmt.Errorf("boot event log: %w", err)
		}
		pcrs = append(reference.BootPCRs(), a.Log.PCR())
	}
	if a.IMALog != "" {
		// PCR 10, and PCRs 0-9, which the list's first entry (boot_aggregate) digests.
		for i := 0; i <= ima.PCR; i++ {
			if !slices.Contains(pcrs, i) {
				pcrs = append(pcrs, i)
			}
		}
		slices.Sort(pcrs)
	}
	// The log and the quote are taken with no measurement in between (one would make
	// the quote cover an event the log lacks, which the server refuses).
	var log eventlog.Log
	var q *attest.Quote
	if err := a.Log.Quote(func(l eventlog.Log) error {
		log = l
		q, err = a.TPM.Quote(ctx, bound, pcrs)
		return err
	}); err != nil {
		return nil, fmt.Errorf("quote: %w", err)
	}
	var imaLog []byte
	if a.IMALog != "" {
		// After the quote: the kernel only appends, so the list read now starts with
		// what the quote covers (the server replays the shortest prefix that matches).
		if imaLog, err = readBounded(a.IMALog, ima.MaxLogBytes); err != nil {
			return nil, fmt.Errorf("IMA measurement list: %w", err)
		}
	}
	ak := a.currentAK()
	req.Evidence = wire.Evidence{AKCert: ak.Certificate.Raw, Quote: *q, Log: log, BootLog: bootLog, IMALog: imaLog}
	if a.DecryptionKey != nil {
		c, err := a.DecryptionKey.Certify(ctx, bound)
		if err != nil {
			return nil, fmt.Errorf("certify the decryption key: %w", err)
		}
		req.Evidence.DecryptionKey = c
	}
	for _, c := range ak.Chain[:max(0, len(ak.Chain)-1)] {
		req.Evidence.AKChain = append(req.Evidence.AKChain, c.Raw)
	}
	resp, err := a.API.CheckIn(ctx, req)
	if err != nil {
		return nil, err
	}
	if a.Audit != nil {
		if _, err := a.Audit.Accept(resp.Audit); err != nil {
			if a.Logger != nil {
				msg := "the server's audit log does not extend what this device witnessed: its answer is refused"
				if errors.Is(err, ErrAuditStale) {
					msg = "the server's audit checkpoint is older than this device accepts: its answer is refused"
				}
				a.Logger.Error(msg, "err", err)
			}
			return nil, err
		}
	}
	if !resp.Trusted && a.Logger != nil {
		a.Logger.Warn("server does not trust this device's evidence", "reasons", resp.Reasons, "quarantined", resp.Quarantined)
	}
	a.last = resp
	return resp, nil
}

// ErrNotEnrolled is returned when the agent has no AK certificate.
var ErrNotEnrolled = errors.New("agent: not enrolled")

// readBounded reads the file at path, refusing one of more than limit bytes.
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: more than %d bytes", path, limit)
	}
	return b, nil
}
