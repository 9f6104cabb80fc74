package fleet

import (
	"context"
	"errors"
	"fmt"
)

// migrations are applied in order; the schema version (sqlite: PRAGMA user_version;
// PostgreSQL: edgeward_schema) counts those applied. Append only: never edit one that
// has shipped. They are written for sqlite; PostgreSQL runs them through pgDDL.
var migrations = []string{
	`CREATE TABLE devices (
		id                TEXT PRIMARY KEY,
		labels            TEXT NOT NULL DEFAULT '{}',
		hardware          TEXT NOT NULL DEFAULT '',
		agent_version     TEXT NOT NULL DEFAULT '',
		slots             TEXT NOT NULL DEFAULT '{}',
		attrs             TEXT NOT NULL DEFAULT '{}',
		verdict           TEXT NOT NULL DEFAULT '',
		verdict_at        INTEGER NOT NULL DEFAULT 0,
		quarantined       INTEGER NOT NULL DEFAULT 0,
		quarantine_reason TEXT NOT NULL DEFAULT '',
		enrolled_at       INTEGER NOT NULL,
		last_check_in     INTEGER NOT NULL DEFAULT 0
	) STRICT;
	CREATE TABLE verdicts (
		seq       INTEGER PRIMARY KEY,
		device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		verdict   TEXT NOT NULL,
		detail    TEXT NOT NULL DEFAULT '',
		at        INTEGER NOT NULL
	) STRICT;
	CREATE INDEX verdicts_at ON verdicts(at);
	CREATE TABLE rollouts (
		id         TEXT PRIMARY KEY,
		status     TEXT NOT NULL,
		state      TEXT NOT NULL,
		updated_at INTEGER NOT NULL
	) STRICT;
	CREATE TABLE rollout_events (
		seq        INTEGER PRIMARY KEY,
		rollout_id TEXT NOT NULL,
		type       TEXT NOT NULL,
		wave       INTEGER NOT NULL,
		reason     TEXT NOT NULL DEFAULT '',
		actor      TEXT NOT NULL DEFAULT '',
		at         INTEGER NOT NULL
	) STRICT;
	CREATE INDEX rollout_events_rollout ON rollout_events(rollout_id, seq);
	CREATE TABLE reports (
		seq        INTEGER PRIMARY KEY,
		device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		rollout_id TEXT NOT NULL DEFAULT '',
		kind       TEXT NOT NULL,
		name       TEXT NOT NULL,
		version    TEXT NOT NULL,
		outcome    TEXT NOT NULL,
		cause      TEXT NOT NULL DEFAULT '',
		bytes      INTEGER NOT NULL DEFAULT 0,
		accuracy   REAL NOT NULL DEFAULT 0,
		p99_ms     REAL NOT NULL DEFAULT 0,
		at         INTEGER NOT NULL
	) STRICT;
	CREATE INDEX reports_rollout ON reports(rollout_id, at);
	CREATE INDEX reports_device ON reports(device_id, at);
	CREATE TABLE decisions (
		seq           INTEGER PRIMARY KEY,
		device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		at            INTEGER NOT NULL,
		policy_digest TEXT NOT NULL,
		decision      TEXT NOT NULL
	) STRICT;
	CREATE INDEX decisions_device ON decisions(device_id, seq);
	CREATE INDEX decisions_at ON decisions(at);`,
	`CREATE TABLE tokens (
		id         TEXT PRIMARY KEY,
		hash       BLOB NOT NULL UNIQUE,
		operator   TEXT NOT NULL,
		role       TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL,
		revoked_at INTEGER NOT NULL DEFAULT 0
	) STRICT;`,
	`ALTER TABLE reports ADD COLUMN peak_rss_mb REAL NOT NULL DEFAULT 0;`,
	// 4: check-ins in one transaction, reads bounded by an index.
	// device_reports_seen moves here from the audit database (repo.db), so that a report
	// and the mark that deduplicates its retries commit together.
	// rollout_latest keeps, per rollout, target and device, the device's latest report:
	// the planner counts a wave from it through an index, never reading the reports.
	`CREATE TABLE device_reports_seen (
		device_id TEXT NOT NULL,
		id        TEXT NOT NULL,
		PRIMARY KEY (device_id, id)
	) STRICT, WITHOUT ROWID;
	CREATE TABLE rollout_latest (
		rollout_id TEXT NOT NULL,
		name       TEXT NOT NULL,
		version    TEXT NOT NULL,
		device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		bucket     INTEGER NOT NULL,
		failed     INTEGER NOT NULL,
		at         INTEGER NOT NULL,
		PRIMARY KEY (rollout_id, name, version, device_id)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX rollout_latest_bucket ON rollout_latest(rollout_id, name, version, bucket, at, failed);
	CREATE INDEX rollout_latest_device ON rollout_latest(device_id);
	CREATE INDEX verdicts_device ON verdicts(device_id, at);`,
	// 5: quote nonces live in the database, so any replica can consume a nonce another
	// issued (single use, expiry).
	`CREATE TABLE nonces (
		device_id  TEXT PRIMARY KEY,
		nonce      BLOB NOT NULL,
		expires_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE INDEX nonces_expiry ON nonces(expires_at);`,
	// 6: the agent's last update error (JSON wire.UpdateError; '' for none), so the fleet
	// sees why a device is stuck.
	`ALTER TABLE devices ADD COLUMN last_error TEXT NOT NULL DEFAULT '';`,
	// 7: dashboard sessions live in the database, so any replica serves a signed-in
	// operator. Only hashes are kept: of the session ID (the cookie) and of the token.
	`CREATE TABLE sessions (
		id_hash    BLOB PRIMARY KEY,
		token_hash BLOB NOT NULL,
		csrf       TEXT NOT NULL,
		created_at INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE INDEX sessions_expiry ON sessions(expires_at);
	CREATE INDEX sessions_created ON sessions(created_at);`,
	// 8: a rollout counts only its own devices (issue 15). A report's time is the
	// server's clock at receipt; device_at keeps the device's own time, information
	// only. counted says whether the report entered rollout_latest (the device was
	// selected, in a reached wave, offered the target, trusted and not quarantined).
	// offers keeps every target the server offered a device (install or download), so
	// a report about a target never offered is stored but not counted.
	`ALTER TABLE reports ADD COLUMN device_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE reports ADD COLUMN counted INTEGER NOT NULL DEFAULT 1;
	CREATE TABLE offers (
		device_id TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		kind      TEXT NOT NULL,
		name      TEXT NOT NULL,
		version   TEXT NOT NULL,
		at        INTEGER NOT NULL,
		PRIMARY KEY (device_id, kind, name, version)
	) STRICT, WITHOUT ROWID;`,
	// 9: several replicas (issue 12). Enrollment challenges live in the database, so a
	// device may answer at any replica the challenge another issued; the bounds of
	// issue 15 (one per EK, per source, a fair global cap) hold across replicas.
	// leases name the replica that runs a singleton job (planner, checkpoint signer,
	// publisher) until expires_at; token rises at every change of holder (fencing).
	`CREATE TABLE challenges (
		id           TEXT PRIMARY KEY,
		ek_id        TEXT NOT NULL UNIQUE,
		source       TEXT NOT NULL,
		secret       BLOB NOT NULL,
		ak_public    BLOB NOT NULL,
		manufacturer TEXT NOT NULL,
		model        TEXT NOT NULL,
		version      TEXT NOT NULL,
		expires_at   INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE INDEX challenges_source ON challenges(source, expires_at);
	CREATE INDEX challenges_expiry ON challenges(expires_at);
	CREATE TABLE leases (
		name       TEXT PRIMARY KEY,
		holder     TEXT NOT NULL,
		token      INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;`,
	// boot is what the device's last verified boot event log proved
	// (reference.BootState as JSON; '' for none), shown on its dashboard page.
	`ALTER TABLE devices ADD COLUMN boot TEXT NOT NULL DEFAULT '';`,
	// what a delta install saved (issue 17): the delta method ('' for a full download)
	// and the full target's length minus the bytes fetched.
	`ALTER TABLE reports ADD COLUMN delta TEXT NOT NULL DEFAULT '';
	ALTER TABLE reports ADD COLUMN bytes_saved INTEGER NOT NULL DEFAULT 0;`,
	// why a delta the device tried fell back to the full target (issue 17; '' for none).
	`ALTER TABLE reports ADD COLUMN delta_fallback TEXT NOT NULL DEFAULT '';`,
	// rate_limits are token buckets shared by the replicas (Store.TakeAttempt): the
	// dashboard's sign-ins and the operator API's refused bearer tokens, per client
	// address. tokens are attempts times 10^6; a row is dropped once expires_at (full
	// again) has passed, and the least recently used go past a bound.
	`CREATE TABLE rate_limits (
		key        TEXT PRIMARY KEY,
		tokens     INTEGER NOT NULL,
		at         INTEGER NOT NULL,
		expires_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE INDEX rate_limits_expiry ON rate_limits(expires_at);
	CREATE INDEX rate_limits_at ON rate_limits(at);`,
	// 14: retention (Store.Prune) finds the reports before its horizon through an index,
	// as it finds verdicts and decisions (verdicts_at, decisions_at).
	`CREATE INDEX reports_at ON reports(at);`,
	// 15: a report's deduplication mark records when it was stored, so that retention
	// prunes marks too (0: a mark stored before this migration, kept).
	`ALTER TABLE device_reports_seen ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
	CREATE INDEX device_reports_seen_at ON device_reports_seen(at);`,
	// 16: a decommissioned device (Store.Decommission; 0: in service) and why. Its row
	// stays: its ID derives from its TPM's EK, and a deleted row would let its next
	// check-in enroll it again.
	`ALTER TABLE devices ADD COLUMN decommissioned_at INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE devices ADD COLUMN decommission_reason TEXT NOT NULL DEFAULT '';`,
	// 17: the nonce a device's last authenticated check-in issued it (next_nonce; NULL:
	// none) is kept apart from the one a nonce request asked for (nonce; empty: none). A
	// nonce request is not authenticated on the plain listener, and it replaced the
	// device's one outstanding nonce, so a stranger could keep a device from ever
	// checking in (found from outside, 1 Dec).
	`ALTER TABLE nonces ADD COLUMN next_nonce BLOB;
	ALTER TABLE nonces ADD COLUMN next_expires_at INTEGER NOT NULL DEFAULT 0;`,
	// 18: quote nonces are sealed with a key every replica reads (server_secrets; the
	// backfill makes it) instead of stored, and only their use is stored (used_nonces,
	// until a while after they expire): a nonce request writes nothing, and a stranger
	// requesting nonces in a device's name replaces none of the device's. The nonces
	// outstanding at the upgrade are dropped: their devices ask again.
	`CREATE TABLE server_secrets (
		name       TEXT PRIMARY KEY,
		secret     BLOB NOT NULL,
		created_at INTEGER NOT NULL
	) STRICT, WITHOUT ROWID;
	CREATE TABLE used_nonces (
		device_id  TEXT NOT NULL,
		tag        BLOB NOT NULL,
		expires_at INTEGER NOT NULL,
		PRIMARY KEY (device_id, tag)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX used_nonces_expiry ON used_nonces(expires_at);
	DROP TABLE nonces;`,
	// 19: a device's check-in rate is bounded (CheckInLimit): the bound's state, a
	// time in Unix nanoseconds (0: none yet), is in the device's row, which every
	// check-in reads and writes anyway.
	`ALTER TABLE devices ADD COLUMN checkin_tat INTEGER NOT NULL DEFAULT 0;`,
	// 20: which devices each rollout offered its target to, by bucket (policy.Bucket),
	// so the planner knows how many devices a wave has: a wave smaller than its
	// min_reports is judged on every device it has (before, it could never pause its
	// rollout). Offers made before the upgrade are not here: their waves keep
	// min_reports.
	`CREATE TABLE rollout_offers (
		rollout_id TEXT NOT NULL,
		device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
		bucket     INTEGER NOT NULL,
		at         INTEGER NOT NULL,
		PRIMARY KEY (rollout_id, device_id)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX rollout_offers_bucket ON rollout_offers(rollout_id, bucket);`,
	// 21: an EK may have pending challenges from several sources (one per source): a
	// new challenge replaced the EK's only one, so anyone holding a device's public EK
	// certificate could keep it from ever enrolling (found from outside, 2 Dec). The
	// challenges pending at the upgrade are dropped; their devices ask again.
	`DROP TABLE challenges;
	CREATE TABLE challenges (
		id           TEXT PRIMARY KEY,
		ek_id        TEXT NOT NULL,
		source       TEXT NOT NULL,
		secret       BLOB NOT NULL,
		ak_public    BLOB NOT NULL,
		manufacturer TEXT NOT NULL,
		model        TEXT NOT NULL,
		version      TEXT NOT NULL,
		expires_at   INTEGER NOT NULL,
		UNIQUE (ek_id, source)
	) STRICT, WITHOUT ROWID;
	CREATE INDEX challenges_source ON challenges(source, expires_at);
	CREATE INDEX challenges_expiry ON challenges(expires_at);`,
}

// backfills run after the migration of the same index (1-based), in its transaction,
// for what SQL alone cannot compute.
var backfills = map[int]func(ctx context.Context, tx *txn) error{
	4:  backfillRolloutLatest,
	8:  backfillOffers,
	18: backfillNonceKey,
}

// SchemaVersion is the schema version this server writes: the number of migrations.
func SchemaVersion() int { return len(migrations) }

// ErrSchemaTooNew says the database was written by a newer server: this one refuses to
// touch it (downgrade the database from a backup, or upgrade the server).
var ErrSchemaTooNew = errors.New("the fleet database's schema is newer than this server")

// migrate brings the schema up to date, one migration per transaction (with its
// backfill), each re-reading the version under the store's write lock, so replicas
// starting together apply each migration once. A schema newer than this server's is
// refused (ErrSchemaTooNew) before anything is written. A migration may run longer than
// the committer's batchTimeout (a backfill on a large database): txUnbounded.
func (s *Store) migrate(ctx context.Context) error {
	if s.db.dialect == postgresDialect {
		err := s.txUnbounded(ctx, func(tx *txn) error {
			_, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS edgeward_schema (id INTEGER PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL);
				INSERT INTO edgeward_schema (id, version) VALUES (1, 0) ON CONFLICT DO NOTHING`)
			return err
		})
		if err != nil {
			return fmt.Errorf("schema version table: %w", err)
		}
	}
	for {
		done := false
		err := s.txUnbounded(ctx, func(tx *txn) error {
			v, err := s.schemaVersion(ctx, tx)
			if err != nil {
				return fmt.Errorf("read schema version: %w", err)
			}
			if v > len(migrations) {
				return fmt.Errorf("%w: schema version %d, this server knows up to %d; refusing to touch it (upgrade the server, or restore a backup of the database taken before the newer server ran)", ErrSchemaTooNew, v, len(migrations))
			}
			if done = v == len(migrations); done {
				return nil
			}
			m := migrations[v]
			if s.db.dialect == postgresDialect {
				m = pgDDL(m)
			}
			if _, err := tx.ExecContext(ctx, m); err != nil {
				return fmt.Errorf("migration %d: %w", v+1, err)
			}
			if f := backfills[v+1]; f != nil {
				if err := f(ctx, tx); err != nil {
					return fmt.Errorf("migration %d: %w", v+1, err)
				}
			}
			return s.setSchemaVersion(ctx, tx, v+1)
		})
		if err != nil || done {
			return err
		}
	}
}

func (s *Store) schemaVersion(ctx context.Context, q dbtx) (int, error) {
	var v int
	query := `PRAGMA user_version`
	if s.db.dialect == postgresDialect {
		query = `SELECT version FROM edgeward_schema WHERE id = 1`
	}
	err := q.QueryRowContext(ctx, query).Scan(&v)
	return v, err
}

func (s *Store) setSchemaVersion(ctx context.Context, q dbtx, v int) error {
	query := fmt.Sprintf(`PRAGMA user_version = %d`, v)
	if s.db.dialect == postgresDialect {
		query = fmt.Sprintf(`UPDATE edgeward_schema SET version = %d WHERE id = 1`, v)
	}
	_, err := q.ExecContext(ctx, query)
	return err
}
