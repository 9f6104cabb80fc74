package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// RolloutStates returns the stored state of every rollout, by ID, ready for
// policy.Evaluate. A rollout never planned is absent (Evaluate and Plan treat it as
// not started).
func (s *Store) RolloutStates(ctx context.Context) (map[string]policy.RolloutState, error) {
	return rolloutStates(ctx, s.db)
}

func rolloutStates(ctx context.Context, q dbtx) (map[string]policy.RolloutState, error) {
	rows, err := q.QueryContext(ctx, `SELECT state FROM rollouts`)
	if err != nil {
		return nil, fmt.Errorf("rollout states: %w", err)
	}
	defer rows.Close()
	out := map[string]policy.RolloutState{}
	for rows.Next() {
		var js string
		if err := rows.Scan(&js); err != nil {
			return nil, fmt.Errorf("rollout states: %w", err)
		}
		var st policy.RolloutState
		if err := json.Unmarshal([]byte(js), &st); err != nil {
			return nil, fmt.Errorf("rollout states: corrupt row: %w", err)
		}
		out[st.ID] = st
	}
	return out, rows.Err()
}

// RolloutState returns one rollout's state, or ErrNotFound if it was never saved.
func (s *Store) RolloutState(ctx context.Context, id string) (policy.RolloutState, error) {
	return rolloutState(ctx, s.db, id)
}

const rolloutQuery = `SELECT state FROM rollouts WHERE id = ?`

func rolloutState(ctx context.Context, q dbtx, id string) (policy.RolloutState, error) {
	var js string
	err := q.QueryRowContext(ctx, rolloutQuery, id).Scan(&js)
	if errors.Is(err, sql.ErrNoRows) {
		return policy.RolloutState{}, fmt.Errorf("rollout %s: %w", id, ErrNotFound)
	}
	if err != nil {
		return policy.RolloutState{}, fmt.Errorf("rollout %s: %w", id, err)
	}
	var st policy.RolloutState
	if err := json.Unmarshal([]byte(js), &st); err != nil {
		return policy.RolloutState{}, fmt.Errorf("rollout %s: corrupt row: %w", id, err)
	}
	return st, nil
}

// SaveRollout stores a rollout's new state and appends its events, atomically, with
// the audit records recs. Call it with what policy.Plan, Pause, Resume, Abort or
// Approve returned, before acting on it.
func (s *Store) SaveRollout(ctx context.Context, st policy.RolloutState, events []policy.Event, recs ...AuditRecord) error {
	return s.tx(ctx, func(tx *txn) error { return s.saveRolloutTx(ctx, tx, st, events, recs...) })
}

func (s *Store) saveRolloutTx(ctx context.Context, tx *txn, st policy.RolloutState, events []policy.Event, recs ...AuditRecord) error {
	if st.ID == "" {
		return fmt.Errorf("save rollout: %w", invalid("id", "missing"))
	}
	status := st.Status
	if status == "" {
		status = policy.StatusActive
	}
	err := func() error {
		_, err := tx.ExecContext(ctx, `INSERT INTO rollouts (id, status, state, updated_at) VALUES (?, ?, ?, ?)
			ON CONFLICT(id) DO UPDATE SET status = excluded.status, state = excluded.state, updated_at = excluded.updated_at`,
			st.ID, string(status), mustJSON(st), ns(st.Updated))
		if err != nil {
			return err
		}
		for _, e := range events {
			if e.Rollout != st.ID {
				return invalid("event", "event of rollout %q saved with rollout %q", e.Rollout, st.ID)
			}
			e.Reason = printable.Cut(e.Reason, MaxCause)
			_, err := tx.ExecContext(ctx, `INSERT INTO rollout_events (rollout_id, type, wave, reason, actor, at) VALUES (?, ?, ?, ?, ?, ?)`,
				e.Rollout, string(e.Type), e.Wave, e.Reason, e.Actor, ns(e.At))
			if err != nil {
				return err
			}
		}
		return s.record(ctx, tx, recs...)
	}()
	if err != nil {
		return fmt.Errorf("save rollout %s: %w", st.ID, err)
	}
	return nil
}

// RolloutEvents returns a rollout's events, oldest first, the last limit of them
// (zero: DefaultLimit, at most MaxListLimit).
func (s *Store) RolloutEvents(ctx context.Context, id string, limit int) ([]policy.Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT rollout_id, type, wave, reason, actor, at FROM
		(SELECT * FROM rollout_events WHERE rollout_id = ? ORDER BY seq DESC LIMIT ?) AS last ORDER BY seq`, id, ListOptions{Limit: limit}.limit())
	if err != nil {
		return nil, fmt.Errorf("rollout %s events: %w", id, err)
	}
	defer rows.Close()
	var out []policy.Event
	for rows.Next() {
		var e policy.Event
		var at int64
		if err := rows.Scan(&e.Rollout, &e.Type, &e.Wave, &e.Reason, &e.Actor, &at); err != nil {
			return nil, fmt.Errorf("rollout %s events: %w", id, err)
		}
		e.At = fromNS(at)
		out = append(out, e)
	}
	return out, rows.Err()
}

// AddReport stores an install result, with the audit records recs. A failed install
// marks the version Failed in the device's slot, so policy evaluation does not offer it
// again, unless the failure is not final (infrastructure: the device retries it); a
// committed one makes it the slot's version (the old one becoming Previous)
// and clears the mark. The device must exist. The report counts toward its rollout
// as given (r.At included), unless it is a failed way back (goingBack): it is for trusted callers (tools, benchmarks), not for a
// device's check-in, which goes through Admit.
func (s *Store) AddReport(ctx context.Context, r wire.Report, recs ...AuditRecord) error {
	if err := validateReport(&r); err != nil {
		return fmt.Errorf("add report: %w", err)
	}
	err := s.tx(ctx, func(tx *txn) error {
		d, err := getDevice(ctx, tx, r.DeviceID)
		if err != nil {
			return err
		}
		if err := insertReport(ctx, tx, r, r.At, !goingBack(d.Slots[r.Kind], r)); err != nil {
			return err
		}
		applyReport(&d, r)
		if _, err = tx.ExecContext(ctx, `UPDATE devices SET slots = ? WHERE id = ?`, mustJSON(d.Slots), r.DeviceID); err != nil {
			return err
		}
		return s.record(ctx, tx, recs...)
	})
	if err != nil {
		return fmt.Errorf("add report from %s: %w", r.DeviceID, err)
	}
	return nil
}

func validateReport(r *wire.Report) error {
	if err := validID(r.DeviceID); err != nil {
		return err
	}
	if r.Kind != artifact.KindModel && r.Kind != artifact.KindRuntime {
		return invalid("kind", "%q: want model or runtime", r.Kind)
	}
	if err := validShort("name", r.Name); err != nil || r.Name == "" {
		return invalid("name", "%q: want 1-%d printable characters", truncate(r.Name), maxShortString)
	}
	if _, err := artifact.ParseVersion(r.Version); err != nil {
		return invalid("version", "%v", err)
	}
	if _, err := wire.ParseOutcome(string(r.Outcome)); err != nil {
		return invalid("outcome", "%v", err)
	}
	if err := validShort("rollout", r.RolloutID); err != nil {
		return err
	}
	// The ID goes into the audit record and the deduplication marks: a device sent
	// 6 MiB IDs, 6 MB of audit log per check-in, and slowed every other device's
	// check-ins 50-fold (found from outside, 2 Dec).
	if err := validShort("id", r.ID); err != nil {
		return err
	}
	if r.At.IsZero() {
		return invalid("at", "report time missing")
	}
	if r.Bytes < 0 {
		return invalid("bytes", "negative")
	}
	if len(r.Delta) > 32 {
		return invalid("delta", "method name longer than 32 bytes")
	}
	if !(r.Accuracy >= 0 && r.Accuracy <= 1) {
		return invalid("accuracy", "%v: want a value in [0, 1]", r.Accuracy)
	}
	if !(r.P99Ms >= 0 && r.P99Ms < 1e9) {
		return invalid("p99_ms", "%v: want a non-negative number", r.P99Ms)
	}
	if !(r.PeakRSSMB >= 0 && r.PeakRSSMB < 1e9) {
		return invalid("peak_rss_mb", "%v: want a non-negative number", r.PeakRSSMB)
	}
	// Cut on a character: within one, the text is invalid UTF-8, which PostgreSQL
	// refuses (the check-in failed, and the device's retried report held back every
	// report after it).
	r.Cause, r.DeltaFallback = printable.Cut(r.Cause, MaxCause), printable.Cut(r.DeltaFallback, MaxCause)
	return nil
}

// ReportFilter selects reports: of one rollout (or all, if empty), of one device (or
// all), at or after Since, at most Limit (zero: no limit — a rollout's planner needs
// them all; the table holds one row per install attempt).
type ReportFilter struct {
	RolloutID string
	DeviceID  string
	Since     time.Time
	Limit     int
	// CountedOnly keeps the reports the rollout planner counted (Admit's Counted: from
	// a trusted, unquarantined member that was offered the target, and for a committed
	// report one whose check-in's slot shows the version: Admission.shows), leaving out those
	// stored for information only.
	CountedOnly bool
}

// Reports returns the matching reports, oldest first.
func (s *Store) Reports(ctx context.Context, f ReportFilter) ([]wire.Report, error) {
	q := `SELECT device_id, rollout_id, kind, name, version, outcome, cause, bytes, accuracy, p99_ms, peak_rss_mb, at, delta, bytes_saved, delta_fallback FROM reports WHERE at >= ?`
	args := []any{ns(f.Since)}
	if f.RolloutID != "" {
		q += ` AND rollout_id = ?`
		args = append(args, f.RolloutID)
	}
	if f.DeviceID != "" {
		q += ` AND device_id = ?`
		args = append(args, f.DeviceID)
	}
	if f.CountedOnly {
		q += ` AND counted = ?`
		args = append(args, true)
	}
	q += ` ORDER BY at, seq`
	if f.Limit > 0 {
		q += ` LIMIT ?`
		args = append(args, f.Limit)
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reports: %w", err)
	}
	defer rows.Close()
	var out []wire.Report
	for rows.Next() {
		var r wire.Report
		var at int64
		if err := rows.Scan(&r.DeviceID, &r.RolloutID, &r.Kind, &r.Name, &r.Version, &r.Outcome, &r.Cause, &r.Bytes, &r.Accuracy, &r.P99Ms, &r.PeakRSSMB, &at, &r.Delta, &r.BytesSaved, &r.DeltaFallback); err != nil {
			return nil, fmt.Errorf("reports: %w", err)
		}
		r.At = fromNS(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

// RecordDecision stores the decision made at a check-in. The device must exist.
func (s *Store) RecordDecision(ctx context.Context, d policy.Decision) error {
	return recordDecision(ctx, s.db, d)
}

func recordDecision(ctx context.Context, q dbtx, d policy.Decision) error {
	if err := validID(d.DeviceID); err != nil {
		return fmt.Errorf("record decision: %w", err)
	}
	_, err := q.ExecContext(ctx, `INSERT INTO decisions (device_id, at, policy_digest, decision) VALUES (?, ?, ?, ?)`,
		d.DeviceID, ns(d.At), d.PolicyDigest, mustJSON(d))
	if err != nil {
		if isForeignKey(err) {
			return fmt.Errorf("record decision for %s: device %w", d.DeviceID, ErrNotFound)
		}
		return fmt.Errorf("record decision for %s: %w", d.DeviceID, err)
	}
	return nil
}

// Decisions returns a device's last decisions, newest first (limit: zero means
// DefaultLimit, at most MaxListLimit).
func (s *Store) Decisions(ctx context.Context, deviceID string, limit int) ([]policy.Decision, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT decision FROM decisions WHERE device_id = ? ORDER BY seq DESC LIMIT ?`, deviceID, ListOptions{Limit: limit}.limit())
	if err != nil {
		return nil, fmt.Errorf("decisions of %s: %w", deviceID, err)
	}
	defer rows.Close()
	var out []policy.Decision
	for rows.Next() {
		var js string
		if err := rows.Scan(&js); err != nil {
			return nil, fmt.Errorf("decisions of %s: %w", deviceID, err)
		}
		var d policy.Decision
		if err := json.Unmarshal([]byte(js), &d); err != nil {
			return nil, fmt.Errorf("decisions of %s: corrupt row: %w", deviceID, err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// VerdictRecord is one attestation verdict.
type VerdictRecord struct {
	DeviceID string
	Verdict  policy.Verdict
	Detail   string
	At       time.Time
}

// DeviceVerdicts returns device id's verdicts made at or after since, newest first, at
// most limit (through the verdicts_device index: the cost follows what is returned,
// not the fleet's history).
func (s *Store) DeviceVerdicts(ctx context.Context, id string, since time.Time, limit int) ([]VerdictRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT device_id, verdict, detail, at FROM verdicts WHERE device_id = ? AND at >= ? ORDER BY at DESC, seq DESC LIMIT ?`, id, ns(since), limit)
	if err != nil {
		return nil, fmt.Errorf("verdicts of %s: %w", id, err)
	}
	defer rows.Close()
	var out []VerdictRecord
	for rows.Next() {
		var v VerdictRecord
		var at int64
		if err := rows.Scan(&v.DeviceID, &v.Verdict, &v.Detail, &at); err != nil {
			return nil, fmt.Errorf("verdicts of %s: %w", id, err)
		}
		v.At = fromNS(at)
		out = append(out, v)
	}
	return out, rows.Err()
}

// VerdictCounts counts the verdicts made at or after since, by verdict (one aggregate
// query: the fleet's verdicts are one per check-in).
func (s *Store) VerdictCounts(ctx context.Context, since time.Time) (map[policy.Verdict]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT verdict, count(*) FROM verdicts WHERE at >= ? GROUP BY verdict`, ns(since))
	if err != nil {
		return nil, fmt.Errorf("verdict counts: %w", err)
	}
	defer rows.Close()
	out := map[policy.Verdict]int{}
	for rows.Next() {
		var v policy.Verdict
		var n int
		if err := rows.Scan(&v, &n); err != nil {
			return nil, fmt.Errorf("verdict counts: %w", err)
		}
		out[v] = n
	}
	return out, rows.Err()
}

// Verdicts returns the verdicts made at or after since, oldest first. Every row of the
// period is read: for a device's own, DeviceVerdicts; for counts, VerdictCounts.
func (s *Store) Verdicts(ctx context.Context, since time.Time) ([]VerdictRecord, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT device_id, verdict, detail, at FROM verdicts WHERE at >= ? ORDER BY at, seq`, ns(since))
	if err != nil {
		return nil, fmt.Errorf("verdicts: %w", err)
	}
	defer rows.Close()
	var out []VerdictRecord
	for rows.Next() {
		var v VerdictRecord
		var at int64
		if err := rows.Scan(&v.DeviceID, &v.Verdict, &v.Detail, &at); err != nil {
			return nil, fmt.Errorf("verdicts: %w", err)
		}
		v.At = fromNS(at)
		out = append(out, v)
	}
	return out, rows.Err()
}
