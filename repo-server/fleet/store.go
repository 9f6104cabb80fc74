// Package fleet is the server's record of the fleet: devices and what they reported,
// rollout states and events, attestation verdicts, the decision made at every check-in,
// and operator API tokens. It is a sqlite file (modernc.org/sqlite, WAL,
// synchronous=FULL) by default, or a PostgreSQL database shared by several replicas
// (dialect.go); the pure parts (KPIs, authorization) take what the store returns.
//
// A check-in, as the server is expected to run it:
//
//	st.Attest(ctx, watcher.Policy(), id, verdict, detail, now)  // after verifying the quote
//	dec, err := st.Decide(ctx, watcher.Policy(), catalog, checkIn)  // CheckIn + Evaluate + RecordDecision
//
// and, on a ticker and after storing reports (AddReport):
//
//	events, err := st.PlanRollouts(ctx, watcher.Policy(), now)  // Plan + SaveRollout; then audit-log events
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/edgeward/edgeward/internal/durable"
)

// Errors a caller decides on. Every error the store returns for these cases matches
// one of them with errors.Is.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrInvalid  = errors.New("invalid input")
)

// InvalidError says which input was rejected and why; it matches ErrInvalid.
type InvalidError struct {
	Field, Msg string
}

func (e *InvalidError) Error() string     { return fmt.Sprintf("%s: %s", e.Field, e.Msg) }
func (e *InvalidError) Is(err error) bool { return err == ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &InvalidError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Store is the fleet database. It is safe for concurrent use, and on PostgreSQL by
// several processes (replicas) on one database.
type Store struct {
	db     *sqlDB
	commit *committer // runs every store transaction (group commit)
	audit  AppendFunc // nil: changes are not audited (see WithAudit)
	fence  *Lease     // nil: not fenced (see Fenced)
	// leaseNow is the leases' clock (UseLeaseClock); nil: the database's.
	leaseNow func() time.Time
	// nonceKey seals quote nonces (IssueNonce); the same for every replica on the
	// database, read once at Open.
	nonceKey []byte
}

// IsPostgres reports whether where names a PostgreSQL database (a postgres:// or
// postgresql:// URL) rather than a sqlite file.
func IsPostgres(where string) bool {
	return strings.HasPrefix(where, "postgres://") || strings.HasPrefix(where, "postgresql://")
}

// The sqlite store's page cache and write-ahead log. Every check-in rewrites its
// device's row, stores its nonce's use and inserts into indexes ordered by device (verdicts,
// decisions, audit records by subject), so the pages a batch of check-ins touches are
// spread over the tables: with sqlite's 2 MiB cache they were read back from the file
// again and again, and with its 1,000-page log each was copied back into the database
// file (and that file fsynced) every few group commits. A 32 MiB cache holds them for
// a fleet of tens of thousands of devices; a log checkpointed at 10,000 pages (about
// 40 MiB) writes a page rewritten by many commits once. Each commit is still fsynced
// before it returns (synchronous=FULL).
const (
	sqliteCacheMiB      = 32
	sqliteWALCheckpoint = 10000
)

// Open opens (creating if needed) the store at where and brings its schema up to date:
// a sqlite file path (the embedded default), or a PostgreSQL URL
// (postgres://user:password@host:port/database?sslmode=…), whose database must exist
// and whose user must be able to create tables in it.
func Open(ctx context.Context, where string) (*Store, error) {
	if IsPostgres(where) {
		return openPostgres(ctx, where)
	}
	// One connection: sqlite serialises writers anyway, and a single connection
	// never sees SQLITE_BUSY. Reads are short. The -wal and -shm files are kept when
	// the store closes, so that it opens again on a full disk (durable.SQLite.KeepLog);
	// every process opening the file keeps them (reposerver.OpenDB too), or the last
	// to close would delete them.
	db, err := durable.OpenSQLite(ctx, where, durable.SQLite{MaxOpenConns: 1, ImmediateTx: true, CacheMiB: sqliteCacheMiB, WALAutoCheckpoint: sqliteWALCheckpoint, KeepLog: true})
	if err != nil {
		return nil, fmt.Errorf("fleet store: %w", err)
	}
	s := newStore(&sqlDB{DB: db, dialect: sqliteDialect, stmts: newStmtCache()})
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleet store %s: %w", where, err)
	}
	if s.nonceKey, err = loadNonceKey(ctx, s.db); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleet store %s: %w", where, err)
	}
	return s, nil
}

// PostgresConns bounds the store's connections to PostgreSQL, per process.
const PostgresConns = 16

func openPostgres(ctx context.Context, url string) (*Store, error) {
	db, err := OpenPostgres(url)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(PostgresConns)
	db.SetMaxIdleConns(PostgresConns)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("fleet store %s: %w", redactURL(url), err)
	}
	s := newStore(&sqlDB{DB: db, dialect: postgresDialect, stmts: newStmtCache()})
	if err := s.migrate(ctx); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleet store %s: %w", redactURL(url), err)
	}
	if s.nonceKey, err = loadNonceKey(ctx, s.db); err != nil {
		s.Close()
		return nil, fmt.Errorf("fleet store %s: %w", redactURL(url), err)
	}
	return s, nil
}

// redactURL hides a URL's password, for errors and logs.
func redactURL(u string) string {
	if p, err := neturl.Parse(u); err == nil {
		return p.Redacted()
	}
	return "(PostgreSQL URL)"
}

// Engine names the store's database engine: "sqlite" or "postgres".
func (s *Store) Engine() string { return s.db.dialect.String() }

func newStore(db *sqlDB) *Store {
	return &Store{db: db, commit: newCommitter(db)}
}

// Close closes the database, after the transactions already submitted.
func (s *Store) Close() error {
	s.commit.close()
	s.db.stmts.close()
	return s.db.Close()
}

// tx runs f in a transaction and commits it if f returns nil; when tx returns nil the
// change is committed (durably: see committer). f may run more than once (it must set
// what it returns afresh each time). It runs on the committer's goroutine, after the
// transactions queued before it and seeing their writes, possibly in one database
// transaction with other callers' (group commit), each still committing or rolling
// back alone. It must not start another transaction of the store.
//
// On sqlite the transaction takes the database's write lock when it begins (BEGIN
// IMMEDIATE), and the store's single connection serialises its transactions.
//
// On PostgreSQL, where several replicas share the database, every store transaction
// first takes one transaction-scoped advisory lock (writerLock), at READ COMMITTED: the
// store's transactions run one at a time across all processes, exactly as on sqlite,
// and each statement after the lock sees everything committed before it, so a
// read-then-write (a device row, a rollout's state and its wave counts, a nonce) is
// never decided on a stale read. They would serialise anyway: nearly every one appends
// to the audit log, whose tree head is one row. Reads outside transactions do not take
// the lock. A transaction the server aborts to stay serialisable (a deadlock, a
// serialisation failure) is run again, up to txRetries times.
func (s *Store) tx(ctx context.Context, f func(*txn) error) error {
	if s.fence != nil {
		g := f
		f = func(t *txn) error {
			if err := s.checkFence(ctx, t); err != nil {
				return err
			}
			return g(t)
		}
	}
	return s.commit.do(ctx, f)
}

// txUnbounded is tx without the committer's batchTimeout, for schema migrations (not
// fenced: they run at Open).
func (s *Store) txUnbounded(ctx context.Context, f func(*txn) error) error {
	return s.commit.doUnbounded(ctx, f)
}

// Times are stored as Unix nanoseconds, 0 for the zero time.
func ns(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNS(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

func mustJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only called with types that always marshal
	}
	return string(b)
}

// Redacted is a database location as a message or a usage text may show it: a
// PostgreSQL URL with its password replaced by xxxxx, in the user part or in a password
// parameter; one that does not parse as a URL is not shown at all (it may hold a
// password where no parser finds it); a sqlite path as it is. (Only the user part was
// redacted, found in review.)
func Redacted(where string) string {
	if !IsPostgres(where) {
		return where
	}
	u, err := neturl.Parse(where)
	if err != nil {
		return "postgres://… (not shown: it does not parse as a URL)"
	}
	q := u.Query()
	for k := range q {
		if strings.EqualFold(k, "password") {
			q.Set(k, "xxxxx")
		}
	}
	if u.RawQuery != "" {
		u.RawQuery = q.Encode()
	}
	return u.Redacted()
}
