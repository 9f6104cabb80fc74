package reposerver

import (
	"context"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/edgeward/edgeward/attest/attestca"
)

// Refused device requests are counted, but an unauthenticated client must not grow the
// audit log without bound. The first refusal of a (source address, claimed device,
// reason) in an interval is recorded at once ("attestation.rejected"); the others are
// counted, and one "attestation.rejected.summary" record per window says how many there
// were when the window closes. At most maxRefusalWindows windows are open at a time,
// and at most maxWindowsPerSource of one source: a source's refusals beyond its own
// bound share one window of that source (device "*"), and refusals beyond the total
// share one overflow window per kind (source "*"). So a flood of refused requests adds
// at most about 2 × maxRefusalWindows records per interval, whatever its size, and one
// source about 2 × (maxWindowsPerSource+1): before 2 Dec one source naming random EKs
// took every window, 770 records in 130 s (found from outside).
const (
	maxRefusalWindows   = 256
	maxWindowsPerSource = 8
)

// refusalKey is a refusal window's key. kind is the record's kind, its summary's kind
// with ".summary" ("": attestation.rejected, a check-in's refusal).
type refusalKey struct{ kind, source, device, reason string }

// recordKind is the kind of the records of k's window.
func (k refusalKey) recordKind() string {
	if k.kind == "" {
		return "attestation.rejected"
	}
	return k.kind
}

type refusalWindow struct {
	from, last time.Time
	count      int // refusals after the first (the first has its own record)
}

type refusals struct {
	interval time.Duration
	mu       sync.Mutex
	open     map[refusalKey]*refusalWindow
	// perSource counts the open windows of each source, its own overflow window
	// (device "*") not included.
	perSource map[string]int
}

// overflowKey is the window that refusals of kind share once maxRefusalWindows are open.
func overflowKey(kind string) refusalKey {
	return refusalKey{kind: kind, source: "*", device: "*", reason: "more sources than the server tracks"}
}

// sourceOverflowKey is the window that source's refusals of kind share once it has
// maxWindowsPerSource open.
func sourceOverflowKey(kind, source string) refusalKey {
	return refusalKey{kind: kind, source: source, device: "*", reason: "more claimed devices or reasons from this source than the server tracks"}
}

// put opens window k.
func (r *refusals) put(k refusalKey, w *refusalWindow) {
	if r.open == nil {
		r.open, r.perSource = map[refusalKey]*refusalWindow{}, map[string]int{}
	}
	if _, ok := r.open[k]; !ok && k.device != "*" {
		r.perSource[k.source]++
	}
	r.open[k] = w
}

// drop closes window k.
func (r *refusals) drop(k refusalKey) {
	if _, ok := r.open[k]; !ok {
		return
	}
	delete(r.open, k)
	if k.device != "*" {
		if r.perSource[k.source]--; r.perSource[k.source] <= 0 {
			delete(r.perSource, k.source)
		}
	}
}

// refusalSummary is the data of an attestation.rejected.summary record.
type refusalSummary struct {
	Kind    string    `json:"-"` // refusalKey.kind
	Source  string    `json:"source"`
	Device  string    `json:"device"`
	Reason  string    `json:"reason"`
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Refused int       `json:"refused"` // refusals in the window after the first, which has its own record
}

// note counts a refusal at now. It returns whether this is the first of its window (the
// caller records it at once), the summaries of the windows it closed, and the key of the
// window it counted in (k, or an overflow window's: the one to forget if the first
// record fails). An
// authenticated refusal (a device its TPM proved, e.g. a decommissioned one) always
// gets a window of its own, past maxRefusalWindows: such windows are bounded by the
// fleet's devices, not by what strangers send, and a flood of strangers must not fold
// a real device's refusal into the anonymous overflow (found from outside, 1 Dec).
func (r *refusals) note(k refusalKey, now time.Time, authenticated bool) (first bool, closed []refusalSummary, used refusalKey) {
	r.mu.Lock()
	defer r.mu.Unlock()
	closed = r.closeLocked(now, false)
	w, ok := r.open[k]
	if !ok && !authenticated && r.perSource[k.source] >= maxWindowsPerSource {
		k = sourceOverflowKey(k.kind, k.source)
		w, ok = r.open[k]
	}
	if !ok && !authenticated && len(r.open) >= maxRefusalWindows {
		k = overflowKey(k.kind)
		w, ok = r.open[k]
	}
	if !ok {
		r.put(k, &refusalWindow{from: now, last: now})
		return true, closed, k
	}
	w.count++
	w.last = now
	return false, closed, k
}

// closeLocked removes the windows older than the interval (all with force) and returns
// the summaries of those that counted more than their first refusal.
func (r *refusals) closeLocked(now time.Time, force bool) []refusalSummary {
	var out []refusalSummary
	for k, w := range r.open {
		if !force && now.Sub(w.from) < r.interval {
			continue
		}
		r.drop(k)
		if w.count > 0 {
			out = append(out, refusalSummary{Kind: k.kind, Source: k.source, Device: k.device, Reason: k.reason, From: w.from, To: w.last, Refused: w.count})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].From.Before(out[j].From) })
	return out
}

// reopen puts back closed windows whose summaries could not be recorded, so that a
// later flush records them: memory gives up a window only once the log holds it. It
// keeps the bound note keeps (maxRefusalWindows, and the overflow window): a window put
// back while the others are at the bound (new sources came while the log was failing)
// is folded into the overflow window, which then counts its refusals without its source.
func (r *refusals) reopen(closed []refusalSummary) {
	if len(closed) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range closed {
		k := refusalKey{kind: c.Kind, source: c.Source, device: c.Device, reason: c.Reason}
		if w, ok := r.open[k]; ok {
			// A new window of the same key opened meanwhile: fold the old one in.
			w.from, w.count = c.From, w.count+c.Refused+1
			continue
		}
		if len(r.open) >= maxRefusalWindows && k.source != "*" {
			// Its first refusal has its record; the rest go to the overflow's summary.
			ok := overflowKey(k.kind)
			if w, open := r.open[ok]; open {
				w.count += c.Refused
				w.from = minTime(w.from, c.From)
				w.last = maxTime(w.last, c.To)
				continue
			}
			k = ok
		}
		r.put(k, &refusalWindow{from: c.From, last: c.To, count: c.Refused})
	}
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// forget drops the window of k that note just opened, when its first refusal could not
// be recorded: the next refusal of k is then a first again, recorded on its own, rather
// than counted into a summary that says the first has its own record.
func (r *refusals) forget(k refusalKey, from time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w, ok := r.open[k]; ok && w.from.Equal(from) && w.count == 0 {
		r.drop(k)
	}
}

// FlushRefusals records the summaries of the refusal windows that have closed (all of
// them with force, as at shutdown). The checkpoint ticker calls it, and once more with
// force when it stops.
func (s *Server) FlushRefusals(ctx context.Context, force bool) error {
	s.refused.mu.Lock()
	closed := s.refused.closeLocked(s.cfg.Repo.Now(), force)
	s.refused.mu.Unlock()
	return s.recordRefusals(ctx, closed)
}

// recordRefusals appends the summaries to the audit log; those it could not append are
// put back into their windows. The appends do not end with ctx: a refused request's
// context is cancelled when its (unauthenticated) client hangs up, which must not cost
// other sources' summaries.
func (s *Server) recordRefusals(ctx context.Context, closed []refusalSummary) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	for i, c := range closed {
		kind := refusalKey{kind: c.Kind}.recordKind() + ".summary"
		if err := s.auditLog(ctx, "server", kind, c.Device, c); err != nil {
			s.refused.reopen(closed[i:])
			return err
		}
	}
	return nil
}

// auditAggregated appends one record of a kind that unauthenticated clients can cause
// at will (an enrollment's challenge or refusal): the first of its key (kind, source,
// subject, reason) in an interval at once, the others counted into the window's summary
// (kind + ".summary"), within the same bounds as refused check-ins. A record that could
// not be appended is returned, and its window forgotten, so the next is a first again.
func (s *Server) auditAggregated(ctx context.Context, k refusalKey, actor, subject string, data any) error {
	now := s.cfg.Repo.Now()
	first, closed, used := s.refused.note(k, now, false)
	err := s.recordRefusals(ctx, closed)
	if first {
		if err == nil {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			err = s.auditLog(actx, actor, k.recordKind(), subject, data)
			cancel()
		}
		if err != nil {
			s.refused.forget(used, now)
		}
	}
	return err
}

// AuditAttestCA records an attestation CA's event (attestca.Config.Audit) in the
// server's audit log, as "enrollment.<kind>" by actor "attestation-ca". An issue needs
// the TPM's answer, so each is recorded. Challenges and refusals are what anyone can
// cause (a challenge needs only an EK certificate, which is public): like refused
// check-ins, the first of each source, EK and reason in an interval is recorded and the
// rest are counted into a summary ("enrollment.rejected.summary",
// "enrollment.challenge.summary"; auditAggregated). Before, each was a record: 5,060
// refused enrollments in 5 s from one source were 5,060 records (found from outside,
// 1 Dec). The source is the request's, when the CA's handler is mounted by
// EnableDeviceAPI.
func (s *Server) AuditAttestCA(ctx context.Context, e attestca.Event) {
	kind, data := "enrollment."+e.Kind, map[string]string{"reason": boundText(e.Reason, maxRefusalText)}
	if e.Serial != "" {
		data["serial"] = e.Serial
	}
	if e.Kind == "issued" {
		s.AuditEvent(ctx, "attestation-ca", kind, e.EKID, data)
		return
	}
	src := sourceOf(ctx)
	if src != "" {
		data["source"] = src
	}
	if err := s.auditAggregated(ctx, refusalKey{kind: kind, source: src, device: e.EKID, reason: data["reason"]}, "attestation-ca", e.EKID, data); err != nil {
		s.log.Error("audit an attestation CA event", "kind", kind, "ek", e.EKID, "err", err)
	}
}

// sourceKey is the context key of the request's source (withSource).
type sourceKey struct{}

// withSource gives h's requests their source (requestSource) in their context, for
// subsystems that audit without the request (the attestation CA's events).
func withSource(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sourceKey{}, requestSource(r))))
	})
}

// sourceOf is the source withSource put in ctx ("" for none).
func sourceOf(ctx context.Context) string {
	s, _ := ctx.Value(sourceKey{}).(string)
	return s
}

// requestSource is the address a request came from (without the port).
func requestSource(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// maxRefusalText bounds, in bytes, the reason of a refusal as it is answered and
// recorded: a reason quotes what the request held (a certificate's parse error repeats
// the name that failed to parse), and a 6 MB name in an AK certificate made a 12 MB
// answer and a 25 MB audit record (found from outside, 1 Dec).
const maxRefusalText = 1024

// boundText cuts s to n bytes, on a rune boundary, marking the cut.
func boundText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "… (" + strconv.Itoa(len(s)) + " bytes)"
}
