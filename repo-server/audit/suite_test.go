package audit

import (
	"os"
	"path/filepath"
	"testing"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"

	"github.com/edgeward/edgeward/internal/pgtest"
)

// pg is the test binary's PostgreSQL cluster, started by the first test that needs it.
var pg = pgtest.New()

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pg)) }

// opener gives a test a fresh, empty database: a sqlite file or a PostgreSQL URL.
type opener func(t testing.TB) string

func sqliteDB(t testing.TB) string { return filepath.Join(t.TempDir(), "audit.db") }

// dbSuite is the log's tests that depend on the database engine, run once per backend
// (the log lives in the fleet store's database, sqlite or PostgreSQL).
var dbSuite = []struct {
	name string
	test func(*testing.T, opener)
}{
	{"ExportVerifies", testExportVerifies},
	{"AppendOnlyAndConcurrentWriters", testAppendOnlyAndConcurrentWriters},
	{"AppendTxCommitsWithTheChange", testAppendTxCommitsWithTheChange},
	{"Proofs", testProofs},
	{"AppendTxCommitsWithTheCallersTransaction", testAppendTxCommitsWithTheCallersTransaction},
	{"UpgradeFromUnversionedSchema", testUpgradeFromUnversionedSchema},
	{"StaleTreeHead", testStaleTreeHead},
	{"AppendUnlessLast", testAppendUnlessLast},
}

func runDBSuite(t *testing.T, db opener) {
	for _, c := range dbSuite {
		t.Run(c.name, func(t *testing.T) { c.test(t, db) })
	}
}

func TestLogSQLite(t *testing.T)   { runDBSuite(t, sqliteDB) }
func TestLogPostgres(t *testing.T) { runDBSuite(t, pg.Database) }
