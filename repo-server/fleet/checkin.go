package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// AppendFunc appends an audit record inside a store transaction (the server wires
// audit.Log.AppendTx). An error aborts the transaction: no record, no change.
type AppendFunc func(ctx context.Context, tx Tx, r AuditRecord) error

// Tx is a store transaction as an AppendFunc sees it: SQL in the store's dialect or
// with $n placeholders (both engines take those), run in the change's transaction.
// *sql.Tx satisfies it too.
type Tx = dbtx

// WithAudit returns a store on the same database whose changes append their audit
// records with f, each in the change's own transaction. A store without it discards
// them (tools, benchmarks, tests); the server always sets one.
func (s *Store) WithAudit(f AppendFunc) *Store {
	c := *s
	c.audit = f
	return &c
}

// DB is the store's database, for an audit log that shares its transactions.
func (s *Store) DB() *sql.DB { return s.db.DB }

// record appends recs in tx.
func (s *Store) record(ctx context.Context, tx *txn, recs ...AuditRecord) error {
	if s.audit == nil {
		return nil
	}
	for _, r := range recs {
		if err := s.audit(ctx, tx, r); err != nil {
			return fmt.Errorf("audit %s %s: %w", r.Kind, r.Subject, err)
		}
	}
	return nil
}

// dbtx is what reads and writes need: the database or a transaction.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Admitted check-in, as Store.Admit returns it.
type CheckInResult struct {
	Device   Device
	Decision policy.Decision
	Accepted int                  // reports stored, new or retried
	Refused  []wire.RefusedReport // reports refused as invalid, by ID
}

// Admit applies an authenticated check-in in one transaction: it reads the device's
// row and which of the request's report IDs are stored, calls the pure Admit, writes
// what it returns (device row, reports and their dedup marks, verdict) and its audit
// records, plans the rollouts again if reports arrived (policy.PlanStats, saving the
// states that changed with their events and audit records), then evaluates and records
// the decision. It commits whole or not at all: on any error, audit append included,
// nothing is changed and the device's retry (same report IDs) is counted once.
// a.Stored and a.Seen are filled in by Admit.
//
// A check-in of an enrolled device beyond a.Limit fails with *TooSoonError and changes
// nothing (checked after the nonce: a replay is refused as one).
//
// With a.Nonce set, the nonce is used up first in the same transaction (as
// ConsumeNonce): a check-in whose nonce was not issued to the device or was used
// before fails with ErrNonceUnknown, one whose nonce expired with ErrNonceExpired, and
// either changes nothing (the nonce of a check-in that did not commit is not used up).
func (s *Store) Admit(ctx context.Context, a Admission, cat policy.Catalog) (CheckInResult, error) {
	var res CheckInResult
	id := a.CheckIn.ID
	p := a.Policy
	if p == nil {
		p = &policy.Policy{}
	}
	// The check-in's statements run to the end once its turn comes, whatever the
	// caller's context does meanwhile (a caller gone before its turn is still not run:
	// committer.do). They are index searches and single-row writes (TestCheckInReadsAreBounded):
	// an interruptible statement gained nothing, and cost a watcher goroutine and
	// sqlite progress handler per statement in the drivers; and interrupting one
	// rolled back the batch's whole sqlite transaction, failing every other check-in
	// of the batch with it.
	uctx := context.WithoutCancel(ctx)
	err := s.tx(ctx, func(tx *txn) error {
		ctx := uctx
		stored, err := admitRead(ctx, tx, id)
		switch {
		case errors.Is(err, ErrNotFound):
			a.Stored = nil
		case err != nil:
			return err
		case stored.Decommissioned():
			// Before the nonce or anything else: a decommissioned device changes
			// nothing, and learns nothing but the refusal.
			return ErrDecommissioned
		default:
			a.Stored = &stored
		}
		if a.Nonce != nil {
			if err := s.useNonceTx(ctx, tx, id, a.Nonce, a.Now); err != nil {
				return err
			}
		}
		if a.Stored != nil {
			// After the nonce (a replay is refused as one, not charged to the device),
			// before the reads only an admitted check-in needs. Admit checks again.
			if _, err := a.Limit.pace(a.Stored.CheckInTAT, a.Now); err != nil {
				return err
			}
		}
		a.Seen = map[string]bool{}
		for _, r := range a.Reports {
			if r.ID == "" || a.Seen[r.ID] {
				continue
			}
			var one int
			err := tx.QueryRowContext(ctx, seenQuery, id, r.ID).Scan(&one)
			if err == nil {
				a.Seen[r.ID] = true
			} else if !errors.Is(err, sql.ErrNoRows) {
				return err
			}
		}
		if a.States, err = policyStates(ctx, tx, p); err != nil {
			return err
		}
		a.Offered = map[policy.Target]bool{}
		for _, ro := range p.Rollouts {
			t := ro.Target
			if _, done := a.Offered[t]; done {
				continue
			}
			var one int
			err := tx.QueryRowContext(ctx, offerQuery, id, string(t.Kind), t.Name, t.Version).Scan(&one)
			switch {
			case err == nil:
				a.Offered[t] = true
			case errors.Is(err, sql.ErrNoRows):
				a.Offered[t] = false
			default:
				return fmt.Errorf("offers: %w", err)
			}
		}
		out, err := Admit(a)
		if err != nil {
			return err
		}
		if err := putDevice(ctx, tx, out.Device, out.Enroll); err != nil {
			return err
		}
		for _, rid := range out.Seen {
			if _, err := tx.ExecContext(ctx, `INSERT INTO device_reports_seen (device_id, id, at) VALUES (?, ?, ?)`, id, rid, ns(a.Now)); err != nil {
				return fmt.Errorf("mark report %s: %w", rid, err)
			}
		}
		for _, r := range out.Reports {
			if err := insertReport(ctx, tx, r.Report, r.DeviceAt, r.Counted); err != nil {
				return err
			}
		}
		v := out.Verdict
		if _, err := tx.ExecContext(ctx, `INSERT INTO verdicts (device_id, verdict, detail, at) VALUES (?, ?, ?, ?)`, id, string(v.Verdict), v.Detail, ns(v.At)); err != nil {
			return fmt.Errorf("record verdict: %w", err)
		}
		if err := s.record(ctx, tx, out.Audit...); err != nil {
			return err
		}
		// The rollouts' states as read above, unless this check-in planned them again:
		// nothing else in this transaction writes them.
		states := a.States
		if out.Replan {
			touched := map[string]bool{}
			for _, r := range out.Reports {
				if r.Counted {
					touched[r.RolloutID] = true
				}
			}
			if _, err := s.planTx(ctx, tx, p, a.Now, touched); err != nil {
				return err
			}
			if states, err = policyStates(ctx, tx, p); err != nil {
				return err
			}
		}
		dec := policy.Evaluate(p, &out.Device.Device, states, a.Now, cat)
		if err := recordDecision(ctx, tx, dec); err != nil {
			return err
		}
		if err := recordOffers(ctx, tx, dec); err != nil {
			return err
		}
		res = CheckInResult{Device: out.Device, Decision: dec, Accepted: out.Accepted, Refused: out.Refused}
		return nil
	})
	if err != nil {
		return CheckInResult{}, fmt.Errorf("check-in %s: %w", id, err)
	}
	return res, nil
}

// admitQuery reads, in one statement, what Store.Admit needs of an enrolled device
// before the pure Admit: the columns of its row that a check-in keeps (Admission.Stored),
// one primary-key search.
const admitQuery = `SELECT id, labels, slots, verdict, quarantined, quarantine_reason, enrolled_at, decommissioned_at, checkin_tat
	FROM devices WHERE id = ?`

// admitRead reads device id's row as a check-in needs it (keptByCheckIn: the columns
// the check-in replaces are left zero); ErrNotFound if the device is not enrolled.
func admitRead(ctx context.Context, tx dbtx, id string) (Device, error) {
	var d Device
	var labels, slots, verdict string
	var enrolled, decommissioned, tat int64
	err := tx.QueryRowContext(ctx, admitQuery, id).Scan(&d.ID, &labels, &slots, &verdict, &d.Quarantined, &d.QuarantineReason, &enrolled, &decommissioned, &tat)
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %w", ErrNotFound)
	}
	if err != nil {
		return Device{}, err
	}
	d.Verdict, d.EnrolledAt, d.DecommissionedAt, d.CheckInTAT = policy.Verdict(verdict), fromNS(enrolled), fromNS(decommissioned), fromNS(tat)
	if err := json.Unmarshal([]byte(labels), &d.Labels); err != nil {
		return Device{}, fmt.Errorf("device %s: corrupt column labels: %w", d.ID, err)
	}
	if err := json.Unmarshal([]byte(slots), &d.Slots); err != nil {
		return Device{}, fmt.Errorf("device %s: corrupt column slots: %w", d.ID, err)
	}
	if d.Slots == nil {
		d.Slots = map[artifact.Kind]policy.Slot{}
	}
	return d, nil
}

// keptByCheckIn is d as admitRead reads it: what a check-in keeps of the stored row.
// The pure Admit reads nothing else of Admission.Stored (TestAdmitReadsOnlyWhatACheckInKeeps).
func keptByCheckIn(d Device) Device {
	return Device{Device: policy.Device{ID: d.ID, Labels: d.Labels, Slots: d.Slots, Verdict: d.Verdict, Quarantined: d.Quarantined},
		QuarantineReason: d.QuarantineReason, EnrolledAt: d.EnrolledAt, DecommissionedAt: d.DecommissionedAt, CheckInTAT: d.CheckInTAT}
}

// putDevice writes the row of d: the whole row, inserted, when enroll; else updated,
// every column but labels and enrolled_at, which only enrollment sets (a check-in keeps
// them: Admit never changes a stored device's labels, TestAdmitReadsOnlyWhatACheckInKeeps;
// operators change labels with SetLabels).
func putDevice(ctx context.Context, tx dbtx, d Device, enroll bool) error {
	attrs, err := encodeAttrs(d.Attrs)
	if err != nil {
		return err
	}
	lastErr, boot := "", ""
	if d.LastError != nil {
		lastErr = string(mustJSON(d.LastError))
	}
	if d.Boot != nil {
		boot = string(mustJSON(d.Boot))
	}
	if enroll {
		if d.Labels == nil {
			d.Labels = map[string]string{}
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO devices (id, labels, hardware, agent_version, slots, attrs, verdict, verdict_at, quarantined, quarantine_reason, enrolled_at, last_check_in, last_error, boot, checkin_tat)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, d.ID, mustJSON(d.Labels), d.Hardware, d.AgentVersion, mustJSON(d.Slots), attrs,
			string(d.Verdict), ns(d.VerdictAt), d.Quarantined, d.QuarantineReason, ns(d.EnrolledAt), ns(d.LastCheckIn), lastErr, boot, ns(d.CheckInTAT))
		if err != nil {
			return fmt.Errorf("enroll %s: %w", d.ID, err)
		}
		return nil
	}
	_, err = tx.ExecContext(ctx, `UPDATE devices SET hardware = ?, agent_version = ?, slots = ?, attrs = ?, verdict = ?, verdict_at = ?,
		quarantined = ?, quarantine_reason = ?, last_check_in = ?, last_error = ?, boot = ?, checkin_tat = ? WHERE id = ?`, d.Hardware, d.AgentVersion, mustJSON(d.Slots), attrs,
		string(d.Verdict), ns(d.VerdictAt), d.Quarantined, d.QuarantineReason, ns(d.LastCheckIn), lastErr, boot, ns(d.CheckInTAT), d.ID)
	if err != nil {
		return fmt.Errorf("update device %s: %w", d.ID, err)
	}
	return nil
}

// offerQuery: was the target ever offered to the device (one primary-key search).
const offerQuery = `SELECT 1 FROM offers WHERE device_id = ? AND kind = ? AND name = ? AND version = ?`

// recordOffers remembers the targets dec offers (install or download), so that the
// device's reports about them may count toward their rollout (Admission.Offered).
func recordOffers(ctx context.Context, tx dbtx, dec policy.Decision) error {
	for _, sd := range dec.Slots {
		if sd.Target == nil || sd.Rollout == "" || (sd.Action != policy.ActionInstall && sd.Action != policy.ActionDownload) {
			continue
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO offers (device_id, kind, name, version, at) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			dec.DeviceID, string(sd.Target.Kind), sd.Target.Name, sd.Target.Version, ns(dec.At))
		if err != nil {
			return fmt.Errorf("record offer %s to %s: %w", sd.Target, dec.DeviceID, err)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO rollout_offers (rollout_id, device_id, bucket, at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
			sd.Rollout, dec.DeviceID, policy.Bucket(sd.Rollout, dec.DeviceID), ns(dec.At))
		if err != nil {
			return fmt.Errorf("record rollout %s's offer to %s: %w", sd.Rollout, dec.DeviceID, err)
		}
	}
	return nil
}

// backfillOffers fills offers from the decisions stored before it existed.
func backfillOffers(ctx context.Context, tx *txn) error {
	rows, err := tx.QueryContext(ctx, `SELECT decision FROM decisions ORDER BY seq`)
	if err != nil {
		return err
	}
	var decs []policy.Decision
	for rows.Next() {
		var js string
		if err := rows.Scan(&js); err != nil {
			rows.Close()
			return err
		}
		var d policy.Decision
		if json.Unmarshal([]byte(js), &d) == nil {
			decs = append(decs, d)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, d := range decs {
		if err := recordOffers(ctx, tx, d); err != nil {
			return err
		}
	}
	return nil
}

// insertReport stores a report (at: the server's receipt time; deviceAt: the device's
// own, information only) and, if counted and a rollout's final report (not an
// infrastructure failure), makes it the device's latest for that rollout and target
// unless a later one is stored (rollout_latest, what the planner counts).
func insertReport(ctx context.Context, tx dbtx, r wire.Report, deviceAt time.Time, counted bool) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO reports (device_id, rollout_id, kind, name, version, outcome, cause, bytes, accuracy, p99_ms, peak_rss_mb, at, device_at, counted, delta, bytes_saved, delta_fallback) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.DeviceID, r.RolloutID, string(r.Kind), r.Name, r.Version, string(r.Outcome), r.Cause, r.Bytes, r.Accuracy, r.P99Ms, r.PeakRSSMB, ns(r.At), ns(deviceAt), counted, r.Delta, r.BytesSaved, r.DeltaFallback)
	if err != nil {
		return fmt.Errorf("store report: %w", err)
	}
	if !counted || r.RolloutID == "" || !r.Outcome.Final() {
		return nil // an infrastructure failure is retried: not a result for the wave
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO rollout_latest (rollout_id, name, version, device_id, bucket, failed, at) VALUES (?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (rollout_id, name, version, device_id) DO UPDATE SET failed = excluded.failed, at = excluded.at WHERE excluded.at >= rollout_latest.at`,
		r.RolloutID, r.Name, r.Version, r.DeviceID, policy.Bucket(r.RolloutID, r.DeviceID), r.Outcome.Failed(), ns(r.At))
	if err != nil {
		return fmt.Errorf("store latest report: %w", err)
	}
	return nil
}

// backfillRolloutLatest fills rollout_latest from the reports stored before it existed.
func backfillRolloutLatest(ctx context.Context, tx *txn) error {
	rows, err := tx.QueryContext(ctx, `SELECT device_id, rollout_id, name, version, outcome, at FROM reports WHERE rollout_id != '' ORDER BY at, seq`)
	if err != nil {
		return err
	}
	var reps []wire.Report
	for rows.Next() {
		var r wire.Report
		var at int64
		if err := rows.Scan(&r.DeviceID, &r.RolloutID, &r.Name, &r.Version, &r.Outcome, &at); err != nil {
			rows.Close()
			return err
		}
		r.At = fromNS(at)
		reps = append(reps, r)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, r := range reps {
		if !r.Outcome.Final() {
			continue
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO rollout_latest (rollout_id, name, version, device_id, bucket, failed, at) VALUES (?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (rollout_id, name, version, device_id) DO UPDATE SET failed = excluded.failed, at = excluded.at WHERE excluded.at >= rollout_latest.at`,
			r.RolloutID, r.Name, r.Version, r.DeviceID, policy.Bucket(r.RolloutID, r.DeviceID), r.Outcome.Failed(), ns(r.At))
		if err != nil {
			return err
		}
	}
	return nil
}

// The reads of a check-in besides the device row (deviceQuery) and the rollout states
// (rolloutQuery): each is one index search, whatever the size of the history
// (TestCheckInReadsAreBounded).
const seenQuery = `SELECT 1 FROM device_reports_seen WHERE device_id = ? AND id = ?`

// policyStates returns the stored states of p's rollouts, by ID, one primary-key search
// each (a rollout never planned is absent).
func policyStates(ctx context.Context, q dbtx, p *policy.Policy) (map[string]policy.RolloutState, error) {
	out := map[string]policy.RolloutState{}
	for _, r := range p.Rollouts {
		st, err := rolloutState(ctx, q, r.ID)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out[r.ID] = st
	}
	return out, nil
}

// waveCountsQuery counts one wave's devices by the outcome of their latest report for
// the rollout's target, through the rollout_latest_bucket index (a range of buckets).
const waveCountsQuery = `SELECT count(*), coalesce(sum(failed), 0) FROM rollout_latest
	WHERE rollout_id = ? AND name = ? AND version = ? AND bucket >= ? AND bucket < ? AND at >= ?`

// waveOffersQuery counts the devices one wave of a rollout offered its target to, through
// the rollout_offers_bucket index.
const waveOffersQuery = `SELECT count(*) FROM rollout_offers WHERE rollout_id = ? AND bucket >= ? AND bucket < ?`

// waveStats counts r's waves from the devices' latest reports at or after since, and
// the devices each wave offered r's target to: the store's WaveStats, reading index
// ranges per wave and never the reports.
func waveStats(ctx context.Context, q dbtx, r *policy.Rollout, since time.Time) ([]policy.WaveStat, error) {
	counts := make([]policy.Counts, len(r.Waves))
	for i := range r.Waves {
		lo, hi := r.WaveRange(i)
		var n, failed, offered int
		if err := q.QueryRowContext(ctx, waveCountsQuery, r.ID, r.Target.Name, r.Target.Version, lo, hi, ns(since)).Scan(&n, &failed); err != nil {
			return nil, fmt.Errorf("rollout %s wave %d: %w", r.ID, i, err)
		}
		if err := q.QueryRowContext(ctx, waveOffersQuery, r.ID, lo, hi).Scan(&offered); err != nil {
			return nil, fmt.Errorf("rollout %s wave %d offers: %w", r.ID, i, err)
		}
		counts[i] = policy.Counts{Succeeded: n - failed, Failed: failed, Offered: offered}
	}
	return policy.StatsOf(r, counts), nil
}

// WaveStats returns r's wave statistics from the devices' latest reports at or after
// since (policy.WaveStats without reading the reports).
func (s *Store) WaveStats(ctx context.Context, r *policy.Rollout, since time.Time) ([]policy.WaveStat, error) {
	return waveStats(ctx, s.db, r, since)
}

// planTx plans every rollout of p in tx and saves the states that changed with their
// events and audit records; it returns the events. Aborted rollouts are final; a
// completed one still offers its target to devices it selects, and is planned (judged
// on its waves' failures: policy.PlanStats) only when touched names it, that is when a
// report counted for it arrived: the periodic planner does not read the waves of every
// rollout ever completed.
func (s *Store) planTx(ctx context.Context, tx *txn, p *policy.Policy, now time.Time, touched map[string]bool) ([]policy.Event, error) {
	states, err := policyStates(ctx, tx, p)
	if err != nil {
		return nil, err
	}
	var all []policy.Event
	for _, r := range p.Rollouts {
		st := states[r.ID]
		if st.AppliesTo(r) && (st.Status == policy.StatusAborted || (st.Status == policy.StatusCompleted && !touched[r.ID])) {
			continue
		}
		stats, err := waveStats(ctx, tx, r, policy.StatsSince(r, st))
		if err != nil {
			return nil, err
		}
		next, evs := policy.PlanStats(r, st, stats, now)
		if len(evs) == 0 {
			continue
		}
		if err := s.saveRolloutTx(ctx, tx, next, evs, rolloutRecords(evs, "")...); err != nil {
			return nil, err
		}
		all = append(all, evs...)
	}
	return all, nil
}

// rolloutRecords are the audit records of rollout events: the operator's own events
// under actor, the planner's under "server".
func rolloutRecords(evs []policy.Event, actor string) []AuditRecord {
	var out []AuditRecord
	for _, e := range evs {
		who := "server"
		if actor != "" && e.Actor == actor {
			who = actor
		}
		out = append(out, AuditRecord{who, "rollout." + string(e.Type), e.Rollout, e})
	}
	return out
}

// RolloutAct is an operator action on a rollout (policy.Pause, Resume, Abort, Approve
// bound to its arguments).
type RolloutAct func(s policy.RolloutState) (policy.RolloutState, policy.Event, error)

// ActOnRollout applies an operator action to r's stored state in one transaction. A
// rollout the planner has not started yet (or whose target changed) is planned first,
// so the action applies to the state the planner would otherwise write over; the
// result is planned again, so an approved wave whose predecessor has soaked starts at
// once. The new state, its events and their audit records (the action's under actor)
// commit together. It returns the new state and the events.
func (s *Store) ActOnRollout(ctx context.Context, r *policy.Rollout, actor string, act RolloutAct, now time.Time) (policy.RolloutState, []policy.Event, error) {
	var next policy.RolloutState
	var evs []policy.Event
	err := s.tx(ctx, func(tx *txn) error {
		evs = nil // a retried transaction starts afresh
		st, err := rolloutState(ctx, tx, r.ID)
		if errors.Is(err, ErrNotFound) {
			st, err = policy.RolloutState{ID: r.ID}, nil
		}
		if err != nil {
			return err
		}
		if st.Started.IsZero() || !st.AppliesTo(r) {
			stats, err := waveStats(ctx, tx, r, policy.StatsSince(r, st))
			if err != nil {
				return err
			}
			st, evs = policy.PlanStats(r, st, stats, now)
		}
		acted, ev, err := act(st)
		if err != nil {
			return err
		}
		evs = append(evs, ev)
		stats, err := waveStats(ctx, tx, r, policy.StatsSince(r, acted))
		if err != nil {
			return err
		}
		var after []policy.Event
		next, after = policy.PlanStats(r, acted, stats, now)
		evs = append(evs, after...)
		return s.saveRolloutTx(ctx, tx, next, evs, rolloutRecords(evs, actor)...)
	})
	if err != nil {
		return policy.RolloutState{}, nil, fmt.Errorf("rollout %s: %w", r.ID, err)
	}
	return next, evs, nil
}
