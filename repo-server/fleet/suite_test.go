package fleet

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/edgeward/edgeward/internal/pgtest"
)

// pg is the test binary's PostgreSQL cluster, started by the first test that needs it.
var pg = pgtest.New()

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, pg)) }

// opener gives a test a fresh, empty database: a sqlite file or a PostgreSQL URL (Open
// takes either). Each call gives another database.
type opener func(t testing.TB) string

// twoReplicas opens two stores on one new database, as two replicas would, both
// closed when the test ends.
func twoReplicas(t testing.TB, db opener) (a, b *Store) {
	t.Helper()
	path := db(t)
	for _, s := range []**Store{&a, &b} {
		st, err := Open(context.Background(), path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		*s = st
	}
	return a, b
}

func sqliteDB(t testing.TB) string { return filepath.Join(t.TempDir(), "fleet.db") }

// storeSuite is the store's test suite, run once per backend: every test that touches
// the database goes here (the pure ones stay top-level).
var storeSuite = []struct {
	name string
	test func(*testing.T, opener)
}{
	{"AttestCountsAnUntrustedDeviceOnce", testAttestCountsAnUntrustedDeviceOnce},
	{"Tokens", testTokens},
	{"UpgradeBackfillsLatestReports", testUpgradeBackfillsLatestReports},
	{"HostileDeviceCannotPauseRollout", testHostileDeviceCannotPauseRollout},
	{"Collector", testCollector},
	{"DeviceVerdictsAndCounts", testDeviceVerdictsAndCounts},
	{"Prune", testPrune},
	{"NoncesInTheDatabase", testNoncesInTheDatabase},
	{"AdmitConsumesTheNonce", testAdmitConsumesTheNonce},
	{"StrangerCannotReplaceANonce", testStrangerCannotReplaceANonce},
	{"Decommission", testDecommission},
	{"SessionsInTheDatabase", testSessionsInTheDatabase},
	{"SimulatedFleetGoodRollout", testSimulatedFleetGoodRollout},
	{"SimulatedFleetBadRolloutPausesAndAborts", testSimulatedFleetBadRolloutPausesAndAborts},
	{"SimulatedFleetAbortAfterCommit", testSimulatedFleetAbortAfterCommit},
	{"SimulatedFleetAttestationFailurePauses", testSimulatedFleetAttestationFailurePauses},
	{"Status", testStatus},
	{"OpenMigratesOnceAndUsesWAL", testOpenMigratesOnceAndUsesWAL},
	{"DeviceLifecycle", testDeviceLifecycle},
	{"InvalidInput", testInvalidInput},
	{"LongTextCutOnACharacter", testLongTextCutOnACharacter},
	{"RolloutsReportsDecisions", testRolloutsReportsDecisions},
	{"DecideAt", testDecideAt},
	{"InfrastructureReportsAreNotWaveResults", testInfrastructureReportsAreNotWaveResults},
	{"ConcurrentStoresOneDatabase", testConcurrentStoresOneDatabase},
	{"ChallengesInTheDatabase", testChallengesInTheDatabase},
	{"GroupCommitFailsAlone", testGroupCommitFailsAlone},
	{"GroupCommitFailureFailsTheBatch", testGroupCommitFailureFailsTheBatch},
	{"GroupCommitSurvivesAnInterruptedStatement", testGroupCommitSurvivesAnInterruptedStatement},
	{"Leases", testLeases},
	{"LeasesUseTheDatabaseClock", testLeasesUseTheDatabaseClock},
	{"StatementsStayPrepared", testStatementsStayPrepared},
	{"RateLimitsInTheDatabase", testRateLimitsInTheDatabase},
	{"CheckInRate", testCheckInRate},
	{"SmallWavePauses", testSmallWavePauses},
	{"WaitingForATurnIsBounded", testWaitingForATurnIsBounded},
	{"ReadyWhileWritesFail", testReadyWhileWritesFail},
}

func runStoreSuite(t *testing.T, db opener) {
	for _, c := range storeSuite {
		t.Run(c.name, func(t *testing.T) { c.test(t, db) })
	}
}

func TestStoreSQLite(t *testing.T)   { runStoreSuite(t, sqliteDB) }
func TestStorePostgres(t *testing.T) { runStoreSuite(t, pg.Database) }

// oldSchema creates, at where, the schema as it was at version (the first version
// migrations) and returns the raw database, for upgrade tests to fill.
func oldSchema(t *testing.T, where string, version int) *sqlDB {
	t.Helper()
	ctx := context.Background()
	var db *sqlDB
	if IsPostgres(where) {
		raw, err := sql.Open("pgx", where)
		if err != nil {
			t.Fatal(err)
		}
		db = &sqlDB{DB: raw, dialect: postgresDialect}
		if _, err := db.ExecContext(ctx, `CREATE TABLE edgeward_schema (id INTEGER PRIMARY KEY, version BIGINT NOT NULL); INSERT INTO edgeward_schema VALUES (1, 0)`); err != nil {
			t.Fatal(err)
		}
	} else {
		raw, err := sql.Open("sqlite", "file:"+where)
		if err != nil {
			t.Fatal(err)
		}
		db = &sqlDB{DB: raw, dialect: sqliteDialect}
	}
	t.Cleanup(func() { db.Close() })
	s := &Store{db: db}
	for _, m := range migrations[:version] {
		if db.dialect == postgresDialect {
			m = pgDDL(m)
		}
		if _, err := db.ExecContext(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.setSchemaVersion(ctx, db, version); err != nil {
		t.Fatal(err)
	}
	return db
}

// testConcurrentStoresOneDatabase runs audited changes from two stores on one database
// (two replicas) at once. Each change's audit append reads a counter and writes it back
// incremented, in the change's transaction: if two store transactions ever overlapped,
// an increment would be lost. Every change must count once.
func testConcurrentStoresOneDatabase(t *testing.T, db opener) {
	ctx := context.Background()
	where := db(t)
	var stores []*Store
	for range 2 {
		s, err := Open(ctx, where)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		stores = append(stores, s)
	}
	if _, err := stores[0].DB().ExecContext(ctx, `CREATE TABLE counter (n BIGINT NOT NULL); INSERT INTO counter VALUES (0)`); err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		if err := stores[0].Enroll(ctx, fmt.Sprintf("dev-%d", i), nil, t0); err != nil {
			t.Fatal(err)
		}
	}
	count := func(ctx context.Context, tx Tx, r AuditRecord) error {
		var n int64
		if err := tx.QueryRowContext(ctx, `SELECT n FROM counter`).Scan(&n); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, fmt.Sprintf(`UPDATE counter SET n = %d`, n+1))
		return err
	}
	const perWorker = 25
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		st := stores[w%2].WithAudit(count)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWorker {
				id := fmt.Sprintf("dev-%d", (w+i)%4)
				if err := st.SetLabels(ctx, id, map[string]string{"w": fmt.Sprint(w), "i": fmt.Sprint(i)}, AuditRecord{Actor: "test", Kind: "device.labels", Subject: id}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var n int
	if err := stores[1].DB().QueryRowContext(ctx, `SELECT n FROM counter`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 8*perWorker {
		t.Fatalf("counter = %d after %d audited changes: store transactions overlapped", n, 8*perWorker)
	}
}
