// Package audit is Edgeward's tamper-evident log: an append-only sqlite table in which
// every record carries the hash of the one before it, and signed checkpoints (count,
// head hash) that commit to a prefix of the chain. An export (JSON Lines) can be verified
// offline with only the checkpoint public key: a record that was modified, deleted,
// reordered or appended after the last checkpoint is found and reported.
package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// Record is one audited event.
type Record struct {
	Seq     int64           `json:"seq"`     // 1, 2, 3, … without gaps
	At      time.Time       `json:"at"`      // when it was appended (UTC)
	Actor   string          `json:"actor"`   // who acted: "server", "cli:alice", "device:<id>"
	Kind    string          `json:"kind"`    // what happened: "publish", "attestation.verdict", …
	Subject string          `json:"subject"` // what it is about: a target path, a device ID, a rollout
	Data    json.RawMessage `json:"data"`    // details, compact JSON
	Prev    string          `json:"prev"`    // hex hash of record Seq-1 (zeros for the first)
	Hash    string          `json:"hash"`    // hex hash of this record
}

// Checkpoint is a signed statement that the log's first Count records end in Head.
type Checkpoint struct {
	Count int64     `json:"count"`
	Head  string    `json:"head"`
	At    time.Time `json:"at"`
	KeyID string    `json:"key_id"`
	Sig   []byte    `json:"sig"`
}

var zeroHash = hex.EncodeToString(make([]byte, sha256.Size))

// hashRecord is the chain hash: SHA-256 over a domain tag and the length-prefixed fields,
// so no two different records encode alike.
func hashRecord(r *Record) string {
	h := sha256.New()
	h.Write([]byte("edgeward-audit-record-v1"))
	field := func(b []byte) {
		var n [8]byte
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	field([]byte(strconv.FormatInt(r.Seq, 10)))
	field([]byte(r.At.UTC().Format(time.RFC3339Nano)))
	field([]byte(r.Actor))
	field([]byte(r.Kind))
	field([]byte(r.Subject))
	field(r.Data)
	field([]byte(r.Prev))
	return hex.EncodeToString(h.Sum(nil))
}

func checkpointMessage(c *Checkpoint) []byte {
	return fmt.Appendf(nil, "edgeward-audit-checkpoint-v1\n%d\n%s\n%s\n", c.Count, c.Head, c.At.UTC().Format(time.RFC3339Nano))
}

// KeyID names a checkpoint public key: the first 16 hex digits of SHA-256 of it.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// Config configures a Log. Zero values: a checkpoint every 100 records or 60 seconds,
// time.Now.
type Config struct {
	DB    *sql.DB
	Key   ed25519.PrivateKey // signs checkpoints
	Every int                // records between checkpoints; 0: 100
	Now   func() time.Time
}

// Log is the audit log in a sqlite database. Safe for concurrent use, and for use by
// several processes on one database (appends take sqlite's write lock).
type Log struct {
	db    *sql.DB
	key   ed25519.PrivateKey
	every int64
	now   func() time.Time
	mu    sync.Mutex
}

const schema = `
CREATE TABLE IF NOT EXISTS audit_records (
	seq     INTEGER PRIMARY KEY,
	at      TEXT NOT NULL,
	actor   TEXT NOT NULL,
	kind    TEXT NOT NULL,
	subject TEXT NOT NULL,
	data    TEXT NOT NULL,
	prev    TEXT NOT NULL,
	hash    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
	count  INTEGER PRIMARY KEY,
	head   TEXT NOT NULL,
	at     TEXT NOT NULL,
	key_id TEXT NOT NULL,
	sig    BLOB NOT NULL
);
CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
`

// Open prepares the log's tables in cfg.DB.
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.DB == nil || len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("audit: a database and an ed25519 checkpoint key are needed")
	}
	l := &Log{db: cfg.DB, key: cfg.Key, every: int64(cfg.Every), now: cfg.Now}
	if l.every <= 0 {
		l.every = 100
	}
	if l.now == nil {
		l.now = time.Now
	}
	if _, err := l.db.ExecContext(ctx, schema); err != nil {
		return nil, fmt.Errorf("audit schema: %w", err)
	}
	return l, nil
}

// PublicKey is the checkpoint verification key.
func (l *Log) PublicKey() ed25519.PublicKey { return l.key.Public().(ed25519.PublicKey) }

// Append adds a record in its own transaction and returns it with its sequence number
// and hash. data is any JSON-encodable value. A checkpoint is signed when Every records
// have accumulated.
func (l *Log) Append(ctx context.Context, actor, kind, subject string, data any) (*Record, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var rec *Record
	err := l.tx(ctx, func(tx *sql.Tx) error {
		var err error
		rec, err = l.AppendTx(ctx, tx, actor, kind, subject, data)
		return err
	})
	return rec, err
}

// AppendTx adds a record inside the caller's transaction tx, which must be open on the
// log's database (Config.DB). The record exists only if tx commits: a state change and
// its record commit together or not at all, and a rolled-back tx leaves no gap.
//
// Appends are serialised on the chain head: AppendTx takes the database's write lock
// (sqlite; a no-op when tx already holds it, as BEGIN IMMEDIATE does) before it reads
// the head, so a concurrent appender, in this process or another, waits until tx ends
// and then chains onto the record tx wrote. AppendTx does not take the Log's mutex, so
// it may be called while the caller holds the database's only connection.
func (l *Log) AppendTx(ctx context.Context, tx *sql.Tx, actor, kind, subject string, data any) (*Record, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("audit %s: encode data: %w", kind, err)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, raw); err != nil {
		return nil, fmt.Errorf("audit %s: encode data: %w", kind, err)
	}
	if err := lockHead(ctx, tx); err != nil {
		return nil, err
	}
	seq, prev, err := head(ctx, tx)
	if err != nil {
		return nil, err
	}
	rec := &Record{Seq: seq + 1, At: l.now().UTC(), Actor: actor, Kind: kind, Subject: subject, Data: compact.Bytes(), Prev: prev}
	rec.Hash = hashRecord(rec)
	_, err = tx.ExecContext(ctx, `INSERT INTO audit_records(seq, at, actor, kind, subject, data, prev, hash) VALUES(?,?,?,?,?,?,?,?)`,
		rec.Seq, rec.At.Format(time.RFC3339Nano), rec.Actor, rec.Kind, rec.Subject, string(rec.Data), rec.Prev, rec.Hash)
	if err != nil {
		return nil, fmt.Errorf("audit append %s: %w", kind, err)
	}
	last, err := lastCheckpoint(ctx, tx)
	if err != nil {
		return nil, err
	}
	if rec.Seq-last >= l.every {
		if err := l.checkpointTx(ctx, tx, rec.Seq, rec.Hash); err != nil {
			return nil, err
		}
	}
	return rec, nil
}

// Checkpoint signs a checkpoint over all records now in the log, unless the newest
// checkpoint already covers them. It returns the newest checkpoint.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	err := l.tx(ctx, func(tx *sql.Tx) error {
		seq, h, err := head(ctx, tx)
		if err != nil {
			return err
		}
		last, err := lastCheckpoint(ctx, tx)
		if err != nil || seq == last || seq == 0 {
			return err
		}
		return l.checkpointTx(ctx, tx, seq, h)
	})
	if err != nil {
		return nil, err
	}
	cps, err := l.checkpoints(ctx, 1)
	if err != nil || len(cps) == 0 {
		return nil, err
	}
	return &cps[0], nil
}

// Run signs a checkpoint every interval while records accumulate, until ctx ends.
func (l *Log) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			l.Checkpoint(ctx)
		}
	}
}

func (l *Log) checkpointTx(ctx context.Context, tx *sql.Tx, count int64, headHash string) error {
	c := &Checkpoint{Count: count, Head: headHash, At: l.now().UTC(), KeyID: KeyID(l.PublicKey())}
	sig, err := l.key.Sign(rand.Reader, checkpointMessage(c), crypto.Hash(0))
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, `INSERT INTO audit_checkpoints(count, head, at, key_id, sig) VALUES(?,?,?,?,?)`,
		c.Count, c.Head, c.At.Format(time.RFC3339Nano), c.KeyID, sig)
	if err != nil {
		return fmt.Errorf("audit checkpoint: %w", err)
	}
	return nil
}

// tx runs fn in a write transaction taken up front (BEGIN IMMEDIATE semantics through a
// dedicated connection), so concurrent appenders in other processes serialise.
func (l *Log) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("audit: begin: %w", err)
	}
	// Take the write lock before reading the head.
	if err := lockHead(ctx, tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// lockHead takes the database's write lock (sqlite: an UPDATE, even of no row, makes
// the transaction a writer), so that no other appender reads the same head.
func lockHead(ctx context.Context, tx *sql.Tx) error {
	if _, err := tx.ExecContext(ctx, `UPDATE audit_checkpoints SET count = count WHERE 0`); err != nil {
		return fmt.Errorf("audit: lock the chain head: %w", err)
	}
	return nil
}

func head(ctx context.Context, tx *sql.Tx) (int64, string, error) {
	var seq int64
	var h string
	err := tx.QueryRowContext(ctx, `SELECT seq, hash FROM audit_records ORDER BY seq DESC LIMIT 1`).Scan(&seq, &h)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, zeroHash, nil
	}
	if err != nil {
		return 0, "", fmt.Errorf("audit head: %w", err)
	}
	return seq, h, nil
}

func lastCheckpoint(ctx context.Context, tx *sql.Tx) (int64, error) {
	var n sql.NullInt64
	if err := tx.QueryRowContext(ctx, `SELECT MAX(count) FROM audit_checkpoints`).Scan(&n); err != nil {
		return 0, fmt.Errorf("audit checkpoints: %w", err)
	}
	return n.Int64, nil
}

// Query selects records. Zero fields select everything.
type Query struct {
	Kind    string
	Subject string
	After   int64 // only records with Seq > After
	Limit   int   // 0: no limit
}

// Records returns the records matching q, oldest first.
func (l *Log) Records(ctx context.Context, q Query) ([]Record, error) {
	sqlq := `SELECT seq, at, actor, kind, subject, data, prev, hash FROM audit_records WHERE seq > ?`
	args := []any{q.After}
	if q.Kind != "" {
		sqlq += ` AND kind = ?`
		args = append(args, q.Kind)
	}
	if q.Subject != "" {
		sqlq += ` AND subject = ?`
		args = append(args, q.Subject)
	}
	sqlq += ` ORDER BY seq`
	if q.Limit > 0 {
		sqlq += ` LIMIT ` + strconv.Itoa(q.Limit)
	}
	rows, err := l.db.QueryContext(ctx, sqlq, args...)
	if err != nil {
		return nil, fmt.Errorf("audit records: %w", err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		var at, data string
		if err := rows.Scan(&r.Seq, &at, &r.Actor, &r.Kind, &r.Subject, &data, &r.Prev, &r.Hash); err != nil {
			return nil, err
		}
		if r.At, err = time.Parse(time.RFC3339Nano, at); err != nil {
			return nil, fmt.Errorf("audit record %d: time: %w", r.Seq, err)
		}
		r.Data = json.RawMessage(data)
		out = append(out, r)
	}
	return out, rows.Err()
}

// checkpoints returns the newest n checkpoints (all when n <= 0), newest first.
func (l *Log) checkpoints(ctx context.Context, n int) ([]Checkpoint, error) {
	q := `SELECT count, head, at, key_id, sig FROM audit_checkpoints ORDER BY count DESC`
	if n > 0 {
		q += ` LIMIT ` + strconv.Itoa(n)
	}
	rows, err := l.db.QueryContext(ctx, q)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Checkpoint
	for rows.Next() {
		var c Checkpoint
		var at string
		if err := rows.Scan(&c.Count, &c.Head, &at, &c.KeyID, &c.Sig); err != nil {
			return nil, err
		}
		c.At, _ = time.Parse(time.RFC3339Nano, at)
		out = append(out, c)
	}
	return out, rows.Err()
}
