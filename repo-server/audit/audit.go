// Package audit is Edgeward's transparency log: every audited event is a leaf of a Merkle
// tree with RFC 6962 hashing (golang.org/x/mod/sumdb/tlog), and the server signs
// checkpoints of the tree in the C2SP tlog-checkpoint format (signed notes,
// golang.org/x/mod/sumdb/note). Witnesses (independent `edgeward audit witness` services
// and the devices themselves) keep the newest checkpoint they have seen and accept a new
// one only with a consistency proof, so the log cannot be rewritten, truncated, forked or
// rolled back without a signature, a witness or a device noticing. An export (JSON Lines)
// is verified offline against the log key, the witnesses' keys and the auditor's last-seen
// checkpoint.
//
// The log lives in the caller's database: AppendTx appends inside the caller's
// transaction, so a record commits with the state change it records. Appends are
// serialised on the tree-size row (an UPDATE takes its write lock first), so two writers,
// in one process or in several replicas, can never fork the tree. The SQL is portable
// (sqlite and PostgreSQL: $n parameters, TEXT and BIGINT columns).
package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// Record is one audited event: a leaf of the tree.
type Record struct {
	Seq     int64           `json:"seq"`     // 1, 2, 3 … without gaps; its leaf index is Seq-1
	At      time.Time       `json:"at"`      // when it was appended (UTC)
	Actor   string          `json:"actor"`   // who acted: "server", "cli:alice", "device:<id>"
	Kind    string          `json:"kind"`    // what happened: "publish", "attestation.verdict", …
	Subject string          `json:"subject"` // what it is about: a target path, a device ID, a rollout
	Data    json.RawMessage `json:"data"`    // details, compact JSON
}

// Leaf is the record's canonical encoding, the data of its tree leaf: a domain tag and
// the length-prefixed fields (Data as compact JSON), so no two different records encode
// alike and re-indenting a record does not change its leaf.
func (r *Record) Leaf() []byte {
	data := []byte(r.Data)
	var compact bytes.Buffer
	if json.Compact(&compact, data) == nil {
		data = compact.Bytes()
	}
	return leafBytes(r.Seq, r.At, r.Actor, r.Kind, r.Subject, data)
}

const leafTag = "edgeward-audit-leaf-v2\n"

// leafBytes is Leaf with data already compact (AppendTx's, from json.Marshal).
func leafBytes(seq int64, at time.Time, actor, kind, subject string, data []byte) []byte {
	var num [20]byte
	seqs := strconv.AppendInt(num[:0], seq, 10)
	var tb [40]byte
	ats := at.UTC().AppendFormat(tb[:0], time.RFC3339Nano)
	b := make([]byte, 0, len(leafTag)+6*8+len(seqs)+len(ats)+len(actor)+len(kind)+len(subject)+len(data))
	b = append(b, leafTag...)
	field := func(s []byte) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	fieldS := func(s string) {
		b = binary.BigEndian.AppendUint64(b, uint64(len(s)))
		b = append(b, s...)
	}
	field(seqs)
	field(ats)
	fieldS(actor)
	fieldS(kind)
	fieldS(subject)
	field(data)
	return b
}

// LeafHash is the record's RFC 6962 leaf hash.
func (r *Record) LeafHash() tlog.Hash { return tlog.RecordHash(r.Leaf()) }

// KeyID names a checkpoint public key: the first 16 hex digits of SHA-256 of it.
func KeyID(pub ed25519.PublicKey) string {
	s := sha256.Sum256(pub)
	return hex.EncodeToString(s[:8])
}

// DefaultOrigin is the checkpoint origin (and log key name) when Config.Origin is empty.
const DefaultOrigin = "edgeward.audit"

// Config configures a Log. Zero values: origin DefaultOrigin, a checkpoint every 100
// records appended through Append, time.Now.
type Config struct {
	DB  *sql.DB
	Key ed25519.PrivateKey // signs checkpoints
	// Origin is the log's name: the first line of its checkpoints and the name of its
	// key. It should be unique to this log, e.g. "audit.edgeward.example.com".
	Origin string
	Every  int // records appended through Append between checkpoints; 0: 100
	Now    func() time.Time
}

// Log is the audit log in a SQL database. Safe for concurrent use, and for use by several
// processes or replicas on one database.
type Log struct {
	db     *sql.DB
	key    ed25519.PrivateKey
	signer note.Signer
	origin string
	every  int64
	now    func() time.Time

	// opened is the last checkpoint scanCheckpoint verified, with its note: every
	// check-in reads the newest checkpoint, and the same bytes under the same key need
	// not be verified again.
	opened atomic.Pointer[openedCheckpoint]

	// latestMu guards latest, Latest's query prepared once (every check-in's answer
	// reads the newest checkpoint; parsing and planning it each time cost more than
	// running it). nil until the first Latest, or when it could not be prepared.
	latestMu sync.Mutex
	latest   *sql.Stmt

	// head is the tree head this Log last appended at: a guess at the database's, which
	// AppendTx's compare-and-set UPDATE checks (size and frontier) before using it, so a
	// stale guess (another replica appended, or the transaction rolled back) costs a
	// read, never a wrong tree. nil: none yet.
	head atomic.Pointer[treeHead]
}

// treeHead is the tree's right edge at a size: the roots of its complete subtrees,
// largest first (one per bit set in size), which are all an append needs. enc is its
// encoding in audit_tree_size.frontier.
type treeHead struct {
	size     int64
	frontier []tlog.Hash
	enc      string
}

type openedCheckpoint struct {
	msg string
	c   Checkpoint
}

// schema is the log's first schema version (migration 1), as Edgeward created it before
// the schema was versioned: idempotent, so a database of that time upgrades.
var schema = []string{
	`CREATE TABLE IF NOT EXISTS audit_tree_size (id INTEGER PRIMARY KEY, size BIGINT NOT NULL)`,
	`INSERT INTO audit_tree_size(id, size) VALUES (1, 0) ON CONFLICT DO NOTHING`,
	`CREATE TABLE IF NOT EXISTS audit_leaves (
		seq     BIGINT PRIMARY KEY,
		at      TEXT NOT NULL,
		actor   TEXT NOT NULL,
		kind    TEXT NOT NULL,
		subject TEXT NOT NULL,
		data    TEXT NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS audit_leaves_kind ON audit_leaves(kind, seq)`,
	`CREATE INDEX IF NOT EXISTS audit_leaves_subject ON audit_leaves(subject, seq)`,
	// Stored hashes of the tree (tlog.StoredHashIndex), base64: of the records appended
	// before migration 2 only.
	`CREATE TABLE IF NOT EXISTS audit_hashes (id BIGINT PRIMARY KEY, hash TEXT NOT NULL)`,
	// Signed checkpoints (notes, with the cosignatures collected so far).
	`CREATE TABLE IF NOT EXISTS audit_checkpoints_v2 (size BIGINT PRIMARY KEY, note TEXT NOT NULL, at TEXT NOT NULL)`,
}

// migrations are the log's schema versions, applied in order, once each, in Open's
// transaction; audit_schema counts those applied. Append only: never edit one that has
// shipped.
var migrations = [][]string{
	schema,
	// 2: an append writes one row. A record's row holds the stored hashes its leaf
	// completes (tlog.StoredHashes: levels 0 … k, base64 of their concatenation), and the
	// tree-size row holds the tree's right edge (frontier), so an append reads nothing
	// and the tree head's UPDATE, which serialises appenders, also checks and advances
	// it. The rows written before keep their hashes in audit_hashes (NULL here); the
	// frontier is rebuilt from the stored hashes when it does not match the size.
	{
		`ALTER TABLE audit_leaves ADD COLUMN hashes TEXT`,
		`ALTER TABLE audit_tree_size ADD COLUMN frontier TEXT`,
	},
}

// ErrSchemaTooNew says the database's audit log was written by a newer Edgeward.
var ErrSchemaTooNew = errors.New("the audit log's schema is newer than this server")

// sqliteSchema adds defence in depth where the engine is sqlite. The log does not rely on
// it: whoever can drop a trigger can rewrite rows, and the signed checkpoints, the
// witnesses and the devices are what catch that.
var sqliteSchema = []string{
	`CREATE TRIGGER IF NOT EXISTS audit_leaves_no_update BEFORE UPDATE ON audit_leaves
	BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END`,
	`CREATE TRIGGER IF NOT EXISTS audit_leaves_no_delete BEFORE DELETE ON audit_leaves
	BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END`,
	`CREATE TRIGGER IF NOT EXISTS audit_hashes_no_update BEFORE UPDATE ON audit_hashes
	BEGIN SELECT RAISE(ABORT, 'audit hashes are append-only'); END`,
	`CREATE TRIGGER IF NOT EXISTS audit_hashes_no_delete BEFORE DELETE ON audit_hashes
	BEGIN SELECT RAISE(ABORT, 'audit hashes are append-only'); END`,
}

// Open prepares the log's tables in cfg.DB (creating or upgrading them).
func Open(ctx context.Context, cfg Config) (*Log, error) {
	if cfg.DB == nil || len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("audit: a database and an ed25519 checkpoint key are needed")
	}
	l := &Log{db: cfg.DB, key: cfg.Key, origin: cfg.Origin, every: int64(cfg.Every), now: cfg.Now}
	if l.origin == "" {
		l.origin = DefaultOrigin
	}
	var err error
	if l.signer, err = Signer(l.origin, cfg.Key); err != nil {
		return nil, err
	}
	if l.every <= 0 {
		l.every = 100
	}
	if l.now == nil {
		l.now = time.Now
	}
	if err := l.migrate(ctx); err != nil {
		return nil, fmt.Errorf("audit schema: %w", err)
	}
	return l, nil
}

// SchemaLock is the PostgreSQL advisory lock (transaction-scoped) under which the
// log's tables are created, so replicas starting together do not race on the catalog.
// It is the fleet store's writer lock: the fleet's migrations take it too.
const SchemaLock int64 = 0x6564676577617264

// SchemaVersion is the audit schema version this server writes.
func SchemaVersion() int { return len(migrations) }

// migrate brings the log's tables up to date in one transaction (on PostgreSQL under
// SchemaLock; on sqlite under the write lock its first write takes), with the
// append-only triggers (defence in depth). A schema newer than this server's is refused.
func (l *Log) migrate(ctx context.Context) error {
	var v string
	pg := l.db.QueryRowContext(ctx, `SELECT sqlite_version()`).Scan(&v) != nil
	if !pg {
		// sqlite: a log already at this version, with its triggers, needs no write. This
		// is the common case (every CLI command that opens the database of a running
		// server), and the one a write transaction would lose: its first statements only
		// read, and a deferred transaction that read before another connection's commit
		// cannot take the write lock (SQLITE_BUSY at once, the busy timeout does not
		// apply).
		current, err := l.sqliteCurrent(ctx)
		if err != nil {
			return err
		}
		if current {
			return nil
		}
		return retryBusy(ctx, func() error { return l.migrate1(ctx, pg) })
	}
	return l.migrate1(ctx, pg)
}

// sqliteCurrent reports whether the log's schema is this server's version with every
// append-only trigger in place, reading only (autocommit statements, which wait out
// another connection's lock). A schema newer than this server's is ErrSchemaTooNew.
func (l *Log) sqliteCurrent(ctx context.Context) (bool, error) {
	var version int
	switch err := l.db.QueryRowContext(ctx, `SELECT version FROM audit_schema WHERE id = 1`).Scan(&version); {
	case err != nil && (errors.Is(err, sql.ErrNoRows) || strings.Contains(err.Error(), "no such table")):
		return false, nil // a new or unversioned log: migrate1 creates or upgrades it
	case err != nil:
		return false, err
	case version > len(migrations):
		return false, fmt.Errorf("%w: version %d, this server knows up to %d", ErrSchemaTooNew, version, len(migrations))
	case version < len(migrations):
		return false, nil
	}
	var triggers int
	if err := l.db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN
		('audit_leaves_no_update', 'audit_leaves_no_delete', 'audit_hashes_no_update', 'audit_hashes_no_delete')`).Scan(&triggers); err != nil {
		return false, err
	}
	return triggers == len(sqliteSchema), nil
}

// retryBusy runs f again while sqlite answers SQLITE_BUSY (another connection, or
// process, committed after f's transaction first read), for up to 10 s.
func retryBusy(ctx context.Context, f func() error) error {
	wait := 5 * time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil || !strings.Contains(err.Error(), "SQLITE_BUSY") || time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(wait):
		}
		wait = min(2*wait, 200*time.Millisecond)
	}
}

// migrate1 is one attempt of migrate.
func (l *Log) migrate1(ctx context.Context, pg bool) error {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if pg {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, SchemaLock); err != nil {
			return err
		}
	}
	for _, q := range []string{
		`CREATE TABLE IF NOT EXISTS audit_schema (id INTEGER PRIMARY KEY, version BIGINT NOT NULL)`,
		`INSERT INTO audit_schema(id, version) VALUES (1, 0) ON CONFLICT DO NOTHING`,
		`UPDATE audit_schema SET version = version WHERE id = 1`, // the write lock, before reading
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	var version int
	if err := tx.QueryRowContext(ctx, `SELECT version FROM audit_schema WHERE id = 1`).Scan(&version); err != nil {
		return err
	}
	if version > len(migrations) {
		return fmt.Errorf("%w: version %d, this server knows up to %d", ErrSchemaTooNew, version, len(migrations))
	}
	for ; version < len(migrations); version++ {
		for _, q := range migrations[version] {
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migration %d: %w", version+1, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE audit_schema SET version = $1 WHERE id = 1`, version+1); err != nil {
			return err
		}
	}
	triggers := sqliteSchema
	if pg {
		triggers = pgAppendOnly
	}
	for _, q := range triggers {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// pgAppendOnly is sqliteSchema for PostgreSQL.
var pgAppendOnly = []string{
	`CREATE OR REPLACE FUNCTION edgeward_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS
	$$ BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$`,
	`CREATE OR REPLACE TRIGGER audit_leaves_append_only BEFORE UPDATE OR DELETE ON audit_leaves
	FOR EACH ROW EXECUTE FUNCTION edgeward_audit_append_only()`,
	`CREATE OR REPLACE TRIGGER audit_hashes_append_only BEFORE UPDATE OR DELETE ON audit_hashes
	FOR EACH ROW EXECUTE FUNCTION edgeward_audit_append_only()`,
}

// PublicKey is the checkpoint verification key.
func (l *Log) PublicKey() ed25519.PublicKey { return l.key.Public().(ed25519.PublicKey) }

// Origin is the log's name (first line of its checkpoints).
func (l *Log) Origin() string { return l.origin }

// VerifierKey is the encoded note verifier key of the log ("origin+hash+base64"): what an
// auditor, a witness and a device trust.
func (l *Log) VerifierKey() string {
	k, _ := VerifierKey(l.origin, l.PublicKey())
	return k
}

// Verifier is the log's note verifier.
func (l *Log) Verifier() note.Verifier {
	v, _ := note.NewVerifier(l.VerifierKey())
	return v
}

// compactJSON encodes data: json.Marshal's output is compact already (it compacts a
// json.RawMessage or a Marshaler's output too).
func compactJSON(kind string, data any) ([]byte, error) {
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("audit %s: encode data: %w", kind, err)
	}
	return raw, nil
}

// Append adds a record in its own transaction and returns it. data is any
// JSON-encodable value. A checkpoint is signed when Every records have accumulated.
func (l *Log) Append(ctx context.Context, actor, kind, subject string, data any) (*Record, error) {
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("audit: begin: %w", err)
	}
	rec, err := l.AppendTx(ctx, tx, actor, kind, subject, data)
	if err != nil {
		tx.Rollback()
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("audit append: commit: %w", err)
	}
	if rec.Seq%l.every == 0 {
		// The record is committed: a checkpoint that fails now (a cancelled request, a
		// busy database) must not turn that into an error, or callers would undo a change
		// the log already holds. The tree is signed by the next checkpoint (Run, or the
		// next Every-th record), which covers this record too.
		l.Checkpoint(context.WithoutCancel(ctx))
	}
	return rec, nil
}

// AppendUnlessLast adds a record like Append unless the log's last record of kind is
// about subject, and returns nil then. The check and the append are one transaction
// under the tree head's lock, so of several writers recording one new state at once
// (every replica's policy watcher seeing the same policy change) one appends: each
// replica audited a policy change, three records of one change (found from outside).
func (l *Log) AppendUnlessLast(ctx context.Context, actor, kind, subject string, data any) (*Record, error) {
	// Read first, without a write: a server starting on a full disk with its policy
	// already recorded must not fail on the lock's write.
	var last string
	if err := l.db.QueryRowContext(ctx, lastOfKind, kind).Scan(&last); err == nil && last == subject {
		return nil, nil
	}
	tx, err := l.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("audit: begin: %w", err)
	}
	defer tx.Rollback()
	// The tree head's write lock first (a no-op UPDATE), then the last record of kind.
	if _, err := tx.ExecContext(ctx, `UPDATE audit_tree_size SET size = size WHERE id = 1`); err != nil {
		return nil, fmt.Errorf("audit append: tree head: %w", err)
	}
	switch err := tx.QueryRowContext(ctx, lastOfKind, kind).Scan(&last); {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("audit append: last %s: %w", kind, err)
	case last == subject:
		return nil, nil
	}
	rec, err := l.AppendTx(ctx, tx, actor, kind, subject, data)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("audit append: commit: %w", err)
	}
	if rec.Seq%l.every == 0 {
		l.Checkpoint(context.WithoutCancel(ctx)) // as in Append
	}
	return rec, nil
}

// lastOfKind is the subject of the last record of a kind (the audit_leaves_kind index).
const lastOfKind = `SELECT subject FROM audit_leaves WHERE kind = $1 ORDER BY seq DESC LIMIT 1`

// AppendTx adds a record inside the caller's transaction tx (on the log's database), so
// the record commits or rolls back with the change it records. Its first statement takes
// the write lock on the tree head, so appenders serialise on it: call it early in a
// transaction that will write anyway, and keep the transaction short.
//
// An append is two statements with fixed texts: the tree head's UPDATE, a
// compare-and-set from the head this Log last appended at (size and frontier) to the
// next, and the record's INSERT, whose row carries the stored hashes its leaf completes.
// When the compare fails (another writer appended, a transaction rolled back), the head
// is read under the same lock first.
func (l *Log) AppendTx(ctx context.Context, tx Tx, actor, kind, subject string, data any) (*Record, error) {
	raw, err := compactJSON(kind, data)
	if err != nil {
		return nil, err
	}
	at := l.now().UTC()
	if h := l.head.Load(); h != nil {
		rec, next, hashes := h.extend(at, actor, kind, subject, raw)
		res, err := tx.ExecContext(ctx, `UPDATE audit_tree_size SET size = $1, frontier = $2 WHERE id = 1 AND size = $3 AND frontier = $4`,
			next.size, next.enc, h.size, h.enc)
		if err != nil {
			return nil, fmt.Errorf("audit append: tree head: %w", err)
		}
		if n, err := res.RowsAffected(); err != nil {
			return nil, fmt.Errorf("audit append: tree head: %w", err)
		} else if n == 1 {
			return l.insertLeaf(ctx, tx, rec, next, hashes)
		}
	}
	// The tree head as committed, locked (a no-op UPDATE takes the row's write lock).
	var size int64
	var enc sql.NullString
	if err := tx.QueryRowContext(ctx, `UPDATE audit_tree_size SET size = size WHERE id = 1 RETURNING size, frontier`).Scan(&size, &enc); err != nil {
		return nil, fmt.Errorf("audit append: tree head: %w", err)
	}
	h, err := parseHead(size, enc.String)
	if err != nil {
		// Written before migration 2, by an older server, or rewound by hand: the
		// frontier is rebuilt from the stored hashes.
		f, err := frontierOf(size, hashReader(ctx, tx))
		if err != nil {
			return nil, fmt.Errorf("audit append: tree frontier: %w", err)
		}
		h = newHead(size, f)
	}
	rec, next, hashes := h.extend(at, actor, kind, subject, raw)
	res, err := tx.ExecContext(ctx, `UPDATE audit_tree_size SET size = $1, frontier = $2 WHERE id = 1 AND size = $3`, next.size, next.enc, size)
	if err != nil {
		return nil, fmt.Errorf("audit append: tree head: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil || n != 1 {
		return nil, fmt.Errorf("audit append: the tree head moved under its lock (%d rows, %v)", n, err)
	}
	return l.insertLeaf(ctx, tx, rec, next, hashes)
}

func (l *Log) insertLeaf(ctx context.Context, tx Tx, rec *Record, next *treeHead, hashes string) (*Record, error) {
	if _, err := tx.ExecContext(ctx, `INSERT INTO audit_leaves(seq, at, actor, kind, subject, data, hashes) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		rec.Seq, rec.At.Format(time.RFC3339Nano), rec.Actor, rec.Kind, rec.Subject, string(rec.Data), hashes); err != nil {
		return nil, fmt.Errorf("audit append: %w", err)
	}
	l.head.Store(next)
	return rec, nil
}

// extend appends a leaf to the tree h: the record (Seq h.size+1), the tree head after
// it, and the stored hashes the leaf completes (tlog.StoredHashes: the leaf's hash, then
// one per level it completes), encoded for audit_leaves.hashes.
func (h *treeHead) extend(at time.Time, actor, kind, subject string, data []byte) (*Record, *treeHead, string) {
	rec := &Record{Seq: h.size + 1, At: at, Actor: actor, Kind: kind, Subject: subject, Data: data}
	leaf := tlog.RecordHash(leafBytes(rec.Seq, at, actor, kind, subject, data))
	// Leaf index h.size completes one level per trailing 1 bit of it, each with the
	// frontier's smallest subtree (tlog.StoredHashesForRecordHash).
	m := bits.TrailingZeros64(uint64(h.size + 1))
	buf := make([]byte, 0, (m+1)*tlog.HashSize)
	buf = append(buf, leaf[:]...)
	top := leaf
	keep := len(h.frontier) - m
	for i := 0; i < m; i++ {
		top = tlog.NodeHash(h.frontier[len(h.frontier)-1-i], top)
		buf = append(buf, top[:]...)
	}
	f := make([]tlog.Hash, keep+1)
	copy(f, h.frontier[:keep])
	f[keep] = top
	return rec, newHead(h.size+1, f), base64.StdEncoding.EncodeToString(buf)
}

func newHead(size int64, f []tlog.Hash) *treeHead {
	buf := make([]byte, 0, len(f)*tlog.HashSize)
	for _, x := range f {
		buf = append(buf, x[:]...)
	}
	return &treeHead{size: size, frontier: f, enc: strconv.FormatInt(size, 10) + ":" + base64.StdEncoding.EncodeToString(buf)}
}

// parseHead decodes a frontier column: "size:base64", valid only for that size.
func parseHead(size int64, enc string) (*treeHead, error) {
	n, b64, ok := strings.Cut(enc, ":")
	if !ok || n != strconv.FormatInt(size, 10) {
		return nil, errors.New("no frontier for this size")
	}
	f, err := decodeHashes(b64)
	if err != nil || len(f) != bits.OnesCount64(uint64(size)) {
		return nil, fmt.Errorf("bad frontier (%d hashes, %v)", len(f), err)
	}
	return &treeHead{size: size, frontier: f, enc: enc}, nil
}

func decodeHashes(b64 string) ([]tlog.Hash, error) {
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, err
	}
	if len(b)%tlog.HashSize != 0 {
		return nil, fmt.Errorf("%d bytes of hashes", len(b))
	}
	out := make([]tlog.Hash, len(b)/tlog.HashSize)
	for i := range out {
		copy(out[i][:], b[i*tlog.HashSize:])
	}
	return out, nil
}

// frontierOf reads the roots of the complete subtrees of the tree of size n, largest
// first (the hashes tlog.TreeHash combines).
func frontierOf(n int64, r tlog.HashReader) ([]tlog.Hash, error) {
	var ix []int64
	var start int64
	for level := 62; level >= 0; level-- {
		if n&(1<<level) != 0 {
			ix = append(ix, tlog.StoredHashIndex(level, start>>level))
			start += 1 << level
		}
	}
	if len(ix) == 0 {
		return nil, nil
	}
	return r.ReadHashes(ix)
}

// Tx is a transaction on the log's database: *sql.Tx, or a store's transaction that
// runs these statements (written with $n placeholders, which sqlite and PostgreSQL
// both take) in the same transaction, such as fleet.Tx, which keeps them prepared.
type Tx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type querier interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// hashReader reads stored hashes from the database (or a transaction on it). The hash
// tlog.StoredHashIndex(level, n) is completed by leaf (n+1)<<level - 1: it is the
// level'th in the hashes of record (n+1)<<level, or, for records appended before
// schema migration 2 (hashes NULL), row id = index of audit_hashes.
func hashReader(ctx context.Context, q querier) tlog.HashReader {
	return tlog.HashReaderFunc(func(indexes []int64) ([]tlog.Hash, error) {
		if len(indexes) == 0 {
			return nil, nil
		}
		seqs := make([]int64, 0, len(indexes))
		seen := make(map[int64]bool, len(indexes))
		for _, ix := range indexes {
			level, n := tlog.SplitStoredHashIndex(ix)
			if seq := (n + 1) << level; !seen[seq] {
				seen[seq] = true
				seqs = append(seqs, seq)
			}
		}
		rows := make(map[int64][]tlog.Hash, len(seqs))
		err := queryIn(ctx, q, `SELECT seq, hashes FROM audit_leaves WHERE hashes IS NOT NULL AND seq IN (`, seqs, func(r *sql.Rows) error {
			var seq int64
			var s string
			if err := r.Scan(&seq, &s); err != nil {
				return err
			}
			hs, err := decodeHashes(s)
			if err != nil {
				return fmt.Errorf("audit record %d: hashes: %w", seq, err)
			}
			if want := 1 + bits.TrailingZeros64(uint64(seq)); len(hs) != want {
				return fmt.Errorf("audit record %d: %d stored hashes, want %d", seq, len(hs), want)
			}
			rows[seq] = hs
			return nil
		})
		if err != nil {
			return nil, err
		}
		out := make([]tlog.Hash, len(indexes))
		var legacy []int64
		for i, ix := range indexes {
			level, n := tlog.SplitStoredHashIndex(ix)
			if hs, ok := rows[(n+1)<<level]; ok {
				out[i] = hs[level]
			} else {
				legacy = append(legacy, ix)
			}
		}
		if len(legacy) == 0 {
			return out, nil
		}
		got := make(map[int64]tlog.Hash, len(legacy))
		err = queryIn(ctx, q, `SELECT id, hash FROM audit_hashes WHERE id IN (`, legacy, func(r *sql.Rows) error {
			var id int64
			var s string
			if err := r.Scan(&id, &s); err != nil {
				return err
			}
			h, err := tlog.ParseHash(s)
			if err != nil {
				return fmt.Errorf("audit hash %d: %w", id, err)
			}
			got[id] = h
			return nil
		})
		if err != nil {
			return nil, err
		}
		for i, ix := range indexes {
			level, n := tlog.SplitStoredHashIndex(ix)
			if _, ok := rows[(n+1)<<level]; ok {
				continue
			}
			h, ok := got[ix]
			if !ok {
				return nil, fmt.Errorf("audit: stored hash %d is missing", ix)
			}
			out[i] = h
		}
		return out, nil
	})
}

// queryIn runs prefix + "$1, …, $n)" over ids and calls fn for each row.
func queryIn(ctx context.Context, q querier, prefix string, ids []int64, fn func(*sql.Rows) error) error {
	var b strings.Builder
	b.WriteString(prefix)
	args := make([]any, len(ids))
	for i, id := range ids {
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString("$")
		b.WriteString(strconv.Itoa(i + 1))
		args[i] = id
	}
	b.WriteString(")")
	rows, err := q.QueryContext(ctx, b.String(), args...)
	if err != nil {
		return fmt.Errorf("audit hashes: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := fn(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Size is the number of records in the log (committed).
func (l *Log) Size(ctx context.Context) (int64, error) {
	var n int64
	if err := l.db.QueryRowContext(ctx, `SELECT size FROM audit_tree_size WHERE id = 1`).Scan(&n); err != nil {
		return 0, fmt.Errorf("audit size: %w", err)
	}
	return n, nil
}

// TreeHash is the root hash of the log's first n records.
func (l *Log) TreeHash(ctx context.Context, n int64) (tlog.Hash, error) {
	return tlog.TreeHash(n, hashReader(ctx, l.db))
}

// Checkpoint signs a checkpoint over all records now in the log, unless one at that size
// exists already, and returns the newest checkpoint. Signing is idempotent: the note has
// no timestamp, so two replicas signing the same tree produce the same checkpoint.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	size, err := l.Size(ctx)
	if err != nil {
		return nil, err
	}
	if c, err := l.CheckpointAt(ctx, size); err == nil {
		return c, nil
	} else if !errors.Is(err, ErrNoCheckpoint) {
		return nil, err
	}
	h, err := l.TreeHash(ctx, size)
	if err != nil {
		return nil, err
	}
	msg, err := note.Sign(&note.Note{Text: checkpointText(l.origin, size, h)}, l.signer)
	if err != nil {
		return nil, err
	}
	if _, err := l.db.ExecContext(ctx, `INSERT INTO audit_checkpoints_v2(size, note, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
		size, string(msg), l.now().UTC().Format(time.RFC3339Nano)); err != nil {
		return nil, fmt.Errorf("audit checkpoint: %w", err)
	}
	return l.CheckpointAt(ctx, size)
}

// ErrNoCheckpoint says no checkpoint was signed at the size asked for.
var ErrNoCheckpoint = errors.New("no checkpoint at that size")

// CheckpointAt returns the checkpoint signed at tree size n, with the cosignatures
// collected for it.
func (l *Log) CheckpointAt(ctx context.Context, n int64) (*Checkpoint, error) {
	return l.scanCheckpoint(l.db.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints_v2 WHERE size = $1`, n))
}

// Latest returns the newest signed checkpoint, or ErrNoCheckpoint.
func (l *Log) Latest(ctx context.Context) (*Checkpoint, error) {
	const q = `SELECT note FROM audit_checkpoints_v2 ORDER BY size DESC LIMIT 1`
	l.latestMu.Lock()
	if l.latest == nil {
		l.latest, _ = l.db.PrepareContext(ctx, q) // on failure, run it unprepared
	}
	st := l.latest
	l.latestMu.Unlock()
	if st == nil {
		return l.scanCheckpoint(l.db.QueryRowContext(ctx, q))
	}
	return l.scanCheckpoint(st.QueryRowContext(ctx))
}

func (l *Log) scanCheckpoint(row *sql.Row) (*Checkpoint, error) {
	var msg string
	if err := row.Scan(&msg); errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNoCheckpoint
	} else if err != nil {
		return nil, fmt.Errorf("audit checkpoint: %w", err)
	}
	// Verified, not only parsed: a row written behind the log's back must not be served.
	if o := l.opened.Load(); o != nil && o.msg == msg {
		c := o.c
		c.Note = append([]byte(nil), c.Note...)
		return &c, nil
	}
	c, err := OpenCheckpoint([]byte(msg), l.Verifier(), nil, 0)
	if err != nil {
		return nil, err
	}
	l.opened.Store(&openedCheckpoint{msg: msg, c: *c})
	return c, nil
}

// AddCosignatures merges the witness signature lines of cosigned (a copy of the
// checkpoint at the same size, verified by the caller) into the stored checkpoint.
//
// The note is replaced only if it is still the one read (a compare-and-swap, retried): two
// replicas adding their witnesses' lines at once (two leaders for a moment) would
// otherwise each write the note they read plus their own lines, and one set is lost.
func (l *Log) AddCosignatures(ctx context.Context, size int64, sigLines []string) error {
	for range 10 {
		var stored string
		if err := l.db.QueryRowContext(ctx, `SELECT note FROM audit_checkpoints_v2 WHERE size = $1`, size).Scan(&stored); err != nil {
			return fmt.Errorf("audit cosignatures: checkpoint %d: %w", size, err)
		}
		msg := stored
		for _, s := range sigLines {
			s = strings.TrimRight(s, "\n") + "\n"
			if !strings.HasPrefix(s, "— ") || strings.Contains(msg, s) {
				continue
			}
			msg += s
		}
		if msg == stored {
			return nil
		}
		res, err := l.db.ExecContext(ctx, `UPDATE audit_checkpoints_v2 SET note = $1 WHERE size = $2 AND note = $3`, msg, size, stored)
		if err != nil {
			return fmt.Errorf("audit cosignatures: %w", err)
		}
		if n, err := res.RowsAffected(); err == nil && n == 1 {
			return nil
		}
	}
	return fmt.Errorf("audit cosignatures: checkpoint %d keeps changing", size)
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

// ErrBeyondTree says a proof was asked for a tree larger than the log.
var ErrBeyondTree = errors.New("beyond the log's tree")

func (l *Log) checkSize(ctx context.Context, n int64) error {
	size, err := l.Size(ctx)
	if err != nil {
		return err
	}
	if n < 0 || n > size {
		return fmt.Errorf("audit: tree size %d: %w (size %d)", n, ErrBeyondTree, size)
	}
	return nil
}

// InclusionProof proves that record seq is in the tree of size n.
func (l *Log) InclusionProof(ctx context.Context, seq, n int64) (tlog.RecordProof, error) {
	if err := l.checkSize(ctx, n); err != nil {
		return nil, err
	}
	if seq < 1 || seq > n {
		return nil, fmt.Errorf("audit: record %d is not in a tree of size %d: %w", seq, n, ErrBeyondTree)
	}
	return tlog.ProveRecord(n, seq-1, hashReader(ctx, l.db))
}

// ConsistencyProof proves that the tree of size old is a prefix of the tree of size n.
// The proof from an empty tree is empty.
func (l *Log) ConsistencyProof(ctx context.Context, old, n int64) (tlog.TreeProof, error) {
	if err := l.checkSize(ctx, n); err != nil {
		return nil, err
	}
	if old < 0 || old > n {
		return nil, fmt.Errorf("audit: consistency from %d to %d: %w", old, n, ErrBeyondTree)
	}
	if old == 0 || old == n {
		return tlog.TreeProof{}, nil
	}
	return tlog.ProveTree(n, old, hashReader(ctx, l.db))
}

// Query selects records. Zero fields select everything.
type Query struct {
	Kind    string
	Subject string
	After   int64 // only records with Seq > After
	Upto    int64 // only records with Seq <= Upto; 0: no bound
	Limit   int   // 0: no limit
}

const recordColumns = `seq, at, actor, kind, subject, data`

// Records returns the records matching q, oldest first.
func (l *Log) Records(ctx context.Context, q Query) ([]Record, error) {
	var out []Record
	err := l.eachRecord(ctx, q, func(r *Record) error { out = append(out, *r); return nil })
	return out, err
}

// Record returns record seq.
func (l *Log) Record(ctx context.Context, seq int64) (*Record, error) {
	recs, err := l.Records(ctx, Query{After: seq - 1, Upto: seq, Limit: 1})
	if err != nil {
		return nil, err
	}
	if len(recs) == 0 {
		return nil, fmt.Errorf("audit record %d: %w", seq, ErrBeyondTree)
	}
	return &recs[0], nil
}

func (l *Log) eachRecord(ctx context.Context, q Query, fn func(*Record) error) error {
	sqlq := `SELECT ` + recordColumns + ` FROM audit_leaves WHERE seq > $1`
	args := []any{q.After}
	if q.Upto > 0 {
		args = append(args, q.Upto)
		sqlq += fmt.Sprintf(` AND seq <= $%d`, len(args))
	}
	if q.Kind != "" {
		args = append(args, q.Kind)
		sqlq += fmt.Sprintf(` AND kind = $%d`, len(args))
	}
	if q.Subject != "" {
		args = append(args, q.Subject)
		sqlq += fmt.Sprintf(` AND subject = $%d`, len(args))
	}
	sqlq += ` ORDER BY seq`
	if q.Limit > 0 {
		sqlq += ` LIMIT ` + strconv.Itoa(q.Limit)
	}
	rows, err := l.db.QueryContext(ctx, sqlq, args...)
	if err != nil {
		return fmt.Errorf("audit records: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var r Record
		var at, data string
		if err := rows.Scan(&r.Seq, &at, &r.Actor, &r.Kind, &r.Subject, &data); err != nil {
			return err
		}
		if r.At, err = time.Parse(time.RFC3339Nano, at); err != nil {
			return fmt.Errorf("audit record %d: time: %w", r.Seq, err)
		}
		r.Data = json.RawMessage(data)
		if err := fn(&r); err != nil {
			return err
		}
	}
	return rows.Err()
}
