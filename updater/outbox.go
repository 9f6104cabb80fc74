package updater

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/edgeward/edgeward/internal/durable"
	"github.com/edgeward/edgeward/internal/printable"
)

// Outbox stores reports until the server acknowledges them (store-and-forward): a report
// is durable before anyone tries to send it, each carries an ID the server uses to ignore
// duplicates, and one the server did not acknowledge is retried with backoff. It is safe
// for concurrent use.
type Outbox struct {
	db *sql.DB
	// Logger gets a warning for each report the server refused; nil means slog.Default().
	Logger *slog.Logger
}

// Message is one stored report.
type Message struct {
	ID       string          `json:"id"`
	Kind     string          `json:"kind"` // e.g. "install", "attestation"
	Body     json.RawMessage `json:"body"`
	Created  time.Time       `json:"created"`
	Attempts int             `json:"-"`
}

// Sender delivers messages; it returns the IDs the server acknowledged (stored or seen
// before). Messages it does not acknowledge stay in the outbox, except those a
// *RefusedError in err names: Flush sets them aside (DeadLetters).
type Sender interface {
	Send(ctx context.Context, msgs []Message) (acked []string, err error)
}

// RefusedError is a Sender's error for reports the server refused for good, as invalid:
// sending them again as they are cannot help. Either the server named them (Reasons, by
// message ID), or it refused a whole request carrying them without saying which is at
// fault (Whole, with Reasons naming every message of the request); the Sender says
// Whole only when the same request without its reports succeeds. Flush then sends them
// one by one, so that only the poison one is set aside.
type RefusedError struct {
	Reasons map[string]string
	Whole   bool
}

func (e *RefusedError) Error() string {
	ids := slices.Sorted(maps.Keys(e.Reasons))
	if len(ids) == 0 {
		return "the server refused no report"
	}
	what := "refused"
	if e.Whole {
		what = "refused the request carrying"
	}
	return fmt.Sprintf("the server %s %d report(s) (%s): %s", what, len(ids), strings.Join(ids, ", "), e.Reasons[ids[0]])
}

// MaxDeadLetters bounds the refused reports kept; the oldest go first.
const MaxDeadLetters = 1000

// MaxMessageBytes bounds one report's body.
const MaxMessageBytes = 64 << 10

// OpenOutbox opens (creating if needed) the outbox database at path (sqlite, WAL,
// synchronous=FULL).
func OpenOutbox(ctx context.Context, path string) (*Outbox, error) {
	db, err := durable.OpenSQLite(ctx, path, durable.SQLite{MaxOpenConns: 1, KeepLog: true})
	if err != nil {
		return nil, fmt.Errorf("open outbox: %w", err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS outbox (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL, created TEXT NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, next_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkins (id INTEGER PRIMARY KEY CHECK (id = 1), at TEXT NOT NULL, result TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS queued (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS dead (
  id TEXT PRIMARY KEY, kind TEXT NOT NULL, body TEXT NOT NULL, created TEXT NOT NULL,
  attempts INTEGER NOT NULL, refused_at TEXT NOT NULL, reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS refused (kind TEXT PRIMARY KEY, target TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retried (kind TEXT PRIMARY KEY, target TEXT NOT NULL)`); err != nil {
		db.Close()
		return nil, fmt.Errorf("open outbox %s: %w", path, err)
	}
	return &Outbox{db: db}, nil
}

// Close closes the database.
func (o *Outbox) Close() error { return o.db.Close() }

// Refused returns the target path the agent refused per slot kind (a version whose
// trial failed, or whose install failed for a cause of its own), so that a restarted
// agent does not try it again while it is still the one desired.
func (o *Outbox) Refused(ctx context.Context) (map[string]string, error) {
	return o.perKind(ctx, "refused")
}

// SetRefused records target as kind's refused target; "" forgets kind's.
func (o *Outbox) SetRefused(ctx context.Context, kind, target string) error {
	return o.setPerKind(ctx, "refused", kind, target)
}

// Retried returns the target the agent installed once more per slot kind because the
// server said an operator cleared its failure (wire.ReasonRetry), while the server still
// says so: a restarted agent does not install it yet again after a second failure the
// server has not heard of.
func (o *Outbox) Retried(ctx context.Context) (map[string]string, error) {
	return o.perKind(ctx, "retried")
}

// SetRetried records target as kind's retried target; "" forgets kind's.
func (o *Outbox) SetRetried(ctx context.Context, kind, target string) error {
	return o.setPerKind(ctx, "retried", kind, target)
}

// perKind reads table, one of the kind → target tables.
func (o *Outbox) perKind(ctx context.Context, table string) (map[string]string, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT kind, target FROM `+table)
	if err != nil {
		return nil, fmt.Errorf("%s targets: %w", table, err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var kind, target string
		if err := rows.Scan(&kind, &target); err != nil {
			return nil, fmt.Errorf("%s targets: %w", table, err)
		}
		out[kind] = target
	}
	return out, rows.Err()
}

// setPerKind sets kind's target in table, one of the kind → target tables; "" forgets it.
func (o *Outbox) setPerKind(ctx context.Context, table, kind, target string) error {
	var err error
	if target == "" {
		_, err = o.db.ExecContext(ctx, `DELETE FROM `+table+` WHERE kind = ?`, kind)
	} else {
		_, err = o.db.ExecContext(ctx, `INSERT INTO `+table+` (kind, target) VALUES (?, ?) ON CONFLICT (kind) DO UPDATE SET target = excluded.target`, kind, target)
	}
	if err != nil {
		return fmt.Errorf("%s target of %s: %w", table, kind, err)
	}
	return nil
}

// Put stores a report and returns its ID. It is durable when Put returns.
func (o *Outbox) Put(ctx context.Context, kind string, body any, now time.Time) (string, error) {
	b, err := encodeReport(kind, body)
	if err != nil {
		return "", err
	}
	ids, err := newReportID()
	if err != nil {
		return "", err
	}
	ts := now.UTC().Format(sortableTime)
	if _, err := o.db.ExecContext(ctx, `INSERT INTO outbox (id, kind, body, created, next_at) VALUES (?, ?, ?, ?, ?)`,
		ids, kind, string(b), ts, ts); err != nil {
		return "", fmt.Errorf("outbox: store %s report: %w", kind, err)
	}
	return ids, nil
}

// PutOnce stores a report under a caller-chosen ID unless a report with that ID was
// ever stored (even if it has been acknowledged and removed since): a report whose ID
// derives from what it reports can be put again after a crash without being sent twice.
// It says whether it stored the report.
func (o *Outbox) PutOnce(ctx context.Context, id, kind string, body any, now time.Time) (bool, error) {
	b, err := encodeReport(kind, body)
	if err != nil {
		return false, err
	}
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("outbox: %w", err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO queued (id) VALUES (?)`, id)
	if err != nil {
		return false, fmt.Errorf("outbox: store %s report: %w", kind, err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return false, nil
	}
	ts := now.UTC().Format(sortableTime)
	if _, err := tx.ExecContext(ctx, `INSERT INTO outbox (id, kind, body, created, next_at) VALUES (?, ?, ?, ?, ?)`,
		id, kind, string(b), ts, ts); err != nil {
		return false, fmt.Errorf("outbox: store %s report: %w", kind, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("outbox: %w", err)
	}
	return true, nil
}

// encodeReport is body as a stored report's JSON, at most MaxMessageBytes.
func encodeReport(kind string, body any) ([]byte, error) {
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("outbox: encode %s report: %w", kind, err)
	}
	if len(b) > MaxMessageBytes {
		return nil, fmt.Errorf("outbox: %s report of %d bytes exceeds %d", kind, len(b), MaxMessageBytes)
	}
	return b, nil
}

// newReportID is a random report ID (Put's).
func newReportID() (string, error) {
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", fmt.Errorf("outbox: report ID: %w", err)
	}
	return hex.EncodeToString(id[:]), nil
}

// Len is the number of reports not yet acknowledged.
func (o *Outbox) Len(ctx context.Context) (int, error) {
	var n int
	err := o.db.QueryRowContext(ctx, `SELECT count(*) FROM outbox`).Scan(&n)
	return n, err
}

// Due returns up to limit reports whose next attempt is at or before now, oldest first.
func (o *Outbox) Due(ctx context.Context, now time.Time, limit int) ([]Message, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT id, kind, body, created, attempts FROM outbox WHERE next_at <= ? ORDER BY created, id LIMIT ?`,
		now.UTC().Format(sortableTime), limit)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	defer rows.Close()
	var out []Message
	for rows.Next() {
		var m Message
		var body, created string
		if err := rows.Scan(&m.ID, &m.Kind, &body, &created, &m.Attempts); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		if !json.Valid([]byte(body)) {
			continue // a corrupt row cannot be sent; it stays for inspection
		}
		m.Body = json.RawMessage(body)
		m.Created, _ = time.Parse(time.RFC3339Nano, created)
		out = append(out, m)
	}
	return out, rows.Err()
}

// Flush sends the due reports in batches of up to 100, deletes those acknowledged and
// reschedules the others with backoff (b.Base·2^attempts up to b.Max, jittered by rnd in
// [0,1)). A report the server refused for good (a *RefusedError) is moved, in the same
// transaction, to the dead letters (see DeadLetters) with a warning in the log: one
// poison report must not hold back the others for ever. A request refused as a whole is
// sent again one report at a time to find the poison one. It returns how many were
// acknowledged; a send error is returned after the reports were rescheduled, and the
// refusals as a *RefusedError.
func (o *Outbox) Flush(ctx context.Context, s Sender, now time.Time, b Backoff, rnd func() float64) (int, error) {
	d := Downloader{Retry: b, Rand: rnd}
	sent := 0
	var errs []error
	dead := map[string]string{}
	for {
		msgs, err := o.Due(ctx, now, 100)
		if err != nil || len(msgs) == 0 {
			return sent, errors.Join(append(errs, err, refusedErr(dead))...)
		}
		acked, refused, serr := send(ctx, s, msgs)
		ok := map[string]bool{}
		for _, id := range acked {
			ok[id] = true
		}
		tx, err := o.db.BeginTx(ctx, nil)
		if err != nil {
			return sent, fmt.Errorf("outbox: %w", err)
		}
		at := now.UTC().Format(sortableTime)
		for _, m := range msgs {
			reason, bad := refused[m.ID]
			switch {
			case ok[m.ID]:
				_, err = tx.ExecContext(ctx, `DELETE FROM outbox WHERE id = ?`, m.ID)
				sent++
			case bad:
				if _, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO dead (id, kind, body, created, attempts, refused_at, reason)
SELECT id, kind, body, created, attempts + 1, ?, ? FROM outbox WHERE id = ?`, at, reason, m.ID); err == nil {
					_, err = tx.ExecContext(ctx, `DELETE FROM outbox WHERE id = ?`, m.ID)
				}
			default:
				next := now.Add(d.delay(m.Attempts)).UTC().Format(sortableTime)
				_, err = tx.ExecContext(ctx, `UPDATE outbox SET attempts = attempts + 1, next_at = ? WHERE id = ?`, next, m.ID)
			}
			if err != nil {
				tx.Rollback()
				return sent, fmt.Errorf("outbox: %w", err)
			}
		}
		if len(refused) > 0 {
			if _, err := tx.ExecContext(ctx, `DELETE FROM dead WHERE id NOT IN (SELECT id FROM dead ORDER BY refused_at DESC, id LIMIT ?)`, MaxDeadLetters); err != nil {
				tx.Rollback()
				return sent, fmt.Errorf("outbox: %w", err)
			}
		}
		if err := tx.Commit(); err != nil {
			return sent, fmt.Errorf("outbox: %w", err)
		}
		for _, m := range msgs {
			if reason, bad := refused[m.ID]; bad && !ok[m.ID] {
				dead[m.ID] = reason
				o.logger().Warn("the server refused a report: set aside in the outbox's dead letters, not sent again",
					"report", m.ID, "kind", m.Kind, "reason", reason, "body", string(m.Body))
			}
		}
		if serr != nil {
			return sent, errors.Join(append(errs, fmt.Errorf("outbox: send: %w", serr), refusedErr(dead))...)
		}
		if len(ok) == 0 && len(refused) == 0 {
			return sent, errors.Join(append(errs, errors.New("outbox: the server acknowledged none of the reports"), refusedErr(dead))...)
		}
	}
}

func refusedErr(dead map[string]string) error {
	if len(dead) == 0 {
		return nil
	}
	return &RefusedError{Reasons: dead}
}

// send sends msgs with s. A request the server refused as a whole is sent again one
// report at a time, so that only the reports refused alone are refused. The error is
// the first that was not a refusal.
func send(ctx context.Context, s Sender, msgs []Message) (acked []string, refused map[string]string, err error) {
	acked, err = s.Send(ctx, msgs)
	var re *RefusedError
	if !errors.As(err, &re) {
		return acked, nil, err
	}
	if !re.Whole || len(msgs) == 1 {
		return acked, re.Reasons, nil
	}
	refused = map[string]string{}
	for _, m := range msgs {
		if slices.Contains(acked, m.ID) {
			continue
		}
		a, err := s.Send(ctx, []Message{m})
		acked = append(acked, a...)
		if errors.As(err, &re) {
			maps.Copy(refused, re.Reasons)
		} else if err != nil {
			return acked, refused, err // the others wait for the next flush
		}
	}
	return acked, refused, nil
}

func (o *Outbox) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// DeadLetter is a report the server refused, kept for inspection.
type DeadLetter struct {
	Message
	RefusedAt time.Time `json:"refused_at"`
	Reason    string    `json:"reason"`
}

// DeadLetters returns the reports the server refused (at most MaxDeadLetters, newest
// first).
func (o *Outbox) DeadLetters(ctx context.Context) ([]DeadLetter, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT id, kind, body, created, attempts, refused_at, reason FROM dead ORDER BY refused_at DESC, id`)
	if err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	defer rows.Close()
	var out []DeadLetter
	for rows.Next() {
		var dl DeadLetter
		var body, created, at string
		if err := rows.Scan(&dl.ID, &dl.Kind, &body, &created, &dl.Attempts, &at, &dl.Reason); err != nil {
			return nil, fmt.Errorf("outbox: %w", err)
		}
		dl.Body = json.RawMessage(body)
		dl.Created, _ = time.Parse(time.RFC3339Nano, created)
		dl.RefusedAt, _ = time.Parse(time.RFC3339Nano, at)
		out = append(out, dl)
	}
	return out, rows.Err()
}

// DeadLen is the number of refused reports kept.
func (o *Outbox) DeadLen(ctx context.Context) (int, error) {
	var n int
	err := o.db.QueryRowContext(ctx, `SELECT count(*) FROM dead`).Scan(&n)
	return n, err
}

// RecordCheckIn remembers the time and result ("ok" or the error) of the last check-in.
func (o *Outbox) RecordCheckIn(ctx context.Context, at time.Time, result string) error {
	// Bounded and printable: the result holds the server's words.
	result = printable.Text(result, maxCheckInResult)
	_, err := o.db.ExecContext(ctx, `INSERT INTO checkins (id, at, result) VALUES (1, ?, ?)
ON CONFLICT (id) DO UPDATE SET at = excluded.at, result = excluded.result`, at.UTC().Format(sortableTime), result)
	if err != nil {
		return fmt.Errorf("outbox: record check-in: %w", err)
	}
	return nil
}

// maxCheckInResult bounds the check-in result RecordCheckIn stores.
const maxCheckInResult = 2048

// LastCheckIn returns what RecordCheckIn stored; a zero time if there was none.
func (o *Outbox) LastCheckIn(ctx context.Context) (time.Time, string, error) {
	var at, result string
	err := o.db.QueryRowContext(ctx, `SELECT at, result FROM checkins WHERE id = 1`).Scan(&at, &result)
	if errors.Is(err, sql.ErrNoRows) {
		return time.Time{}, "", nil
	}
	if err != nil {
		return time.Time{}, "", fmt.Errorf("outbox: last check-in: %w", err)
	}
	t, _ := time.Parse(time.RFC3339Nano, at)
	return t, result, nil
}

// Ack deletes acknowledged reports.
func (o *Outbox) Ack(ctx context.Context, ids []string) error {
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	defer tx.Rollback()
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `DELETE FROM outbox WHERE id = ?`, id); err != nil {
			return fmt.Errorf("outbox: ack %s: %w", id, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: %w", err)
	}
	return nil
}

// sortableTime is how the outbox stores times: fixed-width, so that the database's text
// comparison (next_at <= now, ORDER BY created) is time order. RFC3339Nano trims
// trailing zeros, and "…:00Z" sorts after "…:00.5Z" ('Z' > '.'): a report due at a
// whole second was not due until the next one. time.RFC3339Nano parses both.
const sortableTime = "2006-01-02T15:04:05.000000000Z07:00"
