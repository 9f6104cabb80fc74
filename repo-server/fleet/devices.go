package fleet

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/artifact"
	"github.com/edgeward/edgeward/internal/printable"
	"github.com/edgeward/edgeward/internal/reference"
	"github.com/edgeward/edgeward/internal/wire"
	"github.com/edgeward/edgeward/policy"
)

// Bounds on what a device or an operator can make the store keep.
const (
	MaxLabels      = 64
	MaxLabelKey    = 63
	MaxLabelValue  = 256
	MaxAttrsBytes  = 16 << 10
	MaxCause       = 1024
	MaxListLimit   = 1000
	DefaultLimit   = 100
	maxShortString = 128
)

var (
	labelKeyRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9._/-]{0,62})$`)
	printRE    = regexp.MustCompile(`^[[:print:]]*$`)
)

// Device is a device as the store knows it: the facts policy evaluation needs, plus
// bookkeeping.
type Device struct {
	policy.Device
	QuarantineReason string
	EnrolledAt       time.Time
	LastCheckIn      time.Time
	// LastError is the agent's last update error as of its last check-in (nil: none).
	LastError *wire.UpdateError
	// Boot is what the device's boot event log proved at its last check-in (Secure
	// Boot, boot loaders and kernel, PCRs 0–7); nil: it sent none, or it did not verify.
	Boot *reference.BootState
	// DecommissionedAt is when an operator took the device out of service for good
	// (Store.Decommission; zero: in service): its check-ins are refused from then on.
	DecommissionedAt   time.Time
	DecommissionReason string
	// CheckInTAT is the state of the device's check-in rate bound (CheckInLimit): the
	// time its bucket of check-ins would be full again, as of its last admitted
	// check-in (zero: never bounded). Only Store.Admit reads and writes it.
	CheckInTAT time.Time
}

// ErrDecommissioned refuses a check-in from a decommissioned device (Store.Admit), and a
// second Store.Decommission of one.
var ErrDecommissioned = errors.New("device decommissioned")

// Decommissioned reports whether the device was taken out of service.
func (d *Device) Decommissioned() bool { return !d.DecommissionedAt.IsZero() }

// CheckIn is what a device reports about itself at a check-in.
type CheckIn struct {
	ID           string
	Hardware     string
	AgentVersion string
	// Slots are the committed versions per kind, as the agent reports them. The store
	// keeps Failed (from reports) and sets Previous when Version changes.
	Slots map[artifact.Kind]policy.Slot
	Attrs map[string]any
	// LastError is the agent's last update error (nil: its last round succeeded).
	LastError *wire.UpdateError
	At        time.Time
}

func validID(id string) error {
	if !IsDeviceID(id) {
		return invalid("device id", "%q: want 1-128 letters, digits, '.', ':', '+', '/', '=' or '-', beginning with a letter or digit", truncate(id))
	}
	return nil
}

// IsDeviceID reports whether id is 1-128 ASCII letters, digits, '.', ':', '+', '/',
// '=' or '-', beginning with a letter or digit (EK-derived IDs are
// urn:ek:sha256:<base64>): the regular expression
// ^[A-Za-z0-9][A-Za-z0-9._:+/=-]{0,127}$ written out, since every check-in validates
// its device's ID several times (TestIsDeviceIDIsTheRegexp).
func IsDeviceID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		switch c := id[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case i > 0 && strings.IndexByte("._:+/=-", c) >= 0:
		default:
			return false
		}
	}
	return true
}

func truncate(s string) string {
	if len(s) > 64 {
		return printable.Cut(s, 64) + "…"
	}
	return s
}

func validShort(field, s string) error {
	if len(s) > maxShortString || !printRE.MatchString(s) {
		return invalid(field, "%q: want at most %d printable characters", truncate(s), maxShortString)
	}
	return nil
}

func validVersion(field, s string) error {
	if s == "" {
		return nil
	}
	if _, err := artifact.ParseVersion(s); err != nil {
		return invalid(field, "%v", err)
	}
	return nil
}

// ValidLabels checks operator- or enrollment-supplied labels.
func ValidLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return invalid("labels", "%d labels: at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if !labelKeyRE.MatchString(k) {
			return invalid("labels", "key %q: want lower-case letters, digits, '.', '_', '/' or '-', at most %d", truncate(k), MaxLabelKey)
		}
		if len(v) > MaxLabelValue || !printRE.MatchString(v) {
			return invalid("labels", "value of %s: want at most %d printable characters", k, MaxLabelValue)
		}
	}
	return nil
}

func (c *CheckIn) validate() error {
	if err := validID(c.ID); err != nil {
		return err
	}
	if err := validShort("hardware", c.Hardware); err != nil {
		return err
	}
	if err := validVersion("agent version", c.AgentVersion); err != nil {
		return err
	}
	if e := c.LastError; e != nil {
		if err := validShort("last error kind", string(e.Kind)); err != nil || e.Kind == "" {
			return invalid("last error kind", "%q", truncate(string(e.Kind)))
		}
		if len(e.Message) > MaxCause {
			return invalid("last error message", "at most %d bytes", MaxCause)
		}
	}
	for k, sl := range c.Slots {
		if k != artifact.KindModel && k != artifact.KindRuntime {
			return invalid("slots", "kind %q: want model or runtime", k)
		}
		if err := validShort("slot name", sl.Name); err != nil {
			return err
		}
		if err := validVersion("slot version", sl.Version); err != nil {
			return err
		}
		if err := validVersion("slot previous version", sl.Previous); err != nil {
			return err
		}
	}
	if c.At.IsZero() {
		return invalid("at", "check-in time missing")
	}
	return nil
}

func encodeAttrs(attrs map[string]any) (string, error) {
	if attrs == nil {
		return "{}", nil
	}
	b, err := json.Marshal(attrs)
	if err != nil {
		return "", invalid("attrs", "%v", err)
	}
	if len(b) > MaxAttrsBytes {
		return "", invalid("attrs", "%d bytes encoded: at most %d", len(b), MaxAttrsBytes)
	}
	return string(b), nil
}

// Enroll adds a device with its labels; it fails with ErrExists if the ID is known.
func (s *Store) Enroll(ctx context.Context, id string, labels map[string]string, at time.Time) error {
	if err := validID(id); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := ValidLabels(labels); err != nil {
		return fmt.Errorf("enroll %s: %w", id, err)
	}
	if labels == nil {
		labels = map[string]string{}
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO devices (id, labels, enrolled_at) VALUES (?, ?, ?)
		ON CONFLICT(id) DO NOTHING`, id, mustJSON(labels), ns(at))
	if err != nil {
		return fmt.Errorf("enroll %s: %w", id, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("enroll %s: device %w", id, ErrExists)
	}
	return nil
}

// CheckIn records a device's reported facts and returns the device as policy
// evaluation should see it. The device must be enrolled (ErrNotFound otherwise).
// When a slot's version changed, the old one becomes its Previous; a slot's Failed
// mark (set by reports) is kept until a commit report, ClearFailed, or the device
// running that very version clears it.
func (s *Store) CheckIn(ctx context.Context, c CheckIn) (Device, error) {
	if err := c.validate(); err != nil {
		return Device{}, fmt.Errorf("check-in: %w", err)
	}
	attrs, err := encodeAttrs(c.Attrs)
	if err != nil {
		return Device{}, fmt.Errorf("check-in %s: %w", c.ID, err)
	}
	var d Device
	err = s.tx(ctx, func(tx *txn) error {
		old, err := getDevice(ctx, tx, c.ID)
		if err != nil {
			return err
		}
		slots := mergeFacts(old, c).Slots
		lastErr := ""
		if c.LastError != nil {
			lastErr = mustJSON(c.LastError)
		}
		_, err = tx.ExecContext(ctx, `UPDATE devices SET hardware = ?, agent_version = ?, slots = ?, attrs = ?, last_check_in = ?, last_error = ? WHERE id = ?`,
			c.Hardware, c.AgentVersion, mustJSON(slots), attrs, ns(c.At), lastErr, c.ID)
		if err != nil {
			return err
		}
		d, err = getDevice(ctx, tx, c.ID)
		return err
	})
	if err != nil {
		return Device{}, fmt.Errorf("check-in %s: %w", c.ID, err)
	}
	return d, nil
}

// SetLabels replaces a device's labels (operator action).
func (s *Store) SetLabels(ctx context.Context, id string, labels map[string]string, recs ...AuditRecord) error {
	if err := ValidLabels(labels); err != nil {
		return fmt.Errorf("set labels of %s: %w", id, err)
	}
	if labels == nil {
		labels = map[string]string{}
	}
	return s.update(ctx, "set labels", id, recs, `UPDATE devices SET labels = ? WHERE id = ?`, mustJSON(labels), id)
}

// SetQuarantine quarantines a device (no new versions) or releases it.
func (s *Store) SetQuarantine(ctx context.Context, id string, quarantined bool, reason string, recs ...AuditRecord) error {
	if len(reason) > MaxCause {
		return fmt.Errorf("quarantine %s: %w", id, invalid("reason", "at most %d bytes", MaxCause))
	}
	if !quarantined {
		reason = ""
	}
	return s.update(ctx, "quarantine", id, recs, `UPDATE devices SET quarantined = ?, quarantine_reason = ? WHERE id = ?`, quarantined, reason, id)
}

// Decommission takes a device out of service for good, at at: from then on its
// check-ins are refused with ErrDecommissioned before anything is written, so it gets no
// new version and no content key (a nonce issued to it is no way back in). Its row and
// history stay (its ID derives from its TPM, so deleting the row would let its next
// check-in enroll it again); rollout status no longer counts it. There is no way back:
// a device decommissioned by mistake needs a new TPM identity. ErrNotFound for an
// unknown device, ErrDecommissioned (nothing changed) for one already decommissioned.
// recs are appended to the audit log in the same transaction.
func (s *Store) Decommission(ctx context.Context, id, reason string, at time.Time, recs ...AuditRecord) error {
	if len(reason) > MaxCause {
		return fmt.Errorf("decommission %s: %w", id, invalid("reason", "at most %d bytes", MaxCause))
	}
	if at.IsZero() {
		return fmt.Errorf("decommission %s: %w", id, invalid("time", "zero"))
	}
	err := s.tx(ctx, func(tx *txn) error {
		var since int64
		if err := tx.QueryRowContext(ctx, `SELECT decommissioned_at FROM devices WHERE id = ?`, id).Scan(&since); errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("device %w", ErrNotFound)
		} else if err != nil {
			return err
		}
		if since != 0 {
			return fmt.Errorf("%w at %s", ErrDecommissioned, fromNS(since).UTC().Format(time.RFC3339))
		}
		if _, err := tx.ExecContext(ctx, `UPDATE devices SET decommissioned_at = ?, decommission_reason = ? WHERE id = ?`, ns(at), reason, id); err != nil {
			return err
		}
		return s.record(ctx, tx, recs...)
	})
	if err != nil {
		return fmt.Errorf("decommission %s: %w", id, err)
	}
	return nil
}

// ClearFailed forgets that an install of the given slot kind failed on a device, so
// that the device is offered that version again (operator action).
func (s *Store) ClearFailed(ctx context.Context, id string, kind artifact.Kind, recs ...AuditRecord) error {
	return s.tx(ctx, func(tx *txn) error {
		d, err := getDevice(ctx, tx, id)
		if err != nil {
			return fmt.Errorf("clear failed %s: %w", id, err)
		}
		sl := d.Slots[kind]
		if sl.Failed != "" {
			// The agent remembers refusing it too: the decision says it was cleared.
			sl.Retry = sl.Failed
		}
		sl.Failed = ""
		d.Slots[kind] = sl
		if _, err = tx.ExecContext(ctx, `UPDATE devices SET slots = ? WHERE id = ?`, mustJSON(d.Slots), id); err != nil {
			return fmt.Errorf("clear failed %s: %w", id, err)
		}
		return s.record(ctx, tx, recs...)
	})
}

// RecordVerdict records an attestation verdict for a device (kept as history for the
// attestation pass rate) and makes it the device's current one.
func (s *Store) RecordVerdict(ctx context.Context, id string, v policy.Verdict, detail string, at time.Time) error {
	if err := validShort("verdict", string(v)); err != nil || v == "" {
		return fmt.Errorf("record verdict for %s: %w", id, invalid("verdict", "%q", v))
	}
	detail = printable.Cut(detail, MaxCause)
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `UPDATE devices SET verdict = ?, verdict_at = ? WHERE id = ?`, string(v), ns(at), id)
		if err != nil {
			return fmt.Errorf("record verdict for %s: %w", id, err)
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("record verdict for %s: device %w", id, ErrNotFound)
		}
		_, err = tx.ExecContext(ctx, `INSERT INTO verdicts (device_id, verdict, detail, at) VALUES (?, ?, ?, ?)`, id, string(v), detail, ns(at))
		return err
	})
}

// update runs query (which must change one row of id) and appends recs, in one
// transaction; ErrNotFound when no row changed.
func (s *Store) update(ctx context.Context, what, id string, recs []AuditRecord, query string, args ...any) error {
	err := s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, query, args...)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return ErrNotFound
		}
		return s.record(ctx, tx, recs...)
	})
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, id, err)
	}
	return nil
}

// Device returns one device, or ErrNotFound.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	d, err := getDevice(ctx, s.db, id)
	if err != nil {
		return Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return d, nil
}

// ListOptions pages through a listing: items after After (by ID), at most Limit
// (zero means DefaultLimit, at most MaxListLimit).
type ListOptions struct {
	After string
	Limit int
}

func (o ListOptions) limit() int {
	switch {
	case o.Limit <= 0:
		return DefaultLimit
	case o.Limit > MaxListLimit:
		return MaxListLimit
	}
	return o.Limit
}

// Devices lists devices in ID order.
func (s *Store) Devices(ctx context.Context, o ListOptions) ([]Device, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+deviceCols+` FROM devices WHERE id > ? ORDER BY id LIMIT ?`, o.After, o.limit())
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	defer rows.Close()
	var out []Device
	for rows.Next() {
		d, err := scanDevice(rows)
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
		out = append(out, d)
	}
	return out, rows.Err()
}

// CountDevices returns the number of enrolled devices.
func (s *Store) CountDevices(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM devices`).Scan(&n)
	return n, err
}

const deviceCols = `id, labels, hardware, agent_version, slots, attrs, verdict, verdict_at, quarantined, quarantine_reason, enrolled_at, last_check_in, last_error, boot, decommissioned_at, decommission_reason`

type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type scanner interface{ Scan(dest ...any) error }

const deviceQuery = `SELECT ` + deviceCols + ` FROM devices WHERE id = ?`

func getDevice(ctx context.Context, q querier, id string) (Device, error) {
	d, err := scanDevice(q.QueryRowContext(ctx, deviceQuery, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, fmt.Errorf("device %w", ErrNotFound)
	}
	return d, err
}

func scanDevice(sc scanner) (Device, error) {
	var d Device
	var labels, slots, attrs, verdict, lastErr, boot string
	var verdictAt, enrolled, last, decommissioned int64
	err := sc.Scan(&d.ID, &labels, &d.Hardware, &d.AgentVersion, &slots, &attrs, &verdict, &verdictAt, &d.Quarantined, &d.QuarantineReason, &enrolled, &last, &lastErr, &boot,
		&decommissioned, &d.DecommissionReason)
	if err != nil {
		return Device{}, err
	}
	if boot != "" {
		d.Boot = new(reference.BootState)
		if err := json.Unmarshal([]byte(boot), d.Boot); err != nil {
			return Device{}, fmt.Errorf("device %s: corrupt column boot: %w", d.ID, err)
		}
	}
	if lastErr != "" {
		d.LastError = new(wire.UpdateError)
		if err := json.Unmarshal([]byte(lastErr), d.LastError); err != nil {
			return Device{}, fmt.Errorf("device %s: corrupt column last_error: %w", d.ID, err)
		}
	}
	d.Verdict, d.VerdictAt, d.EnrolledAt, d.LastCheckIn = policy.Verdict(verdict), fromNS(verdictAt), fromNS(enrolled), fromNS(last)
	d.DecommissionedAt = fromNS(decommissioned)
	for _, f := range []struct {
		s   string
		dst any
	}{{labels, &d.Labels}, {slots, &d.Slots}, {attrs, &d.Attrs}} {
		if err := json.Unmarshal([]byte(f.s), f.dst); err != nil {
			return Device{}, fmt.Errorf("device %s: corrupt column: %w", d.ID, err)
		}
	}
	if d.Slots == nil {
		d.Slots = map[artifact.Kind]policy.Slot{}
	}
	return d, nil
}
