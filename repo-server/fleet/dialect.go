package fleet

import (
	"context"
	"database/sql"
	"errors"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// The store's SQL is written once, in sqlite's dialect with ? placeholders, and kept to
// what PostgreSQL understands too (ON CONFLICT … DO NOTHING/UPDATE, RETURNING, aliased
// subqueries, integers compared explicitly rather than used as booleans). What differs
// is handled here and only here:
//
//   - placeholders: ? becomes $1, $2 … on PostgreSQL (rebind);
//   - booleans: bound as 0/1 integers on both (sqlite has no boolean type, and the
//     columns stay BIGINT on PostgreSQL so sum() and = 1 read the same);
//   - schema: the migrations' sqlite DDL is translated (pgDDL: INTEGER is BIGINT, an
//     INTEGER PRIMARY KEY is an identity column, BLOB is BYTEA, REAL is DOUBLE
//     PRECISION, no STRICT or WITHOUT ROWID), and the schema version is a row of
//     edgeward_schema instead of PRAGMA user_version;
//   - transactions: see Store.tx.
type dialect int

const (
	sqliteDialect dialect = iota
	postgresDialect
)

func (d dialect) String() string {
	if d == postgresDialect {
		return "postgres"
	}
	return "sqlite"
}

// sqlDB is the store's database: *sql.DB whose query methods speak the store's
// dialect. The embedded *sql.DB is the raw handle (for the audit log, which writes
// portable SQL itself).
type sqlDB struct {
	*sql.DB
	dialect dialect
	stmts   *stmtCache // nil: nothing prepared (tests' raw handles)

	// fault is the storage fault (writeFault: no space, an I/O error, a read-only
	// database) a write, through the committer or ExecContext, last failed with; nil
	// if none did since Store.Ready's write probe last committed.
	fault atomic.Pointer[error]
}

// dropIdle closes the PostgreSQL pool's idle connections (a batch got no answer for
// batchTimeout): whatever silenced that connection (a stalled proxy, a hung backend)
// may hold the others opened before it too, and each would cost the next batches a
// whole batchTimeout to find out. New ones are opened as needed.
func (d *sqlDB) dropIdle() {
	if d.dialect != postgresDialect {
		return
	}
	d.SetMaxIdleConns(0)
	d.SetMaxIdleConns(PostgresConns)
}

// noteFault remembers err as the store's storage fault if it is one, and says so.
func (d *sqlDB) noteFault(err error) bool {
	if !writeFault(err) {
		return false
	}
	d.fault.Store(&err)
	return true
}

// ExecContext runs a write outside the committer (noting a storage fault).
func (d *sqlDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	res, err := d.DB.ExecContext(ctx, d.dialect.rebind(query), d.dialect.args(args)...)
	d.noteFault(err)
	return res, err
}

func (d *sqlDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return d.DB.QueryContext(ctx, d.dialect.rebind(query), d.dialect.args(args)...)
}

func (d *sqlDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return d.DB.QueryRowContext(ctx, d.dialect.rebind(query), d.dialect.args(args)...)
}

// Exec and QueryRow without a context are for tests.
func (d *sqlDB) Exec(query string, args ...any) (sql.Result, error) {
	return d.ExecContext(context.Background(), query, args...)
}

func (d *sqlDB) QueryRow(query string, args ...any) *sql.Row {
	return d.QueryRowContext(context.Background(), query, args...)
}

// txn is a store transaction: *sql.Tx speaking the store's dialect, running the
// store's prepared statements (stmtCache). Tx is the raw transaction. The audit log
// appends through txn too (it satisfies Tx), so its statements are prepared as well.
type txn struct {
	Tx      *sql.Tx
	dialect dialect
	stmts   *stmtCache
	local   map[*sql.Stmt]*sql.Stmt // stmts' statements, bound to Tx
	// deadline, when set, bounds every statement of the transaction whatever the
	// context its caller passed (the committer's batchTimeout); cancels are the
	// contexts made for it, released with the transaction (release).
	deadline time.Time
	cancels  []context.CancelFunc
}

// bound returns ctx ending no later than t's deadline. The context lives until
// release: rows and a row a query returns are read after the call.
func (t *txn) bound(ctx context.Context) context.Context {
	if t.deadline.IsZero() {
		return ctx
	}
	if d, ok := ctx.Deadline(); ok && !d.After(t.deadline) {
		return ctx
	}
	ctx, cancel := context.WithDeadline(ctx, t.deadline)
	t.cancels = append(t.cancels, cancel)
	return ctx
}

// release ends the contexts bound made, once the transaction is over.
func (t *txn) release() {
	for _, cancel := range t.cancels {
		cancel()
	}
	t.cancels = nil
}

func (t *txn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx = t.bound(ctx)
	query = t.dialect.rebind(query)
	if st := t.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, t.dialect.args(args)...)
	}
	return t.Tx.ExecContext(ctx, query, t.dialect.args(args)...)
}

func (t *txn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx = t.bound(ctx)
	query = t.dialect.rebind(query)
	if st := t.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, t.dialect.args(args)...)
	}
	return t.Tx.QueryContext(ctx, query, t.dialect.args(args)...)
}

func (t *txn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	ctx = t.bound(ctx)
	query = t.dialect.rebind(query)
	if st := t.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, t.dialect.args(args)...)
	}
	return t.Tx.QueryRowContext(ctx, query, t.dialect.args(args)...)
}

// rebind turns ? placeholders into $n on PostgreSQL. A ? inside a quoted string or
// identifier is left alone; a query already written with $n has no ? to turn.
func (d dialect) rebind(q string) string {
	if d != postgresDialect || strings.IndexByte(q, '?') < 0 {
		return q
	}
	var b strings.Builder
	b.Grow(len(q) + 16)
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

// args binds booleans as 0/1 on both engines (the columns are integers).
func (d dialect) args(args []any) []any {
	var out []any
	for i, a := range args {
		v := reflect.ValueOf(a)
		if a == nil || v.Kind() != reflect.Bool {
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		if v.Bool() {
			out[i] = int64(1)
		} else {
			out[i] = int64(0)
		}
	}
	if out == nil {
		return args
	}
	return out
}

var (
	pgStrict   = regexp.MustCompile(`\)\s*STRICT(\s*,\s*WITHOUT ROWID)?`)
	pgRowidPK  = regexp.MustCompile(`\bINTEGER PRIMARY KEY\b`)
	pgInteger  = regexp.MustCompile(`\bINTEGER\b`)
	pgBlob     = regexp.MustCompile(`\bBLOB\b`)
	pgReal     = regexp.MustCompile(`\bREAL\b`)
	pgRowidKey = regexp.MustCompile(`(?i)\bWITHOUT ROWID\b`)
)

// pgDDL translates a migration written for sqlite into PostgreSQL's DDL.
func pgDDL(s string) string {
	s = pgStrict.ReplaceAllString(s, ")")
	s = pgRowidKey.ReplaceAllString(s, "")
	s = pgRowidPK.ReplaceAllString(s, "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
	s = pgInteger.ReplaceAllString(s, "BIGINT")
	s = pgBlob.ReplaceAllString(s, "BYTEA")
	s = pgReal.ReplaceAllString(s, "DOUBLE PRECISION")
	return s
}

// writerLock is the PostgreSQL advisory lock every store transaction takes first
// ("edgeward" in ASCII): see Store.tx.
const writerLock int64 = 0x6564676577617264

// SQLSTATEs of a transaction PostgreSQL aborted to keep transactions serialisable, to
// be retried from the start.
const (
	pgSerializationFailure = "40001"
	pgDeadlockDetected     = "40P01"
)

// sqlState is the SQLSTATE of a PostgreSQL error (pgconn.PgError), "" for others.
func sqlState(err error) string {
	var e interface{ SQLState() string }
	if errors.As(err, &e) {
		return e.SQLState()
	}
	return ""
}

func retryable(err error) bool {
	s := sqlState(err)
	return s == pgSerializationFailure || s == pgDeadlockDetected
}

// txRetries bounds how often a transaction aborted by a serialisation failure or a
// deadlock is run again; retryBackoff is the first wait, doubled each time.
const (
	txRetries    = 10
	retryBackoff = 2 * time.Millisecond
)

func isForeignKey(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "FOREIGN KEY constraint failed") || sqlState(err) == "23503")
}
